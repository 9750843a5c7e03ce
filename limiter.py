"""Abuse limits on queueing: a per-owner rate (QUEUE_RATE, with the `limits` library) and a cap on running tasks.

The rate is counted in RATE_LIMIT_STORAGE_URL: `memory://` (the default) counts per process, so
with several processes or on Vercel point it at Redis (`redis://host:6379`) to count them all.
The running cap is counted in the task database, so it holds across processes as it is.
"""
import math
import time

import limits
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string


class Limited(Exception):
    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


def async_storage_url(url: str) -> str:
    return url if url.startswith("async+") else "async+" + url


class QueueLimits:
    def __init__(self, rate: str, storage_url: str, max_running: int):
        try: self.rate = limits.parse(rate)
        except ValueError: raise SystemExit(f"QUEUE_RATE={rate!r} is not a rate: write it like 10/minute or 100/hour")
        self.limiter = MovingWindowRateLimiter(storage_from_string(async_storage_url(storage_url)))
        self.max_running = max_running

    async def admit(self, owner: str, running: int):
        "Count one queueing by `owner`, or raise Limited saying when to try again."
        if running >= self.max_running:
            raise Limited(f"You already have {running} tasks running (the limit is {self.max_running}): "
                          "wait for one to finish or cancel one.")
        if not await self.limiter.hit(self.rate, owner):
            reset_at, _ = await self.limiter.get_window_stats(self.rate, owner)
            wait = max(1, math.ceil(reset_at - time.time()))
            raise Limited(f"Too many prompts queued: the limit is {self.rate}. Try again in {wait} s.", wait)
