"""The HTTP contract's shapes (DESIGN.md): reading a queue request, the error shape, task JSON, HTMX fragments."""
import asyncio
import base64
import binascii
import json
import logging
import re
from datetime import datetime, timezone

from fasthtml.common import to_xml
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

import ui
from cache import BoundedCache
from config import Settings
from limiter import Limited, LimiterUnavailable
from middleware import SERVER_SEND
from models import Model, model_named
from progress import sse
from store import TERMINAL, RunningCapReached, StoreUnavailable
from tasks import TASK_ID, QueueRequest
from telemetry import OPEN_STREAMS

log = logging.getLogger("app")


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def wants_html(request: Request) -> bool: return "hx-request" in request.headers


def json_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def iso(timestamp: float | None) -> str | None:
    if timestamp is None: return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


TASK_FIELDS = ("id", "status", "prompt", "model", "reasoning_effort", "output_text", "refusal", "incomplete_reason", "error",
               "reasoning_summary", "usage", "cost_usd", "response_id", "max_output_tokens", "max_tool_calls")


def task_json(task: dict) -> dict:
    "A task as the HTTP contract shows it."
    return {**{name: task[name] for name in TASK_FIELDS}, "tools": task["tools"] or [], "sources": task["sources"] or [],
            "steps": task["steps"] or [], **{name: iso(task[name]) for name in ("created_at", "updated_at", "started_at",
                                                                                 "completed_at")},
            "status_url": f"/api/status/{task['id']}", "events_url": f"/api/events/{task['id']}"}


def progress_json(events, state, task: dict, ended: bool, live: bool = False) -> bytes:
    "Progress events as the contract streams them: JSON data, and last `done` with the final task (the same live or replayed)."
    chunks = [sse(event.kind, json.dumps(event.data), event.seq) for event in events]
    if ended: chunks.append(sse("done", json.dumps(task_json(task)), state.last + 1))
    return "".join(chunks).encode()


_bodies = BoundedCache(max_bytes=32 * 1024 * 1024)


def task_body(task: dict) -> bytes:
    "The task's JSON, encoded once per state of the task (a final task's never changes again)."
    key = (task["id"], task["updated_at"], task["status"])
    return _bodies.get(key) or _bodies.put(key, JSONResponse(task_json(task)).body)


def task_answer(request: Request, task: dict, progress=None, status: int = 200) -> Response:
    "The task: its card for htmx (a running one drawn with its `progress`), its JSON for anything else."
    if not wants_html(request): return Response(task_body(task), status_code=status, media_type="application/json")
    if progress is not None and task["status"] not in TERMINAL:
        return HTMLResponse(ui.running_card_html(task, progress), status_code=status)
    return HTMLResponse(ui.card_html(task), status_code=status)


class EventStreamResponse(Response):
    """Server-Sent Events written by `watch(write)`, from whichever task has them (the progress follower writes each
    batch to its viewers itself); the stream ends when `watch` returns, and `watch` is cancelled if the client leaves.
    Its start goes through the middleware, its chunks straight to the server (SERVER_SEND): the seven layers that only
    pass them on cost a fifth of each viewer's write (19 µs of CPU a batch, against 23)."""
    media_type = "text/event-stream"

    def __init__(self, watch, headers: dict):
        self.watch, self.status_code, self.background = watch, 200, None
        self.init_headers(headers)

    async def __call__(self, scope, receive, send):
        body_send = scope.get(SERVER_SEND, send)

        async def write(chunk: bytes): await body_send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def client_left():
            while (await receive())["type"] != "http.disconnect": pass
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        OPEN_STREAMS.inc()
        watching, leaving = asyncio.ensure_future(self.watch(write)), asyncio.ensure_future(client_left())
        try:
            await asyncio.wait([watching, leaving], return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            OPEN_STREAMS.dec()
            for task in (watching, leaving): task.cancel()
            await asyncio.gather(watching, leaving, return_exceptions=True)


def page(ft, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    "A whole HTML document."
    return HTMLResponse(to_xml(ft), status_code=status, headers=headers)


def fragment(ft, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    return HTMLResponse(to_xml(ft), status_code=status, headers=headers)


def error_response(request: Request, status: int, message: str, kind: str, headers: dict | None = None) -> Response:
    "The contract's JSON error, or for htmx the message in the form's error slot."
    if wants_html(request):
        return fragment(ui.form_error(message), status,
                        {**(headers or {}), "HX-Retarget": "#form-error", "HX-Reswap": "outerHTML"})
    return json_error(status, message, kind, headers)


async def parse_fields(request: Request) -> dict:
    """Fields of a urlencoded, multipart or JSON body (a field sent more than once in a form is a list); an empty body
    has none. BadRequest for a malformed body or another content type."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try: data = json.loads(await request.body() or b"null")
        except (ValueError, RecursionError): raise BadRequest(400, "The body is not valid JSON", "invalid_json") from None
        if not isinstance(data, dict): raise BadRequest(400, 'Send a JSON object such as {"prompt": "..."}', "invalid_json")
        return data
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try: form = await request.form()
        except (MultiPartException, RuntimeError) as exc: raise BadRequest(400, f"Malformed form body: {exc}") from None
        values = {}
        for key, value in form.multi_items():
            if isinstance(value, str): values.setdefault(key, []).append(value)
        return {key: found[0] if len(found) == 1 else found for key, found in values.items()}
    if not content_type and not await request.body(): return {}
    raise BadRequest(415, "Send the prompt as JSON, a urlencoded form or multipart form data "
                          f"(got content type {content_type or 'none'!r})", "unsupported_media_type")


def text_field(fields: dict, name: str) -> str | None:
    "A text field, or None; BadRequest if it is not text, or holds a NUL or a lone surrogate (no database takes those)."
    value = fields.get(name)
    if value is None: return None
    if not isinstance(value, str): raise BadRequest(400, f"{name} must be a string")
    if "\x00" in value: raise BadRequest(400, f"{name} holds a NUL character (\\x00): remove it")
    try: value.encode("utf-8")
    except UnicodeEncodeError: raise BadRequest(400, f"{name} holds an invalid character (a lone surrogate)") from None
    return value


def count_field(fields: dict, name: str, low: int, high: int) -> int | None:
    "An optional whole number from `low` to `high` (a number in JSON, digits in a form)."
    value = fields.get(name)
    if value is None or value == "": return None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,9}", value.strip()): value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadRequest(400, f"{name} must be a whole number from {low} to {high}", f"invalid_{name}")
    return value


def tools_field(fields: dict, model: Model, settings: Settings) -> tuple[str, ...]:
    "The tools asked for (a list, or names separated by commas); unasked, web search for a deep-research model."
    value = fields.get("tools")
    if value is None: return ("web_search",) if model.deep_research else ()
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest(400, f'tools must be a list of tool names, such as ["web_search"]: one of {", ".join(settings.tools)}',
                         "unknown_tool")
    names = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
    for name in names:
        if name not in settings.tools:
            hint = {"file_search": " (set OPENAI_VECTOR_STORE_IDS to enable it)", "mcp": " (set OPENAI_MCP_SERVERS to enable it)"}
            raise BadRequest(400, f"Unknown or unavailable tool {name[:40]!r}{hint.get(name, '')}: choose from "
                                  f"{', '.join(settings.tools)}", "unknown_tool")
    if model.deep_research and not names:
        raise BadRequest(400, f"{model.name} needs a data source: enable web search (tools: [\"web_search\"]), file search "
                              "(set OPENAI_VECTOR_STORE_IDS) or an MCP server (set OPENAI_MCP_SERVERS)", "data_source_required")
    return names


def queue_request(fields: dict, headers, settings: Settings) -> QueueRequest:
    "The queue request, checked before OpenAI is called; BadRequest says what is wrong."
    prompt = text_field(fields, "prompt")
    if prompt is None or not prompt.strip():
        raise BadRequest(400, "The prompt is empty: write what you want the model to do", "empty_prompt")
    prompt = prompt.replace("\r\n", "\n")
    if len(prompt) > settings.max_prompt_chars:
        raise BadRequest(413, f"The prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars} "
                              "(MAX_PROMPT_CHARS)", "prompt_too_long")
    name = text_field(fields, "model") or settings.model
    if name not in settings.allowed_models:
        raise BadRequest(400, f"Unknown model {name[:60]!r}: choose one of {', '.join(settings.allowed_models)}", "unknown_model")
    model = model_named(name)
    effort = text_field(fields, "reasoning_effort") or None
    if effort is not None and effort not in model.efforts:
        if not model.efforts:
            raise BadRequest(400, f"{name} is not a reasoning model and takes no reasoning_effort: leave it out",
                             "unknown_reasoning_effort")
        raise BadRequest(400, f"Unknown reasoning_effort {effort[:20]!r} for {name}: choose one of {', '.join(model.efforts)}",
                         "unknown_reasoning_effort")
    key = text_field({"key": headers.get("idempotency-key")}, "key") or text_field(fields, "idempotency_key") or None
    if key is not None and len(key) > 200: raise BadRequest(400, "The idempotency key is over 200 characters")
    return QueueRequest(prompt, name, effort, tools_field(fields, model, settings),
                        count_field(fields, "max_output_tokens", 16, 1_000_000), count_field(fields, "max_tool_calls", 1, 1000), key)


def not_found(request: Request, task_id: str) -> Response:
    if wants_html(request): return fragment(ui.missing_task(task_id), 404)
    return json_error(404, f"No task with id {task_id[:80]!r}: check the id returned by POST /api/queue", "not_found")


def encode_cursor(task: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps([task["created_at"], task["id"]]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try: created_at, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error, RecursionError) as exc: raise ValueError("malformed cursor") from exc
    if (not isinstance(created_at, (int, float)) or isinstance(created_at, bool) or not 0 <= created_at < 1e11
            or not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id)):
        raise ValueError("malformed cursor")
    return float(created_at), task_id


async def http_error(request: Request, exc: HTTPException):
    "Starlette's and FastHTML's own refusals (malformed body, unknown path, wrong method) in the contract's shape."
    message = {404: "Not found: see the README for the API's routes", 405: "Method not allowed on this path"}.get(
        exc.status_code, str(exc.detail))
    kind = "invalid_json" if "JSON" in message else "invalid_request"
    if request.scope["path"].startswith("/api/") or wants_html(request):
        return error_response(request, exc.status_code, message, kind)
    return Response(message, status_code=exc.status_code, media_type="text/plain")


def refusal(scope, status: int, message: str, kind: str) -> Response:
    "A middleware's refusal, in the contract's error shape."
    return error_response(Request(scope), status, message, kind)


async def access_refused(request: Request, exc: Exception) -> Response:
    "No token or session: 401 for the API (saying how to send a token), the sign-in page for a browser."
    if request.scope["path"].startswith(("/api/", "/metrics")) and not wants_html(request):
        return json_error(401, "Missing or wrong access token: send Authorization: Bearer <token> (one of APP_ACCESS_TOKENS)",
                          "unauthorized", {"WWW-Authenticate": "Bearer"})
    if wants_html(request): return Response(status_code=401, headers={"HX-Redirect": "/signin"})
    return RedirectResponse("/signin", 303)


async def limited(request: Request, exc: Limited) -> Response:
    return error_response(request, 429, exc.message, exc.kind, retry_header(exc.retry_after))


async def running_cap_reached(request: Request, exc: RunningCapReached) -> Response:
    cap = request.app.state.services.settings.max_running_per_owner
    return error_response(request, 429, f"You already have {cap} tasks running (the limit is {cap}, MAX_RUNNING_PER_OWNER): "
                                         "wait for one to finish or cancel one.", "rate_limited")


async def limiter_down(request: Request, exc: LimiterUnavailable) -> Response:
    log.error("rate limits unavailable: %s", exc)
    return error_response(request, 503, f"Requests cannot be counted right now: {exc}. Try again shortly.",
                          "limiter_unavailable")


async def server_error(request: Request, exc: Exception):
    log.exception("unexpected error on %s %s", request.method, request.scope["path"], exc_info=exc)
    return error_response(request, 500, "Something went wrong on our side; the log has the details. Try again.", "server_error")


async def store_down(request: Request, exc: StoreUnavailable):
    log.error("store unavailable: %s", exc)
    return error_response(request, 503, "The task database is unreachable: check DATABASE_URL and that the "
                                        "database is running, then try again", "store_unavailable")


def retry_header(retry_after) -> dict | None:
    return {"Retry-After": str(retry_after)} if retry_after else None
