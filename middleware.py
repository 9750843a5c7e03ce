"""ASGI middleware that runs before any handler reads a request."""
from starlette.datastructures import Headers

from access import is_cross_site


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, before anything parses it.

    A declared Content-Length over the limit is refused unread; a streamed body is counted as it
    arrives and refused as soon as it passes the limit. `refuse(scope, limit)` builds the 413 answer.
    """

    def __init__(self, app, limit: int, refuse):
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self.refuse(scope, self.limit)(scope, receive, send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit: raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try: await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started: raise
            await self.refuse(scope, self.limit)(scope, receive, send)


CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY")]


class SecurityHeaders:
    """Add the security headers to every response, and mark cookies Secure when the request came over HTTPS."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)
        https = scope.get("scheme") == "https"

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v + b"; Secure" if https and k == b"set-cookie" and b"secure" not in v.lower() else v)
                           for k, v in message.get("headers", [])]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)
        await self.app(scope, receive, send_with_headers)


class CrossSiteWrites:
    """Refuse a POST that another site's page started, before anything reads it; `refuse(scope)` builds the answer.
    OpenAI's webhook is exempt, and so are calls with a bearer token (another site's page cannot send one)."""

    def __init__(self, app, refuse, exempt_paths=("/api/webhook",)):
        self.app, self.refuse, self.exempt_paths = app, refuse, exempt_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] not in self.exempt_paths:
            headers = Headers(scope=scope)
            if not headers.get("authorization", "").lower().startswith("bearer ") and is_cross_site(headers):
                return await self.refuse(scope)(scope, receive, send)
        await self.app(scope, receive, send)
