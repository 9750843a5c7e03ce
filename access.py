"""Who is calling: access tokens, signed-in sessions, owners, and the cross-site check.

With APP_ACCESS_TOKENS set, a browser signs in once with a token (its session then holds the
token's fingerprint, never the token), and an API client sends `Authorization: Bearer <token>`.
Each browser session and each token is an owner: the tasks it queued are the ones it sees.
"""
import hashlib
import hmac
import secrets

from starlette.requests import Request

PUBLIC_PATHS = ("/health", "/signin")
OWNING_PATHS = ("/", "/api/queue")


def new_owner() -> str: return "browser_" + secrets.token_urlsafe(12)


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:32]


class Gate:
    def __init__(self, tokens: list[str]):
        self.tokens = tokens

    @property
    def on(self) -> bool: return bool(self.tokens)

    def valid(self, token: str) -> bool:
        "Compare against every token in constant time."
        found = False
        for candidate in self.tokens: found |= hmac.compare_digest(candidate.encode(), token.encode())
        return found

    def bearer_owner(self, request: Request) -> str | None:
        "The owner named by a valid `Authorization: Bearer` token."
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or not self.valid(token.strip()): return None
        return "token_" + fingerprint(token.strip())

    def session_owner(self, session, create: bool) -> str | None:
        """The session's owner; None when the gate refuses it. With the gate off, a session gets an owner
        (and so a cookie) only where `create` says one is needed; until then it is anonymous ("")."""
        if self.on and session.get("signed_in") not in {fingerprint(t) for t in self.tokens}: return None
        if create and "owner" not in session: session["owner"] = new_owner()
        return session.get("owner", "")

    def sign_in(self, session, token: str) -> bool:
        if not self.valid(token): return False
        session.clear()
        session.update(signed_in=fingerprint(token), owner=new_owner())
        return True


def is_cross_site(request: Request) -> bool:
    "A browser request that another site started: Sec-Fetch-Site says so, or Origin is not this host."
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None: return fetch_site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None: return False
    return origin.split("://", 1)[-1].rstrip("/") != request.headers.get("host", "")
