"""The recorded progress of running tasks and its live relay to viewers.

One relay per task (a lease in the store says whose) reads OpenAI's stream of the response into the store's
progress log: status changes, answer and reasoning-summary text (deltas coalesced, a few writes a second), and
steps (web searches, file searches, tool calls). Each recorded event's id is the sequence number of the last
OpenAI event it holds, so a relay that dies is resumed by the next one from `starting_after` that id: nothing
lost, nothing doubled. One follower per task per process follows the log: with the relay in this process, which
wakes it as soon as it reads an event, it has the relay flush before each batch and takes what the relay recorded
from the relay; else it polls the log. It writes each batch to its viewers' streams itself, formatted once for all
of them: a viewer has no task of its own to wake. A batch goes at once after a quiet spell, then at most one per
PUBLISH_GAP_SECONDS, each one write per viewer.
The log is a bonus for viewers: the task's end is still recorded by the webhook and by reconcile-on-read.
"""
import asyncio
import json
import logging
import secrets
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from openai_client import OpenAIError, OpenAIGateway
from results import step_of, state_of
from store import TERMINAL, SqlTaskStore, StoreUnavailable
from telemetry import RELAYS

log = logging.getLogger("progress")
FLUSH_SECONDS = 0.2
LEASE_SECONDS = 6.0
FOLLOW_POLL_SECONDS = 0.5
PUBLISH_GAP_SECONDS = 0.8
MAX_EVENTS_PER_TASK = 5_000
RESUME_ATTEMPTS = 5
KEPT_STATES = 1_000
KEEP_ALIVE = b": keep-alive\n\n"
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
        self.put_back_count = 0

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
        if len(self.pending) > self.put_back_count and self.pending[-1].kind == kind:
            self.pending[-1].data["delta"] += text
            self.pending[-1].seq = seq
        else: self.pending.append(ProgressEvent(seq, kind, {"delta": text}))

    def take(self) -> list[ProgressEvent]:
        taken, self.pending, self.put_back_count = self.pending, [], 0
        return taken

    def put_back(self, events: list[ProgressEvent]):
        "Events a flush failed to record go back in front, as they are: they may have been recorded after all."
        self.pending[:0] = events
        self.put_back_count += len(events)


class Relay:
    "Reads one task's OpenAI stream into the log while it holds the task's lease."

    def __init__(self, hub: "ProgressHub", task: dict, stream=None):
        self.hub, self.task, self.stream = hub, task, stream
        self.recorder, self.recorded, self.flushing = Recorder(), 0, asyncio.Lock()
        self.last_recorded = -1
        self.reading: asyncio.Task | None = None

    async def run(self):
        task_id = self.task["id"]
        self.recorded, self.last_recorded = await self.hub.store.progress_extent(task_id)
        self.recorder.seq = self.last_recorded
        flusher = asyncio.create_task(self._flush_every())
        try: await self._read()
        except OpenAIError as exc: log.info("progress stream of %s stopped: %s", task_id, exc.message)
        except StoreUnavailable as exc: log.warning("progress of %s not recorded: %s", task_id, exc)
        finally:
            flusher.cancel()
            await self.flush()
            await self.hub.store.release_relay(task_id, self.hub.holder)
            self.hub.wake(task_id)

    async def _read(self):
        "Read until the response ends; a stream OpenAI closes early is resumed (after a pause if it brought nothing)."
        fruitless = 0
        while fruitless < RESUME_ATTEMPTS:
            stream = self.stream or await self.hub.gateway.resume(self.task["response_id"], self.recorder.seq)
            self.stream, before = None, self.recorder.seq
            async for event in self.hub.gateway.events(stream):
                if (moved := self.recorder.add(event)) is None:
                    if self.recorder.pending: self.hub.wake(self.task["id"])
                    continue
                if moved.status not in TERMINAL:
                    await self.hub.record(self.task, moved)
                    continue
                await self.flush()
                await self.hub.record(self.task, moved)
                self.hub.wake(self.task["id"])
                return
            current = await self.hub.store.get(self.task["id"])
            if current is None or current["status"] in TERMINAL: return
            fruitless = 0 if self.recorder.seq > before else fruitless + 1
            await asyncio.sleep(min(2 ** fruitless - 1, 10))

    async def flush(self):
        """Record what was read since the last flush, and hand it to this process's follower of the task: one flush
        at a time, so the log is written in order; what a failed or cancelled flush took goes back, for the next one
        (a row already written is not written twice)."""
        async with self.flushing:
            events = self.recorder.take()
            if self.recorded >= MAX_EVENTS_PER_TASK: events = [e for e in events if e.kind in ("status", "step")]
            if not events: return
            try: await self.hub.store.append_progress(self.task["id"], [(e.seq, e.kind, json.dumps(e.data)) for e in events])
            except BaseException:
                self.recorder.put_back(events)
                raise
            self.recorded += len(events)
            after, self.last_recorded = self.last_recorded, events[-1].seq
        if follower := self.hub.followers.get(self.task["id"]): follower.hear(after, events)

    async def _flush_every(self):
        "Flush every FLUSH_SECONDS and renew the lease; a store that fails is tried again at the next tick."
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await self.flush()
                if time.monotonic() - renewed > LEASE_SECONDS / 3:
                    if not await self.hub.store.claim_relay(self.task["id"], self.hub.holder, LEASE_SECONDS):
                        log.info("the relay of %s stops: the task ended, or another process holds its lease", self.task["id"])
                        self.reading.cancel()
                    renewed = time.monotonic()
            except StoreUnavailable as exc: log.warning("progress of %s not recorded yet: %s", self.task["id"], exc)


class Follower:
    """Reads one task's log for this process's viewers and hands each of them every new batch, formatted once per
    format in use (`format(events, state, task, ended, live=True)` -> bytes; a replay, even an empty one, `live=False`);
    ends once the task has, and stops when its last viewer leaves. A relay in this process wakes it at each event
    and when it stops, and hands it what it records (`hear`): while that relay runs, the log is read only for what
    it did not hear (recorded before the relay took over), and the task every LEASE_SECONDS / 2 (an end recorded
    elsewhere). Otherwise it reads both at each batch, and looks every FOLLOW_POLL_SECONDS."""

    def __init__(self, hub: "ProgressHub", task_id: str):
        self.hub, self.task_id = hub, task_id
        self.viewers: set["Viewer"] = set()
        self.task: dict | None = None
        self.heard, self.heard_after = [], None
        self.state, self.woken = ProgressState(), asyncio.Event()
        self.started = asyncio.get_running_loop().create_future()
        self.following: asyncio.Task | None = None  # its run(), started by the hub

    def hear(self, after: int, events: list[ProgressEvent]):
        """A relay here recorded `events`, the log's next after the event `after` (called with no wait after the
        write, so in the order of the writes): the next batch takes them from here, not from the log, if what was
        heard since the last batch follows on from what this follower has."""
        if not self.heard: self.heard_after = after
        elif self.heard[-1].seq != after: self.heard_after = None
        self.heard += events
        self.woken.set()

    def take_on(self, viewer: "Viewer"):
        """A new viewer: its replay ends where this follower's next batch will begin, or where the viewer already is
        if that is further (a page drawn from the store before this follower read it, a stream resumed here after
        another server's)."""
        viewer.boundary = max(self.state.last, viewer.after)
        self.viewers.add(viewer)

    async def run(self):
        "Follow the log while anyone watches; meanwhile keep a relay going (here, if no other process holds the lease)."
        relay, looked_at = None, float("-inf")
        try:
            self.state.apply([decoded(r) for r in await self.hub.store.progress_after(self.task_id, -1)])
            for viewer in self.viewers: viewer.boundary = max(self.state.last, viewer.after)
            self.started.set_result(None)
            while self.viewers:
                if time.monotonic() - looked_at > LEASE_SECONDS / 2:
                    self.task, looked_at = await self.hub.store.get(self.task_id), time.monotonic()
                    if self.task is not None: relay = await self.hub.relay(self.task) or relay
                looks_every = LEASE_SECONDS / 2 if self.task_id in self.hub.relays else FOLLOW_POLL_SECONDS
                try:
                    async with asyncio.timeout(looks_every): await self.woken.wait()
                except TimeoutError: pass
                self.woken.clear()
                if await self._publish(): return
                await asyncio.sleep(PUBLISH_GAP_SECONDS)
        except Exception as exc:
            if not self.started.done(): self.started.set_exception(exc)
            for viewer in list(self.viewers): viewer.hand(Batch(self.state.last, b"", True))
            raise
        finally:
            self.hub.followers.pop(self.task_id, None)
            if relay is not None and not self.hub.relays_outlive_requests: relay.cancel()

    async def _publish(self) -> bool:
        """Hand the new events to every viewer; True once the task has ended (and `done` was handed). Nothing is
        awaited between moving `state.last` and handing the batch, so a batch is wholly before or after it."""
        if relay := self._relay_here():
            await relay.flush()
            if not relay.recorder.pending: self.woken.clear()  # the flush's own wake: what it recorded is taken below
        if not (relay := self._relay_here()): self.task = await self.hub.store.get(self.task_id)  # it may have ended
        task = self.task
        if task is None:
            for viewer in list(self.viewers): viewer.hand(Batch(self.state.last, b"", True))
            return True
        ended = task["status"] in TERMINAL
        heard, heard_after, self.heard, self.heard_after = self.heard, self.heard_after, [], None
        if heard_after is not None and heard_after <= self.state.last: events = [e for e in heard if e.seq > self.state.last]
        elif not heard and relay and relay.last_recorded <= self.state.last: events = []
        else: events = [decoded(r) for r in await self.hub.store.progress_after(self.task_id, self.state.last)]
        self.state.apply(events)
        if events or ended:
            batches = {}
            for viewer in list(self.viewers):
                if viewer.format not in batches: batches[viewer.format] = self._batch(viewer.format, events, task, ended)
                viewer.hand(batches[viewer.format])
        return ended

    def _relay_here(self) -> Relay | None:
        "The task's relay in this process, while it reads."
        relay = self.hub.relays.get(self.task_id)
        return relay if relay is not None and not relay.reading.done() else None

    def _batch(self, format, events: list[ProgressEvent], task: dict, ended: bool) -> "Batch":
        state = self.state

        def since(seq: int) -> bytes: return format([e for e in events if e.seq > seq], state, task, ended, live=False)
        return Batch(state.last, format(events, state, task, ended, live=True), ended,
                     events[0].seq if events else state.last + 1, since)


@dataclass
class Batch:
    """What a follower hands its viewers: `chunk` for those that have what came before `first`; a viewer that
    already has part of it (it came ahead of the follower) takes `since(the last event it has)` instead."""
    last: int
    chunk: bytes
    ended: bool
    first: int | None = None
    since: Callable[[int], bytes] | None = None


def start_now(coroutine) -> asyncio.Task | None:
    """Run `coroutine` here and now up to its first wait, as Python 3.12's eager tasks do: None if it finished
    without waiting, else the task that finishes it. What it raises before waiting is raised here."""
    try: waited = coroutine.send(None)
    except StopIteration: return None
    return asyncio.ensure_future(resumed(coroutine, waited))


@types.coroutine
def resumed(coroutine, waited):
    "Go on with a coroutine `start_now` ran up to `waited`, as its own task would: yield what it waits for, pass in what comes."
    while True:
        try:
            try: yield waited
            except BaseException as exc: waited = coroutine.throw(exc)
            else: waited = coroutine.send(None)
        except StopIteration as stop: return stop.value


class Viewer:
    """One open stream. Its follower hands it each batch and it writes the batch at once, in the follower's task
    (a viewer has no task of its own to wake). While a write waits (for its replay to be read, or for a client
    that reads slowly) later chunks wait behind it and then go as one write. `boundary`: the last event its
    replay holds, set by its follower as it takes the viewer on, before any batch can come."""

    def __init__(self, format, write, after: int = -1):
        self.format, self.write, self.after = format, write, after
        self.boundary, self.open = -1, True
        self.writing: asyncio.Future | None = asyncio.get_running_loop().create_future()
        self.writing.add_done_callback(self._written)
        self.backlog: list[bytes] = []
        self.ending = False
        self.finished = asyncio.get_running_loop().create_future()
        self.written_at = time.monotonic()

    def hand(self, batch: Batch):
        "Write what of a batch the viewer does not already have; the last batch (`ended`) finishes the stream."
        if not self.open or not (batch.last > self.boundary or batch.ended): return
        straddled = batch.since is not None and batch.first <= self.boundary
        self.send(batch.since(self.boundary) if straddled else batch.chunk, batch.ended)

    def send(self, chunk: bytes, last: bool = False):
        self.ending = self.ending or last
        if self.writing is not None: return self.backlog.append(chunk)
        if chunk:
            self.written_at = time.monotonic()
            try: self.writing = start_now(self.write(chunk))
            except Exception as exc: return self.leave(exc)
        if self.writing is not None: self.writing.add_done_callback(self._written)
        elif self.ending: self.leave()

    def replayed(self, chunk: bytes, ended: bool):
        "The replay is ready: it goes first, then what was handed meanwhile; a replay that ends with `done` is all."
        if ended: self.open, self.backlog = False, []
        self.backlog.insert(0, chunk)
        self.ending = self.ending or ended
        self.writing.set_result(None)

    def close(self):
        "The stream is ending: nothing more is written to it (a write under way finishes first)."
        self.open, self.backlog = False, []

    def _written(self, writing: asyncio.Future):
        self.writing = None
        if writing.cancelled(): return self.leave()
        if error := writing.exception(): return self.leave(error)
        chunk, self.backlog = b"".join(self.backlog), []
        self.send(chunk)

    def leave(self, error: Exception | None = None):
        if error is not None: log.info("a progress stream stopped: %r", error)
        if not self.finished.done(): self.finished.set_result(None)


class ProgressHub:
    """This process's relays and followers. `record(task, state)` records a final state the stream brought;
    `relays_outlive_requests`: False on Vercel, where no work may run after a response (a relay then lives only
    as long as the viewer's request that started it; the next request takes over)."""

    def __init__(self, store: SqlTaskStore, gateway: OpenAIGateway, record, relays_outlive_requests: bool = True):
        self.store, self.gateway, self.record = store, gateway, record
        self.relays_outlive_requests = relays_outlive_requests
        self.holder = "relay_" + secrets.token_hex(8)
        self.relays: dict[str, Relay] = {}
        self.followers: dict[str, Follower] = {}
        self.states: OrderedDict[str, ProgressState] = OrderedDict()

    async def close(self):
        "Stop this process's relays (each records what it read first) and followers."
        running = [*(r.reading for r in self.relays.values()), *(f.following for f in self.followers.values())]
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
        relay = self.relays[task["id"]] = Relay(self, task, stream)
        relay.reading = asyncio.create_task(relay.run())
        relay.reading.add_done_callback(lambda done: self.relays.pop(task["id"], None))
        return relay.reading

    async def state_of(self, task_id: str) -> ProgressState:
        """What a task's recorded progress adds up to (for a page drawn while it runs): kept per task in this process
        and brought up to date with only the events recorded since."""
        state = self.states.get(task_id) or ProgressState()
        state.apply([decoded(r) for r in await self.store.progress_after(task_id, state.last)])
        self.states[task_id] = state
        self.states.move_to_end(task_id)
        while len(self.states) > KEPT_STATES: self.states.popitem(last=False)
        return state

    async def watch(self, task: dict, after: int, format, write, quiet_seconds: float, seconds: float):
        """Write the task's progress to one viewer (`write(chunk)`, async): what was recorded after `after`, then
        each batch as it comes, to `done`; a keep-alive after `quiet_seconds` without any; returns at `done` or after
        `seconds`. Its follower starts a relay if the task's has died. Nothing stays running for the viewer once this
        returns or is cancelled (the viewer left)."""
        viewer = Viewer(format, write, after)
        follower = self.followers.get(task["id"])
        if follower is None:
            follower = self.followers[task["id"]] = Follower(self, task["id"])
            follower.following = asyncio.create_task(follower.run())
        follower.take_on(viewer)
        try:
            await follower.started
            ended = task["status"] in TERMINAL
            recorded = [decoded(r) for r in await self.store.progress_after(task["id"], -1)]
            held = [e for e in recorded if ended or e.seq <= viewer.boundary]
            state = ProgressState()
            state.apply(held)
            replay = [e for e in held if e.seq > after]
            viewer.replayed(format(replay, state, task, ended, live=False), ended)
            deadline = time.monotonic() + seconds
            while not viewer.finished.done() and (left := deadline - time.monotonic()) > 0:
                await asyncio.wait([viewer.finished], timeout=min(quiet_seconds, left))
                if viewer.writing is None and time.monotonic() - viewer.written_at >= quiet_seconds: viewer.send(KEEP_ALIVE)
        finally:
            follower.viewers.discard(viewer)
            viewer.close()
