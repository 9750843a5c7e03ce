"""Who is calling: access tokens, signed-in sessions, owners, and the cross-site test.

With APP_ACCESS_TOKENS set, a browser signs in once with a token (its session then holds a keyed fingerprint of
the token, never the token), and an API client sends `Authorization: Bearer <token>`. Each browser session and
each token is an owner: the tasks it queued are the ones it sees; the sessions of one token share its account
(its rate, running cap and budget). Wrong tokens count against the failed sign-in limit of the caller's address,
and while it is exceeded every try is refused, right or wrong. Signing out ends the session on the server too.
Without tokens the app is open: a browser gets an owner when it loads the page, and every request without a
session (curl, or a page that never loaded) shares one owner, "api" (so an Idempotency-Key works from curl).
"""
import functools
import hashlib
import hmac
import secrets
import time

from starlette.requests import Request

from limiter import RateLimit

API_OWNER = "api"
TOO_MANY_WRONG_TOKENS = "Too many wrong tokens from your address"


class AccessRefused(Exception):
    "The caller is not let in: no valid bearer token, no signed-in session."


def new_owner() -> str: return "browser_" + secrets.token_urlsafe(12)


def with_owner(may_create: bool = False):
    """Call the handler as `handler(request, owner)` with the caller's owner, or raise AccessRefused.
    `may_create`: an open app's browser without a session gets one (and so an owner) here."""
    def decorate(handler):
        @functools.wraps(handler)
        async def handle(request: Request):
            return await handler(request, await request.app.state.services.gate.owner(request, may_create))
        return handle
    return decorate


def client_address(request: Request, behind_proxy: bool) -> str:
    "The caller's address: behind a proxy that sets it (Vercel), the first X-Forwarded-For hop."
    forwarded = request.headers.get("x-forwarded-for", "") if behind_proxy else ""
    return forwarded.split(",")[0].strip() or (request.client.host if request.client else "unknown")


class Gate:
    def __init__(self, tokens: list[str], key: str, failed_signins: RateLimit, store, session_max_age: int,
                 behind_proxy: bool = False):
        self.tokens, self._key, self.failed_signins, self.store = tokens, key.encode(), failed_signins, store
        self.session_max_age, self.behind_proxy = session_max_age, behind_proxy

    @property
    def on(self) -> bool: return bool(self.tokens)

    def valid(self, token: str) -> bool:
        "Compare against every token in constant time."
        found = False
        for candidate in self.tokens: found |= hmac.compare_digest(candidate.encode(), token.encode())
        return found

    def _signed_in_mark(self, token: str) -> str:
        "What a signed-in session keeps: an HMAC of the token under the session key, useless for guessing it."
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def bearer_token(self, request: Request) -> str | None:
        "The token of an `Authorization: Bearer` header when the gate is on (other schemes are not ours)."
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return token.strip() if self.on and scheme.lower() == "bearer" else None

    async def owner(self, request: Request, may_create: bool) -> str:
        "Whose tasks the caller may queue and see: its token's, or its session's; AccessRefused when neither."
        token = self.bearer_token(request)
        if token is not None: return await self._token_owner(request, token)
        owner = await self._session_owner(request, may_create)
        if owner is None: raise AccessRefused()
        return owner

    async def token_owner(self, request: Request) -> str:
        "The owner of the request's Bearer token; AccessRefused without a valid one (sessions do not count here)."
        token = self.bearer_token(request)
        if token is None: raise AccessRefused()
        return await self._token_owner(request, token)

    async def _token_owner(self, request: Request, token: str) -> str:
        address = client_address(request, self.behind_proxy)
        await self.failed_signins.check(address, TOO_MANY_WRONG_TOKENS)
        if not token or not self.valid(token):
            await self.failed_signins.hit(address, TOO_MANY_WRONG_TOKENS)
            raise AccessRefused()
        return "token_" + hashlib.sha256(token.encode()).hexdigest()[:32]

    async def _session_owner(self, request: Request, may_create: bool) -> str | None:
        session = request.session
        if session.get("sid") and await self.store.session_ended(session["sid"]): session.clear()
        if self.on:
            signed_in = session.get("signed_in") in {self._signed_in_mark(t) for t in self.tokens}
            return session.get("owner") if signed_in and session.get("sid") else None
        if session.get("sid") and session.get("owner"): return session["owner"]
        if not may_create: return API_OWNER
        session.update(sid=secrets.token_urlsafe(16), owner=new_owner())
        return session["owner"]

    def account(self, request: Request, owner: str) -> str:
        """Whose allowance a queueing spends (rate, running cap, budget): a token's, whether it comes as a Bearer
        header or through any number of sessions signed in with it; the owner's where the app is open."""
        if not self.on: return owner
        token = self.bearer_token(request)
        return "account_" + (self._signed_in_mark(token) if token is not None else request.session["signed_in"])

    async def sign_in(self, request: Request, token) -> bool:
        """Start a signed-in session for a right token. Limited while the caller's address has too many wrong
        tries (even for the right token, so the limit tells a guesser nothing)."""
        address = client_address(request, self.behind_proxy)
        await self.failed_signins.check(address, TOO_MANY_WRONG_TOKENS)
        if not isinstance(token, str) or not token.strip() or not self.valid(token.strip()):
            await self.failed_signins.hit(address, TOO_MANY_WRONG_TOKENS)
            return False
        request.session.clear()
        request.session.update(sid=secrets.token_urlsafe(16), signed_in=self._signed_in_mark(token.strip()), owner=new_owner())
        return True

    async def sign_out(self, request: Request):
        "End the session here and on the server: its cookie no longer lets anyone in."
        if sid := request.session.get("sid"): await self.store.end_session(sid, time.time() + self.session_max_age)
        request.session.clear()


def is_cross_site(headers) -> bool:
    "A browser request that another site started: Sec-Fetch-Site says so, or Origin is not this host."
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None: return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None: return False
    return origin.split("://", 1)[-1].rstrip("/") != headers.get("host", "")
