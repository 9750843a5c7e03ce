"""The HTTP contract's shapes (DESIGN.md): reading a queue request, the error shape, task JSON, HTMX fragments."""
import base64
import binascii
import json
import logging
from datetime import datetime, timezone

from fasthtml.common import to_xml
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

import ui
from config import Settings
from store import StoreUnavailable
from tasks import TASK_ID

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


def task_json(task: dict) -> dict:
    "A task as the HTTP contract shows it."
    return {"id": task["id"], "status": task["status"], "prompt": task["prompt"], "model": task["model"],
            "reasoning_effort": task["reasoning_effort"], "output_text": task["output_text"], "error": task["error"],
            "usage": task["usage"], "response_id": task["response_id"], "created_at": iso(task["created_at"]),
            "updated_at": iso(task["updated_at"]), "started_at": iso(task["started_at"]),
            "completed_at": iso(task["completed_at"]),
            "status_url": f"/api/status/{task['id']}"}


def task_answer(request: Request, task: dict, status: int = 200) -> Response:
    "The task: its card for htmx, its JSON for anything else."
    if wants_html(request): return HTMLResponse(ui.card_html(task), status_code=status)
    return JSONResponse(task_json(task), status_code=status)


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
    "Fields of a urlencoded, multipart or JSON body; BadRequest for a malformed one or another content type."
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        try: data = json.loads(await request.body() or b"null")
        except ValueError: raise BadRequest(400, "The body is not valid JSON", "invalid_json")
        if not isinstance(data, dict): raise BadRequest(400, 'Send a JSON object such as {"prompt": "..."}', "invalid_json")
        return data
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try: form = await request.form()
        except (MultiPartException, RuntimeError) as exc: raise BadRequest(400, f"Malformed form body: {exc}")
        return {key: value for key, value in form.items() if isinstance(value, str)}
    raise BadRequest(415, "Send the prompt as JSON, a urlencoded form or multipart form data "
                          f"(got content type {content_type or 'none'!r})", "unsupported_media_type")


def text_field(fields: dict, name: str) -> str | None:
    value = fields.get(name)
    if value is None: return None
    if not isinstance(value, str): raise BadRequest(400, f"{name} must be a string")
    return value


def not_found(request: Request, task_id: str) -> Response:
    if wants_html(request): return fragment(ui.missing_task(task_id), 404)
    return json_error(404, f"No task with id {task_id[:80]!r}: check the id returned by POST /api/queue", "not_found")


def encode_cursor(task: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps([task["created_at"], task["id"]]).encode()).decode()


def decode_cursor(cursor: str) -> tuple[float, str]:
    try: created_at, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error) as exc: raise ValueError("malformed cursor") from exc
    if not isinstance(created_at, (int, float)) or not isinstance(task_id, str) or not TASK_ID.fullmatch(task_id):
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


def body_too_large(scope, limit: int) -> Response:
    return error_response(Request(scope), 413, f"The request body is over {limit} bytes: send a shorter prompt",
                          "request_too_large")


def cross_site_refused(scope) -> Response:
    return error_response(Request(scope), 403, "Cross-site request refused: use the app's own page or the API with a token",
                          "cross_site")


async def access_refused(request: Request, exc: Exception) -> Response:
    "No token or session: 401 for the API (saying how to send a token), the sign-in page for a browser."
    if request.scope["path"].startswith("/api/") and not wants_html(request):
        return json_error(401, "Missing or wrong access token: send Authorization: Bearer <token> (one of APP_ACCESS_TOKENS)",
                          "unauthorized", {"WWW-Authenticate": "Bearer"})
    if wants_html(request): return Response(status_code=401, headers={"HX-Redirect": "/signin"})
    return RedirectResponse("/signin", 303)


async def server_error(request: Request, exc: Exception):
    log.exception("unexpected error on %s %s", request.method, request.scope["path"], exc_info=exc)
    return error_response(request, 500, "Something went wrong on our side; the log has the details. Try again.", "server_error")


async def store_down(request: Request, exc: StoreUnavailable):
    log.error("store unavailable: %s", exc)
    return error_response(request, 503, "The task database is unreachable: check DATABASE_URL and that the "
                                        "database is running, then try again", "store_unavailable")


def queue_request(fields: dict, headers, settings: Settings) -> dict:
    "The queue request's arguments, checked; BadRequest says what is wrong."
    prompt = text_field(fields, "prompt")
    if prompt is not None: prompt = prompt.replace("\r\n", "\n")
    model = text_field(fields, "model") or settings.model
    effort = text_field(fields, "reasoning_effort") or None
    key = headers.get("idempotency-key") or text_field(fields, "idempotency_key") or None
    if prompt is None or not prompt.strip():
        raise BadRequest(400, "The prompt is empty: write what you want the model to do", "empty_prompt")
    if len(prompt) > settings.max_prompt_chars:
        raise BadRequest(413, f"The prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars} "
                              "(MAX_PROMPT_CHARS)", "prompt_too_long")
    if model not in settings.allowed_models:
        raise BadRequest(400, f"Unknown model {model[:60]!r}: choose one of {', '.join(settings.allowed_models)}", "unknown_model")
    if effort not in ui.REASONING_EFFORTS[1:] + (None,):
        raise BadRequest(400, f"Unknown reasoning_effort: choose one of {', '.join(ui.REASONING_EFFORTS[1:])}",
                         "unknown_reasoning_effort")
    if key is not None and len(key) > 200: raise BadRequest(400, "The idempotency key is over 200 characters")
    if any("\x00" in value for value in (prompt, model, effort or "", key or "")):
        raise BadRequest(400, "The request holds a NUL character (\\x00): remove it")
    return {"prompt": prompt, "model": model, "reasoning_effort": effort, "idempotency_key": key}


def retry_header(retry_after) -> dict | None:
    return {"Retry-After": str(retry_after)} if retry_after else None
