"""The `/api/*` handlers and `/health`: read the request, call the task service, answer per the contract (DESIGN.md).

Plain Starlette handlers: nothing parses a body before the handler asks (the webhook's raw body is its proof),
and the most requested route, the status a running card polls, pays for no per-request wrapper.
"""
import logging
import re

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import ui
from access import with_owner
from models import cost_bound_usd, model_named
from openai_client import OpenAIError, WebhookNotConfigured, WebhookRejected
from responses import (BadRequest, EventStreamResponse, decode_cursor, encode_cursor, error_response, fragment, json_error, not_found,
                       parse_fields, progress_json, queue_request, retry_header, task_answer, task_json, wants_html)
from render import markdown_export
from services import Services
from store import TERMINAL, StoreUnavailable
from telemetry import WEBHOOKS, event, metrics_text
from tasks import IdempotencyConflict, QueueRefused, WebhookBusy

log = logging.getLogger("api")
TASKS_PAGE_LIMIT = 100
KEEPALIVE_SECONDS = 15.0


async def owned_task(request: Request, owner: str) -> dict | None:
    "The task of the path, refreshed if due, if this caller may see it."
    svc = Services.of(request)
    return await svc.tasks.read(request.path_params["task_id"], owner if svc.gate.on else None)


def fresh_form(svc: Services, chosen_model: str):
    return ui.prompt_form(svc.settings, chosen_model, hx_swap_oob="true")


@with_owner()
async def queue(request: Request, owner: str) -> Response:
    "Check the request, then the caller's rate, budget and running cap (429 on any), then queue it with OpenAI."
    svc = Services.of(request)
    try: asked = queue_request(await parse_fields(request), request.headers, svc.settings)
    except BadRequest as exc: return error_response(request, exc.status, exc.message, exc.kind)
    account = svc.gate.account(request, owner)
    await svc.queue_rate.hit(account, "Too many prompts queued")
    await svc.budgets.admit(svc.store, account, cost_bound_usd(model_named(asked.model), asked.prompt, list(asked.tools),
                                                               asked.max_output_tokens, asked.max_tool_calls))
    try: task, _ = await svc.tasks.queue(owner, account, asked, svc.settings.max_running_per_owner)
    except IdempotencyConflict as exc: return error_response(request, 409, str(exc), "idempotency_conflict")
    except QueueRefused as refused:
        exc = refused.error
        if not wants_html(request): return json_error(exc.status, exc.message, exc.kind, retry_header(exc.retry_after))
        return fragment((ui.task_card(refused.task), fresh_form(svc, asked.model)), exc.status, retry_header(exc.retry_after))
    if wants_html(request):
        card = ui.card(task, await svc.tasks.progress.state_of(task["id"]))
        return fragment((card, fresh_form(svc, asked.model), ui.form_error(oob=True)), 202)
    return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/status/{task['id']}"})


@with_owner()
async def status(request: Request, owner: str) -> Response:
    task = await owned_task(request, owner)
    if task is None: return not_found(request, request.path_params["task_id"])
    running = wants_html(request) and task["status"] not in TERMINAL
    return task_answer(request, task, await Services.of(request).tasks.progress.state_of(task["id"]) if running else None)


@with_owner()
async def events(request: Request, owner: str) -> Response:
    """The task's progress as Server-Sent Events: recorded, then live, from after `Last-Event-ID` (or `?after=`);
    `?format=html` gives the page's fragments instead of JSON. Ends with `done`, or after EVENTS_MAX_SECONDS."""
    after = request.headers.get("last-event-id") or request.query_params.get("after") or "-1"
    if not re.fullmatch(r"-1|[0-9]{1,15}", after.strip()):
        return json_error(400, "Last-Event-ID (or ?after=) must be the id of an event of this stream", "invalid_event_id")
    task = await owned_task(request, owner)
    if task is None: return not_found(request, request.path_params["task_id"])
    format = ui.progress_html if request.query_params.get("format") == "html" else progress_json
    svc = Services.of(request)
    quiet_seconds = min(KEEPALIVE_SECONDS, svc.settings.stream_seconds)

    async def watch(write):
        await write(b"retry: 2000\n\n")
        await svc.tasks.progress.watch(task, int(after), format, write, quiet_seconds, svc.settings.stream_seconds)
    return EventStreamResponse(watch, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@with_owner()
async def export(request: Request, owner: str) -> Response:
    "The task as a Markdown file: prompt, answer with numbered citations, numbered sources."
    task = await owned_task(request, owner)
    if task is None: return not_found(request, request.path_params["task_id"])
    return Response(markdown_export(task), media_type="text/markdown; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{task["id"]}.md"'})


@with_owner()
async def cancel(request: Request, owner: str) -> Response:
    task = await owned_task(request, owner)
    if task is None: return not_found(request, request.path_params["task_id"])
    try: task = await Services.of(request).tasks.cancel(task)
    except OpenAIError as exc: return error_response(request, exc.status, exc.message, exc.kind, retry_header(exc.retry_after))
    return task_answer(request, task)


@with_owner()
async def list_tasks(request: Request, owner: str) -> Response:
    cursor, limit = request.query_params.get("cursor", ""), request.query_params.get("limit", "20")
    try: before = decode_cursor(cursor) if cursor else None
    except ValueError: return json_error(400, "Malformed cursor: pass back next_cursor as it was given", "invalid_cursor")
    if not re.fullmatch(r"[0-9]{1,3}", limit) or not 1 <= int(limit) <= TASKS_PAGE_LIMIT:
        return json_error(400, f"limit must be a whole number from 1 to {TASKS_PAGE_LIMIT}", "invalid_limit")
    limit = int(limit)
    page = await Services.of(request).store.list_for_owner(owner, limit + 1, before)
    more = len(page) > limit
    return JSONResponse({"tasks": [task_json(t) for t in page[:limit]],
                         "next_cursor": encode_cursor(page[limit - 1]) if more else None})


async def webhook(request: Request) -> Response:
    "OpenAI's webhook: verified on the raw body before anything parses it (its signature is its guard)."
    svc = Services.of(request)
    try: webhook_id, event_type, response_id = svc.gateway.unwrap(await request.body(), request.headers)
    except WebhookRejected as exc:
        WEBHOOKS.labels("unverified", "refused").inc()
        log.warning("webhook refused: %s", exc)
        return json_error(400, f"Webhook refused: {exc}", "invalid_webhook")
    except WebhookNotConfigured as exc:
        WEBHOOKS.labels("unverified", "not_configured").inc()
        log.error("%s", exc)
        return json_error(503, str(exc), "webhook_not_configured")
    try: outcome = await svc.tasks.handle_webhook(webhook_id, event_type, response_id)
    except OpenAIError as exc:
        WEBHOOKS.labels(event_type, "retry_later").inc()
        log.warning("webhook %s not handled, OpenAI will retry: %s", webhook_id, exc.message)
        return json_error(503, f"Could not check the response with OpenAI: {exc.message}", exc.kind)
    except WebhookBusy:
        WEBHOOKS.labels(event_type, "busy").inc()
        return json_error(503, "This event is being handled by another delivery: send it again later", "webhook_busy")
    WEBHOOKS.labels(event_type, outcome.replace(" ", "_")).inc()
    event(log, "webhook", webhook_id=webhook_id, type=event_type, response_id=response_id, outcome=outcome)
    return JSONResponse({"received": True, "outcome": outcome})


async def metrics(request: Request) -> Response:
    "Prometheus text format; where APP_ACCESS_TOKENS are set, it needs one as a Bearer token."
    svc = Services.of(request)
    if svc.gate.on: await svc.gate.token_owner(request)
    return Response(metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")


async def health(request: Request) -> Response:
    "Liveness and configuration; 503 naming each configured dependency that cannot be reached."
    svc = Services.of(request)
    settings = svc.settings
    body = {"status": "ok", "mode": settings.mode, "store": settings.store_kind,
            "webhook_secret": bool(settings.effective_webhook_secret)}
    broken = []
    try: await svc.store.ping()
    except StoreUnavailable: broken.append("store")
    if svc.queue_rate.shared and not await svc.queue_rate.reachable(): broken.append("rate_limit_storage")
    if broken: return JSONResponse({**body, "status": "unavailable", "unavailable": broken}, status_code=503)
    return JSONResponse(body)
