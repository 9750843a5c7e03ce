"""Who is calling: access tokens, signed-in sessions, owners, and the cross-site check.

With APP_ACCESS_TOKENS set, a browser signs in once with a token (its session then holds a keyed
fingerprint of the token, never the token), and an API client sends `Authorization: Bearer <token>`.
Each browser session and each token is an owner: the tasks it queued are the ones it sees.
Without tokens the app is open: a browser session is still an owner, and API calls that carry no
session cookie share one owner, "api" (so an Idempotency-Key works from curl).
"""
import functools
import hashlib
import hmac
import secrets

from starlette.requests import Request

API_OWNER = "api"


class AccessRefused(Exception):
    "The caller is not let in: no valid bearer token, no signed-in session."


def new_owner() -> str: return "browser_" + secrets.token_urlsafe(12)


def with_owner(may_create: bool = False):
    """Call the handler as `handler(request, owner)` with the caller's owner, or raise AccessRefused.
    `may_create`: an open app's browser without a session gets one (and so an owner) here."""
    def decorate(handler):
        @functools.wraps(handler)
        async def handle(request: Request):
            return await handler(request, request.app.state.services.gate.owner(request, may_create))
        return handle
    return decorate


class Gate:
    def __init__(self, tokens: list[str], key: str):
        self.tokens, self._key = tokens, key.encode()

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

    def bearer_owner(self, token: str) -> str | None:
        if not token or not self.valid(token): return None
        return "token_" + hashlib.sha256(token.encode()).hexdigest()[:32]

    def owner(self, request: Request, may_create: bool) -> str:
        "Whose tasks the caller may queue and see: its token's, or its session's; AccessRefused when neither."
        token = self.bearer_token(request)
        owner = self.bearer_owner(token) if token is not None else self.session_owner(request, create=may_create)
        if owner is None: raise AccessRefused()
        return owner

    def session_owner(self, request: Request, create: bool) -> str | None:
        """The session's owner; None when the gate refuses it. With the gate off a session gets an owner (and
        so a cookie) only where `create` says one is needed; an API call without a session is the API owner."""
        session = request.session
        if self.on: return session.get("owner") if session.get("signed_in") in {self._signed_in_mark(t) for t in self.tokens} else None
        if "owner" in session: return session["owner"]
        if "hx-request" not in request.headers and request.scope["path"].startswith("/api/"): return API_OWNER
        if create: session["owner"] = new_owner()
        return session.get("owner", "")

    def quota_key(self, request: Request, owner: str) -> str:
        "Whose allowance a queueing spends: a token's, however many sessions signed in with it."
        return "signin_" + request.session["signed_in"] if self.on and owner.startswith("browser_") else owner

    def sign_in(self, session, token: str) -> bool:
        if not self.valid(token): return False
        session.clear()
        session.update(signed_in=self._signed_in_mark(token), owner=new_owner())
        return True


def is_cross_site(headers) -> bool:
    "A browser request that another site started: Sec-Fetch-Site says so, or Origin is not this host."
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None: return fetch_site not in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None: return False
    return origin.split("://", 1)[-1].rstrip("/") != headers.get("host", "")
