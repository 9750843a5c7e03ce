"""The FastHTML app: the page and the JSON/HTMX API of DESIGN.md. `python app.py` serves it on PORT."""
import asyncio
import logging
import os
import time
from pathlib import Path

from fasthtml.common import FastHTML, serve, to_xml
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import ui
from access import OWNING_PATHS, PUBLIC_PATHS, Gate, is_cross_site
from config import Settings, load_settings
from contract import (BadRequest, body_too_large, decode_cursor, encode_cursor, error_response, fragment, http_error,
                      json_error, not_found, parse_fields, queue_request, retry_header, server_error, store_down,
                      wants_html)
from openai_client import OpenAIError, OpenAIGateway, WebhookNotConfigured, WebhookRejected
from limiter import Limited, QueueLimits, RateLimit
from middleware import BodyLimit, SecurityHeaders
from store import StoreUnavailable, store_for, store_kind
from tasks import TASK_ID, IdempotencyConflict, QueueRefused, TaskService, WebhookBusy, task_json

log = logging.getLogger("app")
STATIC_DIR = Path(__file__).parent / "static"
RECENT_TASKS = 20
STORE_RETRY_SECONDS = 5
FAILED_SIGNINS_RATE = "10/minute"


def session_key(settings: Settings) -> str | None:
    "SESSION_SECRET, or locally a key kept in data/.sesskey; on Vercel SESSION_SECRET is required."
    if settings.session_secret: return settings.session_secret
    if settings.on_vercel:
        raise SystemExit("SESSION_SECRET is not set: on Vercel sessions need a fixed key. Set it in the project's "
                         "Environment Variables (make one with: python -c 'import secrets; print(secrets.token_hex(32))')")
    return None


def create_app(settings: Settings | None = None, http_client=None) -> FastHTML:
    "The app; `http_client` stands in for the network to OpenAI (tests aim it at an emulator)."
    settings = settings or load_settings()
    secret_key = session_key(settings)
    if secret_key is None: Path("data").mkdir(exist_ok=True)
    store_kind(settings.database_url)
    exposed = settings.on_vercel and not settings.access_tokens and not settings.demo
    if exposed: log.warning("APP_ACCESS_TOKENS is not set: anyone with this app's URL can spend your OpenAI key and read every result")

    def caller(request: Request) -> str | Response:
        "The caller's owner, or the answer that refuses it: 403 for a cross-site write, 401 or sign-in without a valid token."
        token = gate.bearer_token(request)
        if request.method == "POST" and token is None and is_cross_site(request):
            return error_response(request, 403, "Cross-site request refused: use the app's own page or the API with a token", "cross_site")
        path = request.scope["path"]
        owner = gate.bearer_owner(token) if token is not None else gate.session_owner(request, create=path in OWNING_PATHS)
        if owner is not None or path in PUBLIC_PATHS: return owner
        if path.startswith("/api/") and not wants_html(request):
            return json_error(401, "Missing or wrong access token: send Authorization: Bearer <token> (one of APP_ACCESS_TOKENS)",
                              "unauthorized", {"WWW-Authenticate": "Bearer"})
        return Response(status_code=401, headers={"HX-Redirect": "/signin"}) if wants_html(request) else RedirectResponse("/signin", 303)

    async def before(request: Request):
        owner = caller(request)
        if isinstance(owner, Response): return owner
        request.scope["auth"] = owner

    app = FastHTML(default_hdrs=False, secret_key=secret_key, key_fname="data/.sesskey", session_cookie="session",
                   same_site="lax", title="Background prompts", before=before,
                   exception_handlers={StoreUnavailable: store_down, HTTPException: http_error, 404: http_error, 405: http_error,
                                       Exception: server_error},
                   middleware=[Middleware(SecurityHeaders),
                               Middleware(BodyLimit, limit=settings.max_body_bytes, refuse=body_too_large)],
                   routes=[Mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")])
    rt = app.route
    gate = Gate(list(settings.access_tokens), app.secret_key)
    gateway = OpenAIGateway(settings, webhook_target=app, http_client=http_client)
    queue_limits = QueueLimits(settings.queue_rate, settings.rate_limit_storage_url, settings.max_running_per_owner)
    failed_signins = RateLimit(FAILED_SIGNINS_RATE, settings.rate_limit_storage_url, "failed sign-ins")
    state = {"service": None, "failed_at": 0.0}
    ready = asyncio.Lock()

    async def service() -> TaskService:
        """The task service, its store opened on first use (so it works under any server, and on Vercel).
        After a failure to open it, requests fail fast for a few seconds instead of queueing behind retries."""
        if state["service"] is None:
            async with ready:
                if time.monotonic() - state["failed_at"] < STORE_RETRY_SECONDS:
                    raise StoreUnavailable("the database was unreachable moments ago")
                if state["service"] is None:
                    try: store = await store_for(settings.database_url).open()
                    except StoreUnavailable:
                        state["failed_at"] = time.monotonic()
                        raise
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

    async def owned_task(task_id: str, owner: str) -> dict | None:
        "The task, refreshed if due, if this owner may see it: with the gate on, only its owner may."
        if not TASK_ID.fullmatch(task_id): return None
        svc = await service()
        task = await svc.store.get(task_id)
        if task is None or (gate.on and task["owner"] != owner): return None
        return await svc.refreshed_quietly(task)

    @rt("/", methods=["get"])
    async def index(auth):
        svc = await service()
        tasks = await svc.read_many(await svc.store.list_for_owner(auth, RECENT_TASKS))
        return ui.page(tasks, settings.demo, settings.allowed_models, settings.max_prompt_chars, exposed=exposed,
                       signed_in=gate.on)

    @rt("/signin", methods=["get"])
    async def signin_page():
        return ui.signin_page() if gate.on else RedirectResponse("/", 303)

    @rt("/signin", methods=["post"])
    async def signin(request: Request, session, token: str = ""):
        if not gate.on or gate.sign_in(session, token.strip()): return RedirectResponse("/", 303)
        try: await failed_signins.hit(request.client.host if request.client else "unknown", "Too many wrong tokens")
        except Limited as exc:
            return HTMLResponse(to_xml(ui.signin_page(exc.message)), status_code=429, headers=retry_header(exc.retry_after))
        return HTMLResponse(to_xml(ui.signin_page("That token is not one of APP_ACCESS_TOKENS.")), status_code=401)

    @rt("/signout", methods=["post"])
    async def signout(session):
        session.clear()
        return RedirectResponse("/signin" if gate.on else "/", 303)

    @rt("/api/queue", methods=["post"])
    async def queue(request: Request, auth):
        try: args = queue_request(await parse_fields(request), request.headers, settings)
        except BadRequest as exc: return error_response(request, exc.status, exc.message, exc.kind)
        svc = await service()
        try: await queue_limits.admit(gate.quota_key(request, auth), await svc.store.count_running(auth))
        except Limited as exc: return error_response(request, 429, exc.message, "rate_limited", retry_header(exc.retry_after))
        try: task, _ = await svc.queue(auth, **args)
        except IdempotencyConflict as exc: return error_response(request, 409, str(exc), "idempotency_conflict")
        except QueueRefused as refused:
            exc = refused.error
            if not wants_html(request): return json_error(exc.status, exc.message, exc.kind, retry_header(exc.retry_after))
            return fragment((ui.task_card(refused.task), fresh_form()), exc.status, retry_header(exc.retry_after))
        if wants_html(request): return fragment((ui.task_card(task), fresh_form(), ui.form_error(oob=True)), 202)
        return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/status/{task['id']}"})

    async def status(request: Request):
        """The task, polled every 2 s by each open card: a plain Starlette route, because FastHTML's per-request
        wrapper (body parsing, signature inspection, a second call for `before`) tripled its cost (bench/)."""
        owner = caller(request)
        if isinstance(owner, Response): return owner
        task_id = request.path_params["task_id"]
        task = await owned_task(task_id, owner)
        if task is None: return not_found(request, task_id)
        return HTMLResponse(ui.card_html(task)) if wants_html(request) else JSONResponse(task_json(task))

    app.router.routes.insert(0, Route("/api/status/{task_id}", status, methods=["GET"]))  # the most requested route

    @rt("/api/cancel/{task_id}", methods=["post"])
    async def cancel(request: Request, task_id: str, auth):
        task = await owned_task(task_id, auth)
        if task is None: return not_found(request, task_id)
        try: task = await (await service()).cancel(task)
        except OpenAIError as exc: return error_response(request, exc.status, exc.message, exc.kind, retry_header(exc.retry_after))
        return HTMLResponse(ui.card_html(task)) if wants_html(request) else JSONResponse(task_json(task))

    @rt("/api/tasks", methods=["get"])
    async def tasks(auth, cursor: str = "", limit: str = "20"):
        try: before_cursor = decode_cursor(cursor) if cursor else None
        except ValueError: return json_error(400, "Malformed cursor: pass back next_cursor as it was given", "invalid_cursor")
        if not limit.isdigit(): return json_error(400, "limit must be a whole number from 1 to 100", "invalid_limit")
        limit = max(1, min(int(limit), 100))
        page = await (await service()).store.list_for_owner(auth, limit + 1, before_cursor)
        more = len(page) > limit
        return JSONResponse({"tasks": [task_json(t) for t in page[:limit]],
                             "next_cursor": encode_cursor(page[limit - 1]) if more else None})

    async def webhook(request: Request):
        "OpenAI's webhook: a plain Starlette route, so nothing parses the body before it is verified (its signature is its guard)."
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
        except WebhookBusy:
            return json_error(503, "This event is being handled by another delivery: send it again later", "webhook_busy")
        log.info("webhook %s (%s, %s): %s", webhook_id, event_type, response_id, outcome)
        return JSONResponse({"received": True, "outcome": outcome})

    app.router.routes.append(Route("/api/webhook", webhook, methods=["POST"]))

    @rt("/health", methods=["get"])
    async def health():
        body = {"status": "ok", "mode": settings.mode, "store": store_kind(settings.database_url),
                "webhook_secret": bool(settings.effective_webhook_secret)}
        try: await (await service()).store.ping()
        except StoreUnavailable: return JSONResponse({**body, "status": "unavailable"}, status_code=503)
        return JSONResponse(body)

    return app


app = create_app()

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(appname="app", app="app", host=os.environ.get("HOST", "127.0.0.1"), port=app.state.settings.port, reload=False)
