"""The task life cycle: queueing it, learning of its end (webhook or reconcile), cancelling it. No HTTP, no HTML."""
import asyncio
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import asdict, dataclass

from config import Settings
from models import SUMMARY, cost_bound_usd, cost_usd, model_named, tool_params
from openai_client import OpenAIError, OpenAIGateway
from progress import ProgressHub
from results import ResponseState
from store import ORPHAN_GRACE_SECONDS, TERMINAL, SqlTaskStore, new_task_row
from telemetry import TASKS, event

log = logging.getLogger("tasks")
RESPONSE_EVENTS = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")
WEBHOOK_WAIT_STEPS, WEBHOOK_WAIT_STEP_SECONDS = 40, 0.05
TASK_ID = re.compile(r"task_[A-Za-z0-9_-]{16}")
INTERRUPTED_MESSAGE = ("Queueing was interrupted before OpenAI's answer was stored. If OpenAI ran it anyway, its result "
                       "appears here when OpenAI's webhook arrives; if not, queue the prompt again.")
NOT_FOUND_MESSAGE = "OpenAI no longer knows this response (404): it may have been deleted or have expired."


class WebhookBusy(Exception):
    "Another delivery of this webhook is still being handled."


class IdempotencyConflict(Exception):
    "An idempotency key reused for a different request."


class QueueRefused(Exception):
    "OpenAI refused to queue the prompt; `task` is the task as stored (failed), `error` the reason."

    def __init__(self, task: dict, error: OpenAIError):
        super().__init__(error.message)
        self.task, self.error = task, error


@dataclass(frozen=True)
class QueueRequest:
    "What a person asks for when queueing (checked by responses.queue_request)."
    prompt: str
    model: str
    reasoning_effort: str | None = None
    tools: tuple[str, ...] = ()
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    idempotency_key: str | None = None

    @property
    def digest(self) -> str:
        "What an idempotency key stands for: everything asked but the key."
        asked = {**asdict(self), "idempotency_key": None}
        return hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:32]


def new_task_id() -> str: return "task_" + secrets.token_urlsafe(12)


def is_terminal(task: dict) -> bool: return task["status"] in TERMINAL


class TaskService:
    """The task life cycle over a store and an OpenAI gateway, with the settings that shape requests."""

    def __init__(self, store: SqlTaskStore, gateway: OpenAIGateway, settings: Settings):
        self.store, self.gateway, self.settings = store, gateway, settings
        self.reconcile_seconds = settings.reconcile_seconds
        self.progress = ProgressHub(store, gateway, self._record, relays_outlive_requests=not settings.on_vercel)

    def create_request(self, task: dict) -> dict:
        "The Responses API create parameters for a task: its model's tools, effort and summary, its limits, its id."
        model = model_named(task["model"])
        request = {"model": task["model"], "input": task["prompt"], "metadata": {"task_id": task["id"]}}
        reasoning = {**({"effort": task["reasoning_effort"]} if task["reasoning_effort"] else {}),
                     **({"summary": SUMMARY} if model.summaries else {})}
        tools = tool_params(model, task["tools"] or [], self.settings.vector_store_ids, self.settings.mcp_servers)
        optional = {"reasoning": reasoning, "tools": tools, "max_output_tokens": task["max_output_tokens"],
                    "max_tool_calls": task["max_tool_calls"]}
        return {**request, **{name: value for name, value in optional.items() if value}}

    async def _record(self, task: dict, state: ResponseState):
        "Record what OpenAI says of the task's response; a move forward is counted and logged."
        cost = cost_usd(model_named(task["model"]), state.usage, state.web_searches) if state.usage else None
        if await self.store.advance(task["id"], state.status, **state.result(cost)): self._moved(task, state.status, cost)

    async def _fail(self, task: dict, message: str):
        "End a task as failed for a reason of the app's own (OpenAI refused, the response is gone, queueing broke)."
        if await self.store.advance(task["id"], "failed", error=message): self._moved(task, "failed")

    def _moved(self, task: dict, status: str, cost: float | None = None):
        if status in TERMINAL: TASKS.labels(task["model"], status).inc()
        prompt = {"prompt": task["prompt"]} if self.settings.log_prompts else {}
        event(log, "task", task_id=task["id"], response_id=task.get("response_id"), model=task["model"], status=status,
              cost_usd=cost, **prompt)

    async def queue(self, owner: str, account: str, request: QueueRequest, max_running: int) -> tuple[dict, bool]:
        """Store the task (if the account's running cap allows: store.RunningCapReached if not), then create its
        background response, whose stream this process then records (where work may outlive a request).
        Returns (task, created).

        A known idempotency key returns the task it made and creates nothing (IdempotencyConflict if it was asked
        something else). If OpenAI refuses, the task is kept as failed with the reason (its key freed, so a retry
        may use it again), and QueueRefused is raised."""
        reserved = cost_bound_usd(model_named(request.model), request.prompt, list(request.tools), request.max_output_tokens,
                                  request.max_tool_calls)
        row = new_task_row(id=new_task_id(), owner=owner, account=account, request_digest=request.digest,
                           reserved_usd=reserved, **{**asdict(request), "tools": list(request.tools)})
        task, created = await self.store.create(row, max_running)
        if not created:
            if task["request_digest"] not in (None, request.digest):
                raise IdempotencyConflict("This Idempotency-Key was already used for a different request: use a new key")
            return task, False
        TASKS.labels(task["model"], "queued").inc()
        self._moved(task, "queued")
        try: state, stream = await self.gateway.create(self.create_request(task))
        except BaseException as exc:
            error = exc if isinstance(exc, OpenAIError) else None
            await self._fail(task, error.message if error else INTERRUPTED_MESSAGE)
            await self.store.forget_idempotency_key(task["id"])
            if error is None: raise
            raise QueueRefused(await self.store.get(task["id"]), error) from None
        await self.store.attach_response(task["id"], state.id)
        await self._record(task, state)
        task = await self.store.get(task["id"])
        if self.progress.relays_outlive_requests: await self.progress.relay(task, stream)
        else: await stream.close()
        return task, True

    async def read(self, task_id: str, owner: str | None = None) -> dict | None:
        "The task, refreshed if due; None if it is unknown or, with `owner` given, not that owner's."
        if not TASK_ID.fullmatch(task_id): return None
        task = await self.store.get(task_id)
        if task is None or (owner is not None and task["owner"] != owner): return None
        return await self.refreshed_quietly(task)

    async def refreshed(self, task: dict) -> dict:
        """The task, first refreshed from OpenAI if it is running and was last checked over an interval ago.
        A task whose queueing was interrupted before its response id was stored fails saying so once the create
        cannot be running any more (OpenAI's webhook still attaches its response if OpenAI made one: `_adopt`)."""
        if not task["response_id"] and not is_terminal(task) and task["created_at"] < time.time() - ORPHAN_GRACE_SECONDS:
            await self._fail(task, INTERRUPTED_MESSAGE)
            return await self.store.get(task["id"])
        if self._check_due(task) and await self.store.claim_check(task["id"], self.reconcile_seconds):
            await self.refresh(task)
            return await self.store.get(task["id"])
        return task

    def _check_due(self, task: dict) -> bool:
        "Worth trying to claim a check (the claim itself decides, atomically, in the store)."
        if is_terminal(task) or not task["response_id"]: return False
        return task["checked_at"] is None or task["checked_at"] <= time.time() - self.reconcile_seconds

    async def refresh(self, task: dict, for_webhook: bool = False):
        "Ask OpenAI for the response's state and record it; a 404 ends the task as failed."
        try:
            state = await self.gateway.retrieve(task["response_id"], for_webhook=for_webhook)
        except OpenAIError as exc:
            if not exc.not_found: raise
            await self._fail(task, NOT_FOUND_MESSAGE)
            return
        await self._record(task, state)

    async def read_many(self, tasks: list[dict]) -> list[dict]:
        "Tasks as listed, each refreshed as `refreshed_quietly` does."
        return list(await asyncio.gather(*map(self.refreshed_quietly, tasks)))

    async def refreshed_quietly(self, task: dict) -> dict:
        "Like `refreshed`, but a failed check with OpenAI leaves the task as it was (the next poll retries)."
        try: return await self.refreshed(task)
        except OpenAIError as exc:
            log.warning("reconcile of %s failed: %s", task["id"], exc.message)
            return await self.store.get(task["id"])

    async def handle_webhook(self, webhook_id: str, event_type: str, response_id: str | None) -> str:
        """Apply a verified event once; returns what was done. A copy that arrives while the first is being
        handled waits for it. Raises OpenAIError, or WebhookBusy, when OpenAI should deliver it again later."""
        if event_type not in RESPONSE_EVENTS or not response_id: return "ignored"
        task = await self.store.get_by_response(response_id)
        if task is not None and is_terminal(task): return "already final"
        claim = await self.store.claim_webhook(webhook_id)
        for _ in range(WEBHOOK_WAIT_STEPS):
            if claim != "busy": break
            await asyncio.sleep(WEBHOOK_WAIT_STEP_SECONDS)
            claim = await self.store.claim_webhook(webhook_id)
        if claim == "done": return "duplicate"
        if claim == "busy": raise WebhookBusy(webhook_id)
        try: outcome = await (self.refresh(task, for_webhook=True) if task else self._adopt(response_id))
        except BaseException:
            await self.store.release_webhook(webhook_id)
            raise
        if outcome == "unknown response": await self.store.release_webhook(webhook_id)
        else: await self.store.finish_webhook(webhook_id)
        return outcome or "updated"

    async def _adopt(self, response_id: str) -> str:
        """A response no task knows by id: if its `metadata.task_id` names a task whose queueing was interrupted
        before the id was stored, attach it there (so a paid-for answer is not lost)."""
        try: state = await self.gateway.retrieve(response_id, for_webhook=True)
        except OpenAIError as exc:
            if exc.not_found: return "unknown response"
            raise
        task = await self.store.get(state.task_id) if state.task_id and TASK_ID.fullmatch(state.task_id) else None
        if task is None or not await self.store.adopt(task["id"], response_id): return "unknown response"
        await self._record(task, state)
        log.info("response %s attached to task %s, whose queueing was interrupted", response_id, task["id"])
        return "adopted"

    async def cancel(self, task: dict) -> dict:
        "Ask OpenAI to cancel; the task ends as whatever OpenAI then says it is (a finished response stays finished)."
        if not is_terminal(task) and task["response_id"]:
            try: await self._record(task, await self.gateway.cancel(task["response_id"]))
            except OpenAIError as exc:
                if exc.status not in (400, 502): raise
                await self.refresh(task)
        return await self.store.get(task["id"])
