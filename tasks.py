"""What happens to a task: queueing it, learning of its end (webhook or reconcile), cancelling it."""
import asyncio
import logging
import re
import secrets
import time

from openai_client import OpenAIError, OpenAIGateway, ResponseState
from store import TERMINAL, SqlTaskStore, new_task_row

log = logging.getLogger("tasks")
RESPONSE_EVENTS = ("response.completed", "response.failed", "response.cancelled", "response.incomplete")
WEBHOOK_WAIT_STEPS, WEBHOOK_WAIT_STEP_SECONDS = 40, 0.05
TASK_ID = re.compile(r"task_[A-Za-z0-9_-]{16}")
ORPHAN_SECONDS = 120
INTERRUPTED_MESSAGE = "Queueing was interrupted before OpenAI answered: queue the prompt again."
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


def new_task_id() -> str: return "task_" + secrets.token_urlsafe(12)


def is_terminal(task: dict) -> bool: return task["status"] in TERMINAL


class TaskService:
    """The task life cycle over a store and an OpenAI gateway.

    `gone_on_404`: whether a 404 from OpenAI means the response is gone (it does for OpenAI; in demo mode
    another process's emulator may be the one that knows it, and its webhook will come)."""

    def __init__(self, store: SqlTaskStore, gateway: OpenAIGateway, reconcile_seconds: float, gone_on_404: bool = True):
        self.store, self.gateway, self.reconcile_seconds, self.gone_on_404 = store, gateway, reconcile_seconds, gone_on_404

    async def _record(self, task_id: str, state: ResponseState):
        await self.store.advance(task_id, state.status, state.output_text, state.error, state.usage)

    async def queue(self, owner: str, prompt: str, model: str, reasoning_effort: str | None = None,
                    idempotency_key: str | None = None) -> tuple[dict, bool]:
        """Store the task, then create its background response. Returns (task, created).

        A known idempotency key returns the task it made, and creates nothing. If OpenAI refuses,
        the task is kept as failed with the reason (its key freed, so a retry may use it again),
        and QueueRefused is raised.
        """
        row = new_task_row(id=new_task_id(), owner=owner, prompt=prompt, model=model,
                           reasoning_effort=reasoning_effort, idempotency_key=idempotency_key)
        task, created = await self.store.create(row)
        if not created:
            if (task["prompt"], task["model"]) != (prompt, model):
                raise IdempotencyConflict("This Idempotency-Key was already used for a different prompt: use a new key")
            return task, False
        try:
            state = await self.gateway.create(prompt, model, reasoning_effort, task_id=task["id"])
        except BaseException as exc:
            error = exc if isinstance(exc, OpenAIError) else None
            await self.store.advance(task["id"], "failed", error=error.message if error else INTERRUPTED_MESSAGE)
            await self.store.forget_idempotency_key(task["id"])
            if error is None: raise
            raise QueueRefused(await self.store.get(task["id"]), error) from None
        await self.store.attach_response(task["id"], state.id)
        await self._record(task["id"], state)
        return await self.store.get(task["id"]), True

    async def read(self, task_id: str, owner: str | None = None) -> dict | None:
        "The task, refreshed if due; None if it is unknown or, with `owner` given, not that owner's."
        if not TASK_ID.fullmatch(task_id): return None
        task = await self.store.get(task_id)
        if task is None or (owner is not None and task["owner"] != owner): return None
        return await self.refreshed_quietly(task)

    async def refreshed(self, task: dict) -> dict:
        "The task, first refreshed from OpenAI if it is running and was last checked over an interval ago."
        if not task["response_id"] and not is_terminal(task) and task["created_at"] < time.time() - ORPHAN_SECONDS:
            await self.store.advance(task["id"], "failed", error=INTERRUPTED_MESSAGE)
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
        "Ask OpenAI for the response's state and record it; a 404 ends the task as failed where `gone_on_404`."
        try:
            state = await self.gateway.retrieve(task["response_id"], for_webhook=for_webhook)
        except OpenAIError as exc:
            if not exc.not_found: raise
            if self.gone_on_404: await self.store.advance(task["id"], "failed", error=NOT_FOUND_MESSAGE)
            return
        await self._record(task["id"], state)

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
        if task is None: return "unknown response"
        if is_terminal(task): return "already final"
        claim = await self.store.claim_webhook(webhook_id)
        for _ in range(WEBHOOK_WAIT_STEPS):
            if claim != "busy": break
            await asyncio.sleep(WEBHOOK_WAIT_STEP_SECONDS)
            claim = await self.store.claim_webhook(webhook_id)
        if claim == "done": return "duplicate"
        if claim == "busy": raise WebhookBusy(webhook_id)
        try: await self.refresh(task, for_webhook=True)
        except BaseException:
            await self.store.release_webhook(webhook_id)
            raise
        await self.store.finish_webhook(webhook_id)
        return "updated"

    async def cancel(self, task: dict) -> dict:
        "Ask OpenAI to cancel; the task ends as whatever OpenAI then says it is."
        if not is_terminal(task) and task["response_id"]:
            try:
                await self._record(task["id"], await self.gateway.cancel(task["response_id"]))
            except OpenAIError as exc:
                if exc.status != 502: raise
                await self.refresh(task)
        return await self.store.get(task["id"])
