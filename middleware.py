"""ASGI middleware that runs before any handler reads a request. Each refuses through `refuse(scope, status,
message, kind)`, which answers in the contract's error shape (responses.refusal)."""
import re

from starlette.datastructures import Headers

from access import is_cross_site

MAX_HEADER_BYTES = 64 * 1024


class AllowedHosts:
    """Refuse (400) a request whose Host is not one of `hosts`: a web page elsewhere could otherwise reach an app on
    this machine by DNS rebinding and spend its key. `*` allows any host."""

    def __init__(self, app, hosts: tuple[str, ...], refuse):
        self.app, self.hosts, self.refuse = app, frozenset(hosts), refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and "*" not in self.hosts:
            host = Headers(scope=scope).get("host", "").lower()
            shape = re.fullmatch(r"(\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(:[0-9]{1,5})?", host)
            name = shape.group(1) if shape else host
            if shape is None or name not in self.hosts:
                message = f"This app does not answer to the host {name[:100]!r}: add it to ALLOWED_HOSTS"
                return await self.refuse(scope, 400, message, "host_not_allowed")(scope, receive, send)
        await self.app(scope, receive, send)


class HeaderLimit:
    "Refuse (431) a request whose headers add up to over 64 KB."

    def __init__(self, app, refuse):
        self.app, self.refuse = app, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEADER_BYTES:
            message = f"The request's headers are over {MAX_HEADER_BYTES // 1024} KB"
            return await self.refuse(scope, 431, message, "headers_too_large")(scope, receive, send)
        await self.app(scope, receive, send)


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, before anything parses it.

    A declared Content-Length over the limit is refused unread; a streamed body is counted as it
    arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app, limit: int, refuse):
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await self._refusal(scope)(scope, receive, send)
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
            await self._refusal(scope)(scope, receive, send)

    def _refusal(self, scope):
        return self.refuse(scope, 413, f"The request body is over {self.limit} bytes: send a shorter prompt", "request_too_large")


CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"),
                    (b"x-frame-options", b"DENY")]


SERVER_SEND = "app.server_send"


class SecurityHeaders:
    """Add the security headers to every response, and mark cookies Secure when the request came over HTTPS. As the
    outermost layer it also puts the server's own `send` in the scope (SERVER_SEND), for the body of a response that
    no middleware changes after its start: an event stream's chunks (responses.EventStreamResponse)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http": return await self.app(scope, receive, send)
        https = scope.get("scheme") == "https"
        scope[SERVER_SEND] = send

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [(k, v + b"; Secure" if https and k == b"set-cookie" and b"secure" not in v.lower() else v)
                           for k, v in message.get("headers", [])]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)
        try: await self.app(scope, receive, send_with_headers)
        finally: scope.pop(SERVER_SEND)  # the server's send holds the scope: no cycle left for the collector


class CrossSiteWrites:
    """Refuse (403) a POST that another site's page started, before anything reads it. OpenAI's webhook is exempt,
    and so are calls with a bearer token (another site's page cannot send one)."""

    def __init__(self, app, refuse, exempt_paths=("/api/webhook",)):
        self.app, self.refuse, self.exempt_paths = app, refuse, exempt_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] not in self.exempt_paths:
            headers = Headers(scope=scope)
            if not headers.get("authorization", "").lower().startswith("bearer ") and is_cross_site(headers):
                message = "Cross-site request refused: use the app's own page or the API with a token"
                return await self.refuse(scope, 403, message, "cross_site")(scope, receive, send)
        await self.app(scope, receive, send)
