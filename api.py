"""The `/api/*` handlers and `/health`: read the request, call the task service, answer per the contract (DESIGN.md).

Plain Starlette handlers: nothing parses a body before the handler asks (the webhook's raw body is its proof),
and the most requested route, the status a running card polls, pays for no per-request wrapper.
"""
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import ui
from access import with_owner
from limiter import Limited
from openai_client import OpenAIError, WebhookNotConfigured, WebhookRejected
from responses import (
    BadRequest,
    decode_cursor,
    encode_cursor,
    error_response,
    fragment,
    json_error,
    not_found,
    parse_fields,
    queue_request,
    retry_header,
    task_answer,
    task_json,
    wants_html,
)
from services import Services
from store import StoreUnavailable
from tasks import IdempotencyConflict, QueueRefused, WebhookBusy

log = logging.getLogger("api")
TASKS_PAGE_LIMIT = 100


async def owned_task(request: Request, owner: str) -> dict | None:
    "The task of the path, refreshed if due, if this caller may see it."
    svc = Services.of(request)
    return await svc.tasks.read(request.path_params["task_id"], owner if svc.gate.on else None)


def fresh_form(svc: Services):
    return ui.prompt_form(svc.settings.allowed_models, svc.settings.max_prompt_chars, hx_swap_oob="true")


@with_owner(may_create=True)
async def queue(request: Request, owner: str) -> Response:
    svc = Services.of(request)
    try: args = queue_request(await parse_fields(request), request.headers, svc.settings)
    except BadRequest as exc: return error_response(request, exc.status, exc.message, exc.kind)
    try: await svc.queue_limits.admit(svc.gate.quota_key(request, owner), await svc.store.count_running(owner))
    except Limited as exc: return error_response(request, 429, exc.message, "rate_limited", retry_header(exc.retry_after))
    try: task, _ = await svc.tasks.queue(owner, **args)
    except IdempotencyConflict as exc: return error_response(request, 409, str(exc), "idempotency_conflict")
    except QueueRefused as refused:
        exc = refused.error
        if not wants_html(request): return json_error(exc.status, exc.message, exc.kind, retry_header(exc.retry_after))
        return fragment((ui.task_card(refused.task), fresh_form(svc)), exc.status, retry_header(exc.retry_after))
    if wants_html(request): return fragment((ui.task_card(task), fresh_form(svc), ui.form_error(oob=True)), 202)
    return JSONResponse(task_json(task), status_code=202, headers={"Location": f"/api/status/{task['id']}"})


@with_owner()
async def status(request: Request, owner: str) -> Response:
    task = await owned_task(request, owner)
    if task is None: return not_found(request, request.path_params["task_id"])
    return task_answer(request, task)


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
    if not limit.isdigit(): return json_error(400, "limit must be a whole number from 1 to 100", "invalid_limit")
    limit = max(1, min(int(limit), TASKS_PAGE_LIMIT))
    page = await Services.of(request).store.list_for_owner(owner, limit + 1, before)
    more = len(page) > limit
    return JSONResponse({"tasks": [task_json(t) for t in page[:limit]],
                         "next_cursor": encode_cursor(page[limit - 1]) if more else None})


async def webhook(request: Request) -> Response:
    "OpenAI's webhook: verified on the raw body before anything parses it (its signature is its guard)."
    svc = Services.of(request)
    try: webhook_id, event_type, response_id = svc.gateway.unwrap(await request.body(), request.headers)
    except WebhookRejected as exc:
        log.warning("webhook refused: %s", exc)
        return json_error(400, f"Webhook refused: {exc}", "invalid_webhook")
    except WebhookNotConfigured as exc:
        log.error("%s", exc)
        return json_error(503, str(exc), "webhook_not_configured")
    try: outcome = await svc.tasks.handle_webhook(webhook_id, event_type, response_id)
    except OpenAIError as exc:
        log.warning("webhook %s not handled, OpenAI will retry: %s", webhook_id, exc.message)
        return json_error(503, f"Could not check the response with OpenAI: {exc.message}", exc.kind)
    except WebhookBusy:
        return json_error(503, "This event is being handled by another delivery: send it again later", "webhook_busy")
    log.info("webhook %s (%s, %s): %s", webhook_id, event_type, response_id, outcome)
    return JSONResponse({"received": True, "outcome": outcome})


async def health(request: Request) -> Response:
    svc = Services.of(request)
    settings = svc.settings
    body = {"status": "ok", "mode": settings.mode, "store": settings.store_kind,
            "webhook_secret": bool(settings.effective_webhook_secret)}
    try: await svc.store.ping()
    except StoreUnavailable: return JSONResponse({**body, "status": "unavailable"}, status_code=503)
    return JSONResponse(body)
