"""Abuse limits: a per-owner rate on queueing (QUEUE_RATE, with the `limits` library), a cap on running
tasks, and a per-address rate on failed sign-ins.

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


class RateLimit:
    """A moving-window rate (`limits` notation such as 10/minute) counted per key in RATE_LIMIT_STORAGE_URL."""

    def __init__(self, rate: str, storage_url: str):
        self.rate = limits.parse(rate)
        self.limiter = MovingWindowRateLimiter(storage_from_string(async_storage_url(storage_url)))

    async def hit(self, key: str, message: str):
        "Count one use by `key`, or raise Limited with `message` and when to try again."
        if not await self.limiter.hit(self.rate, key):
            reset_at, _ = await self.limiter.get_window_stats(self.rate, key)
            wait = max(1, math.ceil(reset_at - time.time()))
            raise Limited(f"{message}: the limit is {self.rate}. Try again in {wait} s.", wait)


class QueueLimits:
    def __init__(self, rate: str, storage_url: str, max_running: int):
        self.rate_limit = RateLimit(rate, storage_url)
        self.max_running = max_running

    async def admit(self, owner: str, running: int):
        "Count one queueing by `owner`, or raise Limited saying when to try again."
        if running >= self.max_running:
            raise Limited(f"You already have {running} tasks running (the limit is {self.max_running}): "
                          "wait for one to finish or cancel one.")
        await self.rate_limit.hit(owner, "Too many prompts queued")
