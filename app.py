"""The FastHTML app: the page and the JSON/HTMX API of DESIGN.md. `python app.py` serves it on PORT."""
import asyncio
import base64
import binascii
import json
import logging
import os
import secrets
from pathlib import Path

from fasthtml.common import FastHTML, serve, to_xml
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import ui
from config import Settings, load_settings
from openai_client import OpenAIError, OpenAIGateway, WebhookNotConfigured, WebhookRejected
from middleware import BodyLimit
from store import StoreUnavailable, store_for, store_kind
from tasks import QueueRefused, TaskService, task_json

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"
RECENT_TASKS = 20


class BadRequest(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


def wants_html(request: Request) -> bool: return "hx-request" in request.headers


def json_error(status: int, message: str, kind: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status, headers=headers)


def fragment(ft, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    return HTMLResponse(to_xml(ft), status_code=status, headers=headers)


def error_response(request: Request, status: int, message: str, kind: str, headers: dict | None = None) -> Response:
    "The contract's JSON error, or for htmx the message in the form's error slot."
    if wants_html(request):
        return fragment(ui.form_error(message), status,
                        {**(headers or {}), "HX-Retarget": "#form-error", "HX-Reswap": "outerHTML"})
    return json_error(status, message, kind, headers)


async def parse_fields(request: Request) -> dict:
    "Fields of a urlencoded, multipart or JSON body (FastHTML has already parsed and refused malformed ones)."
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
    if not isinstance(created_at, (int, float)) or not isinstance(task_id, str): raise ValueError("malformed cursor")
    return float(created_at), task_id


async def http_error(request: Request, exc: HTTPException):
    "Starlette's and FastHTML's own refusals (malformed body, unknown path, wrong method) in the contract's shape."
    message = {404: "Not found: see the README for the API's routes", 405: "Method not allowed on this path"}.get(
        exc.status_code, str(exc.detail))
    if request.url.path.startswith("/api/") or wants_html(request):
        return error_response(request, exc.status_code, message, "invalid_request")
    return Response(message, status_code=exc.status_code, media_type="text/plain")


def body_too_large(scope, limit: int) -> Response:
    return error_response(Request(scope), 413, f"The request body is over {limit} bytes: send a shorter prompt",
                          "request_too_large")


async def store_down(request: Request, exc: StoreUnavailable):
    log.error("store unavailable: %s", exc)
    return error_response(request, 503, "The task database is unreachable: check DATABASE_URL and that the "
                                        "database is running, then try again", "store_unavailable")


def create_app(settings: Settings | None = None, http_client=None) -> FastHTML:
    "The app; `http_client` stands in for the network to OpenAI (tests aim it at an emulator)."
    settings = settings or load_settings()
    if settings.on_vercel and not settings.session_secret:
        raise SystemExit("SESSION_SECRET is not set: on Vercel sessions need a fixed key. "
                         "Set it in the project's Environment Variables (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    key_file = Path("data/.sesskey")
    if not settings.session_secret: key_file.parent.mkdir(exist_ok=True)
    app = FastHTML(default_hdrs=False, secret_key=settings.session_secret or None, key_fname=str(key_file),
                   session_cookie="session", same_site="lax", title="Background prompts",
                   exception_handlers={StoreUnavailable: store_down, HTTPException: http_error, 404: http_error, 405: http_error},
                   middleware=[Middleware(BodyLimit, limit=settings.max_body_bytes, refuse=body_too_large)],
                   routes=[Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")])
    rt = app.route
    gateway = OpenAIGateway(settings, webhook_target=app, http_client=http_client)
    state = {"service": None}
    ready = asyncio.Lock()

    async def service() -> TaskService:
        "The task service, its store opened on first use (so it works under any server, and on Vercel)."
        if state["service"] is None:
            async with ready:
                if state["service"] is None:
                    store = await store_for(settings.database_url).open()
                    state["service"] = TaskService(store, gateway, settings.reconcile_seconds)
        return state["service"]

    async def shutdown():
        if state["service"] is not None: await state["service"].store.close()
        state["service"] = None
        if gateway.emulator: await gateway.emulator.stop()
        await gateway.close()

    app.on_event("shutdown")(shutdown)
    app.state.settings, app.state.gateway, app.state.service, app.state.shutdown = settings, gateway, service, shutdown

    def fresh_form():
        return ui.prompt_form(settings.allowed_models, settings.max_prompt_chars, hx_swap_oob="true")

    def owner_of(session) -> str:
        if "owner" not in session: session["owner"] = "browser_" + secrets.token_urlsafe(12)
        return session["owner"]

    @rt("/", methods=["get"])
    async def index(session):
        svc = await service()
        tasks = await svc.read_many(await svc.store.list_for_owner(owner_of(session), RECENT_TASKS))
        return ui.page(tasks, settings.demo, settings.allowed_models, settings.max_prompt_chars)

    @rt("/api/queue", methods=["post"])
    async def queue(request: Request, session):
        try:
            fields = await parse_fields(request)
            prompt = text_field(fields, "prompt")
            model = text_field(fields, "model") or settings.model
            reasoning_effort = text_field(fields, "reasoning_effort") or None
            key = request.headers.get("idempotency-key") or text_field(fields, "idempotency_key") or None
            if prompt is None or not prompt.strip(): raise BadRequest(400, "The prompt is empty: write what you want the model to do", "empty_prompt")
            if len(prompt) > settings.max_prompt_chars:
                raise BadRequest(413, f"The prompt has {len(prompt)} characters; the limit is {settings.max_prompt_chars} "
                                      "(MAX_PROMPT_CHARS)", "prompt_too_long")
            if model not in settings.allowed_models:
                raise BadRequest(400, f"Unknown model {model[:60]!r}: choose one of {', '.join(settings.allowed_models)}", "unknown_model")
            if reasoning_effort not in ui.REASONING_EFFORTS[1:] + (None,):
                raise BadRequest(400, f"Unknown reasoning_effort: choose one of {', '.join(ui.REASONING_EFFORTS[1:])}", "unknown_reasoning_effort")
            if key is not None and len(key) > 200: raise BadRequest(400, "The idempotency key is over 200 characters")
        except BadRequest as exc:
            return error_response(request, exc.status, exc.message, exc.kind)
        owner = owner_of(session)
        try:
            task, _ = await (await service()).queue(owner, prompt, model, reasoning_effort, key)
        except QueueRefused as refused:
            exc = refused.error
            retry = {"Retry-After": exc.retry_after} if exc.retry_after else None
            if not wants_html(request): return json_error(exc.status, exc.message, exc.kind, retry)
            return fragment((ui.task_card(refused.task), fresh_form()), exc.status, retry)
        if wants_html(request):
            return fragment((ui.task_card(task), fresh_form(), ui.form_error(oob=True)), 202)
        return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/status/{task['id']}"})

    @rt("/api/status/{task_id}", methods=["get"])
    async def status(request: Request, task_id: str):
        task = await (await service()).read_quietly(task_id)
        if task is None: return not_found(request, task_id)
        if wants_html(request): return fragment(ui.task_card(task))
        return JSONResponse(task_json(task))

    @rt("/api/cancel/{task_id}", methods=["post"])
    async def cancel(request: Request, task_id: str):
        svc = await service()
        task = await svc.store.get(task_id)
        if task is None: return not_found(request, task_id)
        try: task = await svc.cancel(task)
        except OpenAIError as exc:
            retry = {"Retry-After": exc.retry_after} if exc.retry_after else None
            return error_response(request, exc.status, exc.message, exc.kind, retry)
        return fragment(ui.task_card(task)) if wants_html(request) else JSONResponse(task_json(task))

    @rt("/api/tasks", methods=["get"])
    async def tasks(session, cursor: str = "", limit: int = 20):
        try: before = decode_cursor(cursor) if cursor else None
        except ValueError: return json_error(400, "Malformed cursor: pass back next_cursor as it was given", "invalid_cursor")
        limit = max(1, min(limit, 100))
        page = await (await service()).store.list_for_owner(owner_of(session), limit + 1, before)
        more = len(page) > limit
        return JSONResponse({"tasks": [task_json(t) for t in page[:limit]],
                             "next_cursor": encode_cursor(page[limit - 1]) if more else None})

    async def webhook(request: Request):
        "OpenAI's webhook, a plain Starlette route so that nothing parses the body before it is verified."
        try:
            webhook_id, event_type, response_id = gateway.unwrap(await request.body(), request.headers)
        except WebhookRejected as exc:
            log.warning("webhook refused: %s", exc)
            return json_error(400, f"Webhook refused: {exc}", "invalid_webhook")
        except WebhookNotConfigured as exc:
            log.error("%s", exc)
            return json_error(503, str(exc), "webhook_not_configured")
        try:
            outcome = await (await service()).handle_webhook(webhook_id, event_type, response_id)
        except OpenAIError as exc:
            log.warning("webhook %s not handled, OpenAI will retry: %s", webhook_id, exc.message)
            return json_error(503, f"Could not check the response with OpenAI: {exc.message}", exc.kind)
        log.info("webhook %s (%s, %s): %s", webhook_id, event_type, response_id, outcome)
        return JSONResponse({"received": True, "outcome": outcome})

    app.router.routes.append(Route("/api/webhook", webhook, methods=["POST"]))

    @rt("/health", methods=["get"])
    async def health():
        body = {"status": "ok", "mode": settings.mode, "store": store_kind(settings.database_url),
                "webhook_secret": bool(settings.effective_webhook_secret)}
        try: await (await service()).store.ping()
        except StoreUnavailable:
            return JSONResponse({**body, "status": "unavailable"}, status_code=503)
        return JSONResponse(body)

    return app


app = create_app()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(appname="app", app="app", host=os.environ.get("HOST", "127.0.0.1"), port=app.state.settings.port, reload=False)
