"""Demo mode's stand-in for the OpenAI Responses API, and its signed webhook sender.

Enough of `POST /v1/responses`, `GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`
for the real `openai` SDK to parse every answer. A background response moves
queued -> in_progress -> completed over `delay` seconds; when it ends, an event is POSTed to
the webhook target, signed as OpenAI signs (Standard Webhooks), and retried with backoff.
`/_emulator/*` lets tests and benchmarks count calls and make the next call fail.
Run it alone with `python emulator.py` (EMULATOR_PORT, EMULATOR_WEBHOOK_URL, OPENAI_WEBHOOK_SECRET).
"""
import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import Counter
from dataclasses import dataclass

import httpx2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

log = logging.getLogger("emulator")
DELIVERY_BACKOFF_SECONDS = (0.5, 1, 2, 4, 8)
TERMINAL = ("completed", "failed", "cancelled", "incomplete")


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    "The `webhook-signature` value for a body, as Standard Webhooks define it."
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(secret: str, body: bytes, webhook_id: str | None = None, timestamp: int | None = None) -> dict:
    webhook_id = webhook_id or "wh_" + secrets.token_hex(12)
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body), "content-type": "application/json"}


def demo_answer(prompt: str) -> str:
    "A deterministic made-up answer that says plainly it is a demo."
    words = len(prompt.split())
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    first_line = prompt.strip().splitlines()[0][:200] if prompt.strip() else ""
    return (f"[Demo mode] No model was called: this answer was made up on your machine.\n\n"
            f"- **Your prompt**: {words} words, {len(prompt)} characters (fingerprint `{digest}`)\n"
            f"- **It began**: {first_line}\n\n"
            "Set `OPENAI_API_KEY` to run it on OpenAI.")


@dataclass
class EmulatedResponse:
    id: str
    model: str
    prompt: str
    created_at: float
    delay: float
    reasoning_effort: str | None = None
    ended_as: str | None = None
    ended_at: float | None = None

    def status(self, now: float) -> str:
        if self.ended_as and (self.ended_at or 0) <= now: return self.ended_as
        elapsed = now - self.created_at
        if elapsed >= self.delay: return self.outcome
        return "queued" if elapsed < self.delay / 4 else "in_progress"

    @property
    def outcome(self) -> str:
        "How the response ends: `[demo:failed]` or `[demo:incomplete]` in the prompt asks for that ending."
        for status in ("failed", "incomplete"):
            if f"[demo:{status}]" in self.prompt: return status
        return "completed"

    def to_json(self, now: float) -> dict:
        status = self.status(now)
        text = demo_answer(self.prompt) if status in ("completed", "incomplete") else None
        output = [{"type": "message", "id": "msg_" + self.id[5:], "status": "completed", "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}] if text else []
        in_tokens, out_tokens = len(self.prompt.split()), len(text.split()) if text else 0
        return {
            "id": self.id, "object": "response", "created_at": int(self.created_at), "status": status,
            "background": True, "model": self.model, "output": output,
            "error": {"code": "server_error", "message": "The demo was asked to fail ([demo:failed] in the prompt)."}
            if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None, "instructions": None, "metadata": {}, "parallel_tool_calls": True,
            "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "tools": [], "store": True,
            "reasoning": {"effort": self.reasoning_effort, "summary": None},
            "usage": {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                      "total_tokens": in_tokens + out_tokens} if text else None,
        }


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                        status_code=status, headers=headers)


class Emulator:
    """The emulated Responses API; `app` is its ASGI app, `webhook_target` a URL or an ASGI app."""

    def __init__(self, webhook_target, secret: str, delay: float = 3.0, deliver_webhooks: bool = True):
        self.webhook_target, self.secret, self.delay = webhook_target, secret, delay
        self.deliver_webhooks = deliver_webhooks
        self.responses: dict[str, EmulatedResponse] = {}
        self.calls: Counter = Counter()
        self.deliveries: list[dict] = []
        self.planned_failures: dict[str, list[dict]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._completions: dict[str, asyncio.Task] = {}
        self.app = Starlette(routes=[
            Route("/v1/responses", self.create, methods=["POST"]),
            Route("/v1/responses/{id}", self.retrieve, methods=["GET"]),
            Route("/v1/responses/{id}/cancel", self.cancel, methods=["POST"]),
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/fail", self.plan_failure, methods=["POST"]),
        ])

    def fail_next(self, operation: str, status: int, message: str = "Emulated failure", headers: dict | None = None):
        """Make the next `operation` (create, retrieve, cancel) answer `status` with an OpenAI-style error; 0 drops
        the connection, -1 times out, 200 answers `message` as plain text (a proxy's page, not the API)."""
        self.planned_failures.setdefault(operation, []).append({"status": status, "message": message, "headers": headers})

    def _planned_failure(self, operation: str) -> JSONResponse | None:
        planned = self.planned_failures.get(operation)
        if not planned: return None
        failure = planned.pop(0)
        if failure["status"] == 0: raise httpx2.ConnectError("emulated connection drop")
        if failure["status"] == -1: raise httpx2.ReadTimeout("emulated timeout")
        if failure["status"] == 200: return PlainTextResponse(failure["message"])
        kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(failure["status"], "api_error")
        return _error(failure["status"], failure["message"], kind, failure["headers"])

    async def create(self, request: Request):
        self.calls["create"] += 1
        if failure := self._planned_failure("create"): return failure
        body = await request.json()
        prompt = body.get("input")
        if not isinstance(prompt, str) or not body.get("model"):
            return _error(400, "input (a string) and model are required", "invalid_request_error")
        response = EmulatedResponse(id="resp_" + secrets.token_hex(24), model=body["model"], prompt=prompt,
                                    created_at=time.time(), delay=self.delay,
                                    reasoning_effort=(body.get("reasoning") or {}).get("effort"))
        self.responses[response.id] = response
        self._completions[response.id] = self._spawn(self._deliver_when_done(response))
        return JSONResponse(response.to_json(time.time()))

    async def retrieve(self, request: Request):
        self.calls["retrieve"] += 1
        self.calls["retrieve:" + request.path_params["id"]] += 1
        if failure := self._planned_failure("retrieve"): return failure
        response = self.responses.get(request.path_params["id"])
        if not response: return _error(404, f"No response found with id '{request.path_params['id']}'.", "invalid_request_error")
        return JSONResponse(response.to_json(time.time()))

    async def cancel(self, request: Request):
        self.calls["cancel"] += 1
        if failure := self._planned_failure("cancel"): return failure
        response = self.responses.get(request.path_params["id"])
        if not response: return _error(404, f"No response found with id '{request.path_params['id']}'.", "invalid_request_error")
        now = time.time()
        if response.status(now) not in TERMINAL:
            response.ended_as, response.ended_at = "cancelled", now
            if completion := self._completions.pop(response.id, None): completion.cancel()
            self._spawn(self._deliver(response, "response.cancelled"))
        return JSONResponse(response.to_json(now))

    async def stats(self, request: Request):
        return JSONResponse({"calls": dict(self.calls), "responses": len(self.responses),
                             "deliveries": len(self.deliveries)})

    async def plan_failure(self, request: Request):
        body = await request.json()
        self.fail_next(body["operation"], int(body["status"]), body.get("message", "Emulated failure"), body.get("headers"))
        return JSONResponse({"planned": body})

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _deliver_when_done(self, response: EmulatedResponse):
        await asyncio.sleep(max(0.0, response.created_at + response.delay - time.time()))
        self._completions.pop(response.id, None)
        await self._deliver(response, f"response.{response.outcome}")

    async def _deliver(self, response: EmulatedResponse, event_type: str):
        "POST the signed event, retrying refused or lost deliveries with backoff, as OpenAI does."
        if not self.deliver_webhooks: return
        event = {"object": "event", "id": "evt_" + secrets.token_hex(12), "type": event_type,
                 "created_at": int(time.time()), "data": {"id": response.id}}
        body = json.dumps(event).encode()
        webhook_id = "wh_" + secrets.token_hex(12)
        for backoff in (0, *DELIVERY_BACKOFF_SECONDS):
            await asyncio.sleep(backoff)
            status = await self._post(body, signed_headers(self.secret, body, webhook_id))
            self.deliveries.append({"event": event, "status": status})
            if status and 200 <= status < 300: return
        log.warning("webhook %s for %s given up after %d attempts", webhook_id, response.id, 1 + len(DELIVERY_BACKOFF_SECONDS))

    async def _post(self, body: bytes, headers: dict) -> int | None:
        is_url = isinstance(self.webhook_target, str)
        transport = None if is_url else httpx2.ASGITransport(app=self.webhook_target)
        url = self.webhook_target if is_url else "http://127.0.0.1/api/webhook"
        try:
            async with httpx2.AsyncClient(transport=transport, timeout=10) as client:
                return (await client.post(url, content=body, headers=headers)).status_code
        except httpx2.HTTPError as exc:
            log.info("webhook delivery to %s failed: %s", url if is_url else "the app", type(exc).__name__)
            return None

    async def stop(self):
        "Cancel pending deliveries."
        for task in list(self._tasks): task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def wait_idle(self):
        "Wait until every scheduled delivery has ended (for tests)."
        while self._tasks: await asyncio.gather(*list(self._tasks), return_exceptions=True)


if __name__ == "__main__":
    import uvicorn

    from config import load_settings
    settings = load_settings()
    emulator = Emulator(settings.emulator_webhook_url, settings.webhook_secret or settings.generated_secret,
                        settings.demo_delay_seconds, settings.demo_webhooks)
    logging.basicConfig(level=logging.INFO)
    uvicorn.run(emulator.app, host="127.0.0.1", port=settings.emulator_port, log_level="warning")
