"""An httpx transport that calls an ASGI app in this process and streams its answer as the app sends it.

httpx2's own ASGITransport returns only once the whole body is sent, which would hold a streamed response
(Server-Sent Events) until its end: demo mode's emulator and the tests need each event as it comes.
"""
import asyncio

import httpx2


class _Body(httpx2.AsyncByteStream):
    def __init__(self, chunks: asyncio.Queue, app_task: asyncio.Task, disconnected: asyncio.Event):
        self.chunks, self.app_task, self.disconnected = chunks, app_task, disconnected

    async def __aiter__(self):
        while (chunk := await self.chunks.get()) is not None: yield chunk

    async def aclose(self):
        "The client is done: tell the app it disconnected, and stop it if it does not end by itself."
        self.disconnected.set()
        if not self.app_task.done():
            try: await asyncio.wait_for(asyncio.shield(self.app_task), 1)
            except (asyncio.TimeoutError, Exception): self.app_task.cancel()


class StreamingASGITransport(httpx2.AsyncBaseTransport):
    def __init__(self, app, client: tuple[str, int] = ("127.0.0.1", 123)):
        self.app, self.client = app, client

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        body = b"".join([chunk async for chunk in request.stream])
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "headers": [(k.lower(), v) for k, v in request.headers.raw], "scheme": request.url.scheme,
                 "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
                 "query_string": request.url.query, "server": (request.url.host, request.url.port),
                 "client": self.client, "root_path": ""}
        chunks, disconnected = asyncio.Queue(), asyncio.Event()
        started = asyncio.get_running_loop().create_future()
        pending = [body]

        async def receive():
            if pending: return {"type": "http.request", "body": pending.pop(), "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start" and not started.done(): started.set_result(message)
            elif message["type"] == "http.response.body":
                if message.get("body") and request.method != "HEAD": await chunks.put(message["body"])
                if not message.get("more_body"): await chunks.put(None)

        async def run():
            try: await self.app(scope, receive, send)
            except BaseException as exc:
                if not started.done(): started.set_exception(exc)
                raise
            finally: chunks.put_nowait(None)

        app_task = asyncio.create_task(run())
        app_task.add_done_callback(lambda task: task.cancelled() or task.exception())  # seen here, not logged as lost
        start = await started
        return httpx2.Response(start["status"], headers=start.get("headers", []), stream=_Body(chunks, app_task, disconnected))
