"""The recorded progress of running tasks and its live relay to viewers.

One relay per task (a lease in the store says whose) reads OpenAI's stream of the response into the store's
progress log: status changes, answer and reasoning-summary text (deltas coalesced, a few writes a second), and
steps (web searches, file searches, tool calls). Each recorded event's id is the sequence number of the last
OpenAI event it holds, so a relay that dies is resumed by the next one from `starting_after` that id: nothing
lost, nothing doubled. One follower per task per process reads the log (woken by a relay in this process, or
polling one elsewhere) and fans each batch out to its viewers, formatted once per batch for all of them.
The log is a bonus for viewers: the task's end is still recorded by the webhook and by reconcile-on-read.
"""
import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from openai_client import OpenAIError, OpenAIGateway
from results import step_of, state_of
from store import TERMINAL, SqlTaskStore, StoreUnavailable
from telemetry import RELAYS

log = logging.getLogger("progress")
FLUSH_SECONDS = 0.2
LEASE_SECONDS = 6.0
FOLLOW_POLL_SECONDS = 0.5
PUBLISH_GAP_SECONDS = 0.25
MAX_EVENTS_PER_TASK = 5_000
RESUME_ATTEMPTS = 5
KEPT_STATES = 1_000
STATUS_EVENTS = {f"response.{s}" for s in ("created", "queued", "in_progress", *TERMINAL)}


@dataclass
class ProgressEvent:
    seq: int
    kind: str
    data: dict


def sse(kind: str, data: str, event_id: int) -> str:
    "One Server-Sent Event (each line of `data` its own `data:` line)."
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"id: {event_id}\nevent: {kind}\n{lines}\n"


def decoded(row: dict) -> ProgressEvent: return ProgressEvent(row["seq"], row["kind"], json.loads(row["data"]))


@dataclass
class ProgressState:
    "What the events of a task add up to: its status, answer and summary so far, and its steps."
    status: str = "queued"
    text: str = ""
    summary: str = ""
    steps: list[dict] = field(default_factory=list)
    last: int = -1

    def apply(self, events: list[ProgressEvent]):
        for event in events:
            if event.kind == "status": self.status = event.data["status"]
            elif event.kind == "output_text.delta": self.text += event.data["delta"]
            elif event.kind == "reasoning_summary.delta": self.summary += event.data["delta"]
            elif event.kind == "step": self.steps.append(event.data)
            self.last = max(self.last, event.seq)


class Recorder:
    "Turns OpenAI's stream events into progress events, merging consecutive deltas of one kind into one."

    def __init__(self, after: int = -1):
        self.pending: list[ProgressEvent] = []
        self.seq, self.summary_started = after, False

    def add(self, event):
        "Take one stream event; returns the response's state when the event moves it (to in_progress, or to its end)."
        kind, seq = getattr(event, "type", ""), getattr(event, "sequence_number", None)
        if not isinstance(seq, int) or seq <= self.seq: return None
        self.seq = seq
        if kind == "response.output_text.delta": self._delta("output_text.delta", event.delta, seq)
        elif kind == "response.reasoning_summary_text.delta":
            self._delta("reasoning_summary.delta", event.delta, seq)
            self.summary_started = True
        elif kind == "response.reasoning_summary_part.added" and self.summary_started:
            self._delta("reasoning_summary.delta", "\n\n", seq)
        elif kind == "response.output_item.done" and (step := step_of(event.item.model_dump(exclude_none=True))):
            self.pending.append(ProgressEvent(seq, "step", step))
        elif kind in STATUS_EVENTS:
            self.pending.append(ProgressEvent(seq, "status", {"status": event.response.status}))
            if event.response.status != "queued": return state_of(event.response.model_dump(exclude_none=True))
        return None

    def _delta(self, kind: str, text: str, seq: int):
        if self.pending and self.pending[-1].kind == kind:
            self.pending[-1].data["delta"] += text
            self.pending[-1].seq = seq
        else: self.pending.append(ProgressEvent(seq, kind, {"delta": text}))

    def take(self) -> list[ProgressEvent]:
        taken, self.pending = self.pending, []
        return taken


class Relay:
    "Reads one task's OpenAI stream into the log while it holds the task's lease."

    def __init__(self, hub: "ProgressHub", task: dict, stream=None):
        self.hub, self.task, self.stream = hub, task, stream
        self.recorder, self.recorded = Recorder(), 0

    async def run(self):
        task_id = self.task["id"]
        self.recorded, self.recorder.seq = await self.hub.store.progress_extent(task_id)
        flusher = asyncio.create_task(self._flush_every())
        try: await self._read()
        except OpenAIError as exc: log.info("progress stream of %s stopped: %s", task_id, exc.message)
        except StoreUnavailable as exc: log.warning("progress of %s not recorded: %s", task_id, exc)
        finally:
            flusher.cancel()
            await self._flush()
            await self.hub.store.release_relay(task_id, self.hub.holder)

    async def _read(self):
        "Read until the response ends; a stream OpenAI closes early is resumed (after a pause if it brought nothing)."
        fruitless = 0
        while fruitless < RESUME_ATTEMPTS:
            stream = self.stream or await self.hub.gateway.resume(self.task["response_id"], self.recorder.seq)
            self.stream, before = None, self.recorder.seq
            async for event in self.hub.gateway.events(stream):
                if (moved := self.recorder.add(event)) is None: continue
                if moved.status not in TERMINAL:
                    await self.hub.record(self.task, moved)
                    continue
                await self._flush()
                await self.hub.record(self.task, moved)
                self.hub.wake(self.task["id"])
                return
            current = await self.hub.store.get(self.task["id"])
            if current is None or current["status"] in TERMINAL: return
            fruitless = 0 if self.recorder.seq > before else fruitless + 1
            await asyncio.sleep(min(2 ** fruitless - 1, 10))

    async def _flush(self):
        events = self.recorder.take()
        if self.recorded >= MAX_EVENTS_PER_TASK: events = [e for e in events if e.kind in ("status", "step")]
        if not events: return
        await self.hub.store.append_progress(self.task["id"], [(e.seq, e.kind, json.dumps(e.data)) for e in events])
        self.recorded += len(events)
        self.hub.wake(self.task["id"])

    async def _flush_every(self):
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self._flush()
            if time.monotonic() - renewed > LEASE_SECONDS / 3:
                renewed = time.monotonic()
                if not await self.hub.store.claim_relay(self.task["id"], self.hub.holder, LEASE_SECONDS):
                    log.info("the relay of %s stops: the task ended, or another process holds its lease", self.task["id"])
                    self.hub.relays.get(self.task["id"], asyncio.current_task()).cancel()


class Follower:
    """Reads one task's log for this process's viewers and hands each of them every new batch, formatted once per
    format in use (`format(events, state, task, ended)` -> bytes); ends once the task has, and stops when its last
    viewer leaves."""

    def __init__(self, hub: "ProgressHub", task_id: str):
        self.hub, self.task_id = hub, task_id
        self.viewers: set["Viewer"] = set()
        self.state, self.woken = ProgressState(), asyncio.Event()
        self.started = asyncio.get_running_loop().create_future()

    async def run(self):
        "Follow the log while anyone watches; meanwhile keep a relay going (here, if no other process holds the lease)."
        relay, claimed_at = None, 0.0
        try:
            self.state.apply([decoded(r) for r in await self.hub.store.progress_after(self.task_id, -1)])
            self.started.set_result(None)
            while self.viewers:
                if time.monotonic() - claimed_at > LEASE_SECONDS / 2 and (task := await self.hub.store.get(self.task_id)):
                    relay, claimed_at = await self.hub.relay(task) or relay, time.monotonic()
                try:
                    async with asyncio.timeout(FOLLOW_POLL_SECONDS): await self.woken.wait()
                except TimeoutError: pass
                self.woken.clear()
                if await self._publish(): return
                await asyncio.sleep(PUBLISH_GAP_SECONDS)
        except Exception as exc:
            if not self.started.done(): self.started.set_exception(exc)
            for viewer in self.viewers: viewer.inbox.put_nowait(Batch(self.state.last, b"", True))
            raise
        finally:
            self.hub.followers.pop(self.task_id, None)
            if relay is not None and not self.hub.relays_outlive_requests: relay.cancel()

    async def _publish(self) -> bool:
        """Hand the new events to every viewer; True once the task has ended (and `done` was handed). Nothing is
        awaited between moving `state.last` and handing the batch, so a batch is wholly before or after it."""
        task = await self.hub.store.get(self.task_id)
        if task is None:
            for viewer in self.viewers: viewer.inbox.put_nowait(Batch(self.state.last, b"", True))
            return True
        ended = task["status"] in TERMINAL
        events = [decoded(r) for r in await self.hub.store.progress_after(self.task_id, self.state.last)]
        self.state.apply(events)
        if events or ended:
            formatted = {}
            for viewer in self.viewers:
                if viewer.format not in formatted: formatted[viewer.format] = viewer.format(events, self.state, task, ended)
                viewer.inbox.put_nowait(Batch(self.state.last, formatted[viewer.format], ended))
        return ended


@dataclass
class Batch:
    last: int
    chunk: bytes
    ended: bool


@dataclass(eq=False)
class Viewer:
    format: object
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)


class ProgressHub:
    """This process's relays and followers. `record(task, state)` records a final state the stream brought;
    `relays_outlive_requests`: False on Vercel, where no work may run after a response (a relay then lives only
    as long as the viewer's request that started it; the next request takes over)."""

    def __init__(self, store: SqlTaskStore, gateway: OpenAIGateway, record, relays_outlive_requests: bool = True):
        self.store, self.gateway, self.record = store, gateway, record
        self.relays_outlive_requests = relays_outlive_requests
        self.holder = "relay_" + secrets.token_hex(8)
        self.relays: dict[str, asyncio.Task] = {}
        self.followers: dict[str, Follower] = {}
        self.states: OrderedDict[str, ProgressState] = OrderedDict()

    async def close(self):
        "Stop this process's relays (each records what it read first) and followers."
        running = [*self.relays.values(), *(f.task for f in self.followers.values())]
        for task in running: task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    def wake(self, task_id: str):
        if follower := self.followers.get(task_id): follower.woken.set()

    async def relay(self, task: dict, stream=None) -> asyncio.Task | None:
        "Start reading the task's stream here if no one else does (the lease decides); the relay's task if started."
        if task["id"] in self.relays or task["status"] in TERMINAL or not task["response_id"]:
            if stream is not None: await stream.close()
            return None
        if not await self.store.claim_relay(task["id"], self.holder, LEASE_SECONDS):
            if stream is not None: await stream.close()
            return None
        RELAYS.labels("at_queueing" if stream is not None else "taking_over").inc()
        relay = asyncio.create_task(Relay(self, task, stream).run())
        self.relays[task["id"]] = relay
        relay.add_done_callback(lambda done: self.relays.pop(task["id"], None))
        return relay

    async def state_of(self, task_id: str) -> ProgressState:
        """What a task's recorded progress adds up to (for a page drawn while it runs): kept per task in this process
        and brought up to date with only the events recorded since."""
        state = self.states.get(task_id) or ProgressState()
        state.apply([decoded(r) for r in await self.store.progress_after(task_id, state.last)])
        self.states[task_id] = state
        self.states.move_to_end(task_id)
        while len(self.states) > KEPT_STATES: self.states.popitem(last=False)
        return state

    async def watch(self, task: dict, after: int, format, quiet_seconds: float):
        """The task's progress for one viewer as formatted chunks: what was recorded after `after`, then what comes,
        ending with `done`; None after `quiet_seconds` without any (for a keep-alive). Its follower starts a relay
        if the task's has died. Nothing stays running for the viewer once it leaves (closes this generator)."""
        viewer = Viewer(format)
        follower = self.followers.get(task["id"])
        if follower is None:
            follower = self.followers[task["id"]] = Follower(self, task["id"])
            follower.task = asyncio.create_task(follower.run())
        follower.viewers.add(viewer)
        try:
            await follower.started
            boundary, ended = follower.state.last, task["status"] in TERMINAL
            recorded = [decoded(r) for r in await self.store.progress_after(task["id"], -1)]
            state = ProgressState()
            state.apply([e for e in recorded if e.seq <= boundary])
            replay = [e for e in recorded if after < e.seq <= boundary]
            if replay or ended: yield format(replay, state, task, ended)
            while not ended:
                try:
                    async with asyncio.timeout(quiet_seconds): batch = await viewer.inbox.get()
                except TimeoutError:
                    yield None
                    continue
                if batch.last > boundary or batch.ended: yield batch.chunk
                ended = batch.ended
        finally: follower.viewers.discard(viewer)
