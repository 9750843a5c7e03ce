"""ASGI middleware that runs before FastHTML reads a request."""


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
