"""Abuse and spend limits: rates counted with the `limits` library (queueing per owner, failed sign-ins per address)
and daily spend budgets counted from the tasks' cost estimates. The running cap is the store's (atomic there).

Rates count in RATE_LIMIT_STORAGE_URL: `memory://` (the default) counts per process, so with several processes
or on Vercel point it at Redis (`redis://host:6379`) to count them all.
"""
import math
import time
from datetime import datetime, timedelta, timezone

import limits
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string


class Limited(Exception):
    "A limit refused the request: 429, with when to try again."

    def __init__(self, message: str, retry_after: int | None = None, kind: str = "rate_limited"):
        super().__init__(message)
        self.message, self.retry_after, self.kind = message, retry_after, kind


class LimiterUnavailable(Exception):
    "The store rate limits count in (Redis) cannot be reached."


def async_storage_url(url: str) -> str:
    return url if url.startswith("async+") else "async+" + url


class RateLimit:
    """A moving-window rate (`limits` notation such as 10/minute) counted per key in RATE_LIMIT_STORAGE_URL."""

    def __init__(self, rate: str, storage_url: str):
        self.rate, self.shared = limits.parse(rate), not storage_url.startswith("memory")
        self.storage = storage_from_string(async_storage_url(storage_url))
        self.limiter = MovingWindowRateLimiter(self.storage)

    async def _ask(self, call, *args):
        try: return await call(*args)
        except Exception as exc:
            raise LimiterUnavailable(f"the rate-limit store is unreachable ({type(exc).__name__}): check "
                                     "RATE_LIMIT_STORAGE_URL and that Redis runs") from exc

    async def _refuse(self, key: str, message: str):
        reset_at, _ = await self._ask(self.limiter.get_window_stats, self.rate, key)
        wait = max(1, math.ceil(reset_at - time.time()))
        raise Limited(f"{message}: the limit is {self.rate}. Try again in {wait} s.", wait)

    async def hit(self, key: str, message: str):
        "Count one use by `key`, or raise Limited with `message` and when to try again."
        if not await self._ask(self.limiter.hit, self.rate, key): await self._refuse(key, message)

    async def check(self, key: str, message: str):
        "Raise Limited if `key` is out of allowance now, without counting a use."
        if not await self._ask(self.limiter.test, self.rate, key): await self._refuse(key, message)

    async def reachable(self) -> bool:
        try: return bool(await self.storage.check())
        except Exception: return False


def usd(amount: float) -> str: return f"${amount:.2f}" if amount >= 1 else f"${amount:.4f}"


def next_midnight_utc(now: float) -> float:
    today = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).timestamp()


class Budgets:
    """Daily (UTC) spend budgets in US dollars, per account and for the whole app, counted from the tasks of the day:
    their estimated cost once known, and while running what their limits let them cost (store.spent_since)."""

    def __init__(self, per_account: float | None, app: float | None):
        self.per_account, self.app = per_account, app

    async def spent_today(self, store, account: str | None = None) -> float:
        return await store.spent_since(next_midnight_utc(time.time()) - 86400, account)

    async def admit(self, store, account: str, reserve: float):
        "Raise Limited (budget_exceeded) if queueing what may cost `reserve` would take a budget over."
        for budget, whose, of in ((self.per_account, "Your", account), (self.app, "This app's", None)):
            if budget is None: continue
            spent = await self.spent_today(store, of)
            if spent + reserve > budget:
                wait = math.ceil(next_midnight_utc(time.time()) - time.time())
                raise Limited(f"{whose} daily budget of {usd(budget)} would be exceeded: {usd(spent)} is spent or reserved "
                              f"today and this prompt may cost up to {usd(reserve)}. It resets at midnight UTC, in {wait} s.",
                              wait, "budget_exceeded")
