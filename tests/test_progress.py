"""Live progress: recorded once per task, replayed to every viewer, resumable, and robust to streams and relays dying."""
import asyncio
import json
import os
import signal
import time
from types import SimpleNamespace

import httpx2
import pytest

import progress
import ui
from config import new_webhook_secret
from progress import KEEP_ALIVE
from responses import progress_json
from store import StoreUnavailable, new_task_row
from tests.conftest import LiveServer, free_port, wait_for

DR = {"model": "o4-mini-deep-research"}


async def read_events(response, stop=lambda event: event["event"] == "done", limit=10_000) -> list[dict]:
    "Server-Sent Events of a streaming response as dicts (id, event, data), until `stop` says so."
    events, current = [], {}
    async for line in response.aiter_lines():
        if line == "":
            if "event" in current:
                events.append({**current, "data": json.loads(current["data"])})
                if stop(events[-1]) or len(events) >= limit: return events
            current = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            current[field] = current.get(field, "") + ("\n" if field == "data" and field in current else "") + value
    return events


async def watch(client, task_id: str, headers=None, **params) -> list[dict]:
    async with client.stream("GET", f"/api/events/{task_id}", params=params, headers=headers or {}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return await read_events(response)


def assert_whole(events: list[dict], task: dict):
    "Ids strictly increase, and the recorded deltas add up to the final answer and summary: nothing lost or doubled."
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)), ids
    assert "".join(e["data"]["delta"] for e in events if e["event"] == "output_text.delta") == task["output_text"]
    summary = "".join(e["data"]["delta"] for e in events if e["event"] == "reasoning_summary.delta")
    assert summary == (task["reasoning_summary"] or "")


async def test_a_viewer_gets_status_summary_steps_answer_then_done(make_harness):
    harness = await make_harness(demo_delay_seconds=1.5)
    task = (await harness.queue("How do tides form?", **DR)).json()
    events = await watch(harness.client, task["id"])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "status" and kinds[-1] == "done"
    assert {"reasoning_summary.delta", "step", "output_text.delta"} <= set(kinds)
    assert [e["data"]["detail"] for e in events if e["event"] == "step"][0] == "How do tides form?"
    done = events[-1]["data"]
    assert done["status"] == "completed" and done["sources"] and done["id"] == task["id"]
    assert_whole(events[:-1], done)
    assert len(events) < 60, "deltas are coalesced into a few events, not one per token"


async def test_resuming_with_last_event_id_or_after_repeats_nothing(make_harness):
    harness = await make_harness(demo_delay_seconds=1)
    task = (await harness.queue("Resume me", **DR)).json()
    everything = await watch(harness.client, task["id"])
    middle = everything[len(everything) // 2]["id"]
    by_header = await watch(harness.client, task["id"], headers={"Last-Event-ID": middle})
    by_query = await watch(harness.client, task["id"], after=middle)
    assert by_header == by_query == [e for e in everything if int(e["id"]) > int(middle)]


@pytest.mark.parametrize("bad", ["abc", "1.5", "-2", "9" * 40, "1,2"])
async def test_a_malformed_last_event_id_is_400(harness, bad):
    task = (await harness.queue()).json()
    response = await harness.client.get(f"/api/events/{task['id']}", headers={"Last-Event-ID": bad})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_event_id"


async def test_unknown_and_other_owners_tasks_are_404(make_harness):
    harness = await make_harness(access_tokens=("token-a", "token-b"))
    task = (await harness.client.post("/api/queue", json={"prompt": "mine"}, headers={"Authorization": "Bearer token-a"})).json()
    other = await harness.client.get(f"/api/events/{task['id']}", headers={"Authorization": "Bearer token-b"})
    unknown = await harness.client.get("/api/events/task_AAAAAAAAAAAAAAAA", headers={"Authorization": "Bearer token-a"})
    assert other.status_code == unknown.status_code == 404


async def test_many_viewers_cost_one_openai_stream_and_leave_nothing_running(make_harness):
    harness = await make_harness(demo_delay_seconds=2, demo_webhooks=False)
    task = (await harness.queue("Twenty people watch this", **DR)).json()
    views = await asyncio.gather(*[watch(harness.client, task["id"]) for _ in range(20)])
    assert all(view[-1]["event"] == "done" for view in views)
    assert all(view == views[0] for view in views[1:])
    assert harness.emulator.calls["stream"] == 1, "one OpenAI stream (the create's), however many viewers"
    assert harness.emulator.calls["retrieve"] == 0
    await wait_for(lambda: not harness.services.tasks.progress.followers and not harness.services.tasks.progress.relays)


async def test_a_viewer_that_leaves_mid_run_stops_its_follower(make_harness):
    harness = await make_harness(demo_delay_seconds=10)
    task = (await harness.queue("Leave early", **DR)).json()
    async with harness.client.stream("GET", f"/api/events/{task['id']}") as response:
        await read_events(response, stop=lambda event: event["event"] == "status")
    hub = harness.services.tasks.progress
    await wait_for(lambda: task["id"] not in hub.followers, timeout=5)
    assert task["id"] in hub.relays, "the task's relay records on for other viewers and for the page"


async def test_the_relay_resumes_a_stream_openai_closed_early(make_harness):
    harness = await make_harness(demo_delay_seconds=1.5, demo_webhooks=False)
    harness.emulator.cut_streams_after = 12
    task = (await harness.queue("A stream that keeps dropping", **DR)).json()
    events = await watch(harness.client, task["id"])
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "completed"
    assert harness.emulator.calls["stream"] > 3, "the relay resumed with starting_after, several times"
    assert_whole(events[:-1], events[-1]["data"])


async def test_a_follower_has_its_relay_flush_what_it_read_before_each_batch(make_harness, monkeypatch):
    "A viewer in the relay's process gets each batch as the relay reads it, not when the relay's timer next flushes."
    monkeypatch.setattr(progress, "FLUSH_SECONDS", 3600)
    harness = await make_harness(demo_delay_seconds=4)
    task = (await harness.queue("Flush on demand", **DR)).json()
    arrivals = []
    async with harness.client.stream("GET", f"/api/events/{task['id']}") as response:
        events = await read_events(response, stop=lambda event: arrivals.append(time.monotonic()) or event["event"] == "done")
    deltas = [at for at, event in zip(arrivals, events) if event["event"] == "output_text.delta"]
    assert len(deltas) >= 3 and deltas[-1] - deltas[0] > 1, "the answer arrived in batches while it was written"
    assert_whole(events[:-1], events[-1]["data"])


async def relay_of_a_new_task(harness, task_id: str):
    store = await harness.store()
    task, _ = await store.create(new_task_row(id=task_id, owner="o", account="o", prompt="Flush", model="gpt-5-mini",
                                              status="in_progress"), 5)
    return store, task, progress.Relay(harness.services.tasks.progress, task)


def delta(seq: int, text: str): return SimpleNamespace(type="response.output_text.delta", sequence_number=seq, delta=text)


async def relay_here(harness, task_id: str):
    "A new task whose relay is this process's (the hub knows it; it reads nothing unless the test gives it events)."
    store, task, relay = await relay_of_a_new_task(harness, task_id)
    hub = harness.services.tasks.progress
    hub.relays[task_id], relay.reading = relay, asyncio.create_task(asyncio.Event().wait())
    return store, task, relay, hub


def viewer(hub, task: dict, chunks: list[bytes], after: int = -1, format=progress_json) -> asyncio.Task:
    "A viewer of the task whose stream's chunks go to `chunks`."
    async def write(chunk): chunks.append(chunk)
    return asyncio.create_task(hub.watch(task, after, format, write, quiet_seconds=30, seconds=60))


async def followed(hub, task: dict):
    await wait_for(lambda: task["id"] in hub.followers and hub.followers[task["id"]].started.done())


async def test_a_flush_cancelled_mid_write_loses_nothing(make_harness):
    "What a cancelled flush took (a process stopping, its follower cancelled) is recorded by the next flush."
    store, task, relay = await relay_of_a_new_task(await make_harness(), "task_flushcancelled1")
    stalled, write = asyncio.Event(), store.append_progress

    async def stalled_write(task_id, events):
        await stalled.wait()
        await write(task_id, events)
    store.append_progress = stalled_write
    relay.recorder.add(delta(1, "Hello"))
    flushing = asyncio.create_task(relay.flush())
    await wait_for(lambda: not relay.recorder.pending and relay.flushing.locked())
    relay.recorder.add(delta(2, " world"))
    flushing.cancel()
    await asyncio.gather(flushing, return_exceptions=True)
    stalled.set()
    await relay.flush()
    assert [(row["seq"], row["data"]) for row in await store.progress_after(task["id"], -1)] == [
        (1, '{"delta": "Hello"}'), (2, '{"delta": " world"}')]


async def test_a_follower_takes_what_its_relay_here_records_without_reading_it_back(make_harness, monkeypatch):
    """With the task's relay in this process, its follower reads the log and the task as it starts, then takes each
    batch from the relay's flushes: no read for them, nor on a timer while the stream is quiet (a search, say); the
    task is read again only every LEASE_SECONDS / 2. What it has not heard (recorded before this relay took over, by
    another process's) is read from the log."""
    monkeypatch.setattr(progress, "LEASE_SECONDS", 60)
    store, task, relay, hub = await relay_here(await make_harness(), "task_quietrelayhere1")
    chunks, reads, read, gets, get = [], [], store.progress_after, [], store.get

    async def counted_read(task_id, after):
        reads.append(after)
        return await read(task_id, after)

    async def counted_get(task_id):
        gets.append(task_id)
        return await get(task_id)
    store.progress_after, store.get = counted_read, counted_get
    watching = viewer(hub, task, chunks)
    await followed(hub, task)
    await wait_for(lambda: gets)  # its first look at the task
    reads_at_start, gets_at_start = len(reads), len(gets)
    for seq, text in enumerate(["Hello", " wide", " world"], 1):
        relay.recorder.add(delta(seq, text))
        hub.wake(task["id"])
        await wait_for(lambda: text.encode() in b"".join(chunks))
    await asyncio.sleep(1.0)
    assert len(reads) == reads_at_start, f"{len(reads) - reads_at_start} reads of what the relay here recorded"
    assert len(gets) == gets_at_start, f"{len(gets) - gets_at_start} reads of the task while its relay here ran"
    await store.append_progress(task["id"], [(4, "output_text.delta", '{"delta": " and"}')])
    relay.last_recorded = 4
    relay.recorder.add(delta(5, " more"))
    hub.wake(task["id"])
    await wait_for(lambda: b" more" in b"".join(chunks))
    events = await read_events(Written(chunks), stop=lambda e: False)
    assert "".join(e["data"]["delta"] for e in events) == "Hello wide world and more" and reads[reads_at_start:] == [3]
    watching.cancel()
    relay.reading.cancel()


async def test_a_follower_whose_relay_here_stopped_reads_what_another_process_records(make_harness):
    "The relay here stops mid-run (its stream failed, its lease lapsed) and another process's records on: the follower reads it."
    store, task, relay, hub = await relay_here(await make_harness(), "task_relayherestops1")
    relay.reading.add_done_callback(lambda _: hub.relays.pop(task["id"], None))
    chunks = []
    watching = viewer(hub, task, chunks)
    await followed(hub, task)
    relay.recorder.add(delta(1, "Hello"))
    hub.wake(task["id"])
    await wait_for(lambda: b"Hello" in b"".join(chunks))
    relay.reading.cancel()
    await wait_for(lambda: task["id"] not in hub.relays)
    assert await store.attach_response(task["id"], "resp_elsewhere") and await store.claim_relay(task["id"], "relay_elsewhere", 60)
    await store.append_progress(task["id"], [(2, "output_text.delta", '{"delta": " wide"}'), (3, "output_text.delta", '{"delta": " world"}')])
    await wait_for(lambda: b" world" in b"".join(chunks), timeout=3)
    await store.advance(task["id"], "completed", output_text="Hello wide world")
    await asyncio.wait_for(watching, 5)
    events = await read_events(Written(chunks))
    assert "".join(e["data"]["delta"] for e in events[:-1]) == events[-1]["data"]["output_text"] == "Hello wide world"


async def test_a_follower_on_a_machine_up_for_a_second_looks_at_its_task_at_once(make_harness, monkeypatch):
    "A machine just started (a serverless one): the follower's first look at the task is not put off by a young clock."
    started = time.monotonic() - 1.0
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: time.monotonic() - started, time=time.time))
    store, task, relay, hub = await relay_here(await make_harness(), "task_youngclock00001")
    chunks = []
    watching = viewer(hub, task, chunks)
    await followed(hub, task)
    relay.recorder.add(delta(1, "Hello"))
    hub.wake(task["id"])
    await wait_for(lambda: b"Hello" in b"".join(chunks), timeout=3)
    assert not watching.done(), "the stream goes on while the task runs"
    watching.cancel()
    relay.reading.cancel()


async def test_an_event_read_while_the_follower_has_its_relay_flush_is_not_left_waiting(make_harness, monkeypatch):
    "The relay reads an event while the flush the follower asked for is writing: its wake is kept, for the next batch."
    monkeypatch.setattr(progress, "FLUSH_SECONDS", 3600)
    store, task, relay, hub = await relay_here(await make_harness(), "task_readwhileflush1")
    chunks, write = [], store.append_progress

    async def meanwhile_read(task_id, events):
        if events[0][0] == 1:
            relay.recorder.add(delta(2, " world"))
            hub.wake(task_id)
        await write(task_id, events)
    store.append_progress = meanwhile_read
    watching = viewer(hub, task, chunks)
    await followed(hub, task)
    relay.recorder.add(delta(1, "Hello"))
    hub.wake(task["id"])
    await wait_for(lambda: b" world" in b"".join(chunks), timeout=2.5)
    watching.cancel()
    relay.reading.cancel()


async def test_a_relay_whose_store_fails_for_a_moment_goes_on_flushing_and_keeps_its_lease(make_harness, monkeypatch):
    "A failed flush or lease renewal is tried again at the next tick: the relay goes on recording and keeps its lease."
    monkeypatch.setattr(progress, "LEASE_SECONDS", 0.6)
    harness = await make_harness()
    store, task, relay = await relay_of_a_new_task(harness, "task_storehiccup0001")
    claim, failures = store.claim_relay, []

    async def failing_once(task_id, holder, seconds):
        if not failures:
            failures.append(True)
            raise StoreUnavailable("the database restarted")
        return await claim(task_id, holder, seconds)
    store.claim_relay = failing_once
    assert await store.attach_response(task["id"], "resp_storehiccup") and await claim(task["id"], relay.hub.holder, 0.6)
    relay.reading = asyncio.current_task()
    flushing = asyncio.create_task(relay._flush_every())
    await wait_for(lambda: failures, timeout=2)
    relay.recorder.add(delta(1, "Hello"))
    await wait_for(lambda: relay.recorded == 1, timeout=2)
    assert not await claim(task["id"], "another process", 0.6), "the lease was renewed after the failure"
    flushing.cancel()


async def test_a_viewer_ahead_of_its_follower_gets_nothing_twice(make_harness):
    """A viewer resuming after an event its process's follower has not read yet (a page drawn from the store just
    after the relay's flush; a stream resumed on another server) gets only what comes after it, and in the page's
    stream the answer whole (the shared batch would add to an answer the page does not show)."""
    store, task, relay, hub = await relay_here(await make_harness(), "task_viewerahead0001")
    viewers = {"first": [], "json": [], "html": []}
    first = viewer(hub, task, viewers["first"])
    await followed(hub, task)
    await store.append_progress(task["id"], [(1, "output_text.delta", '{"delta": "One.\\n\\n"}'),
                                             (2, "output_text.delta", '{"delta": "Two.\\n\\n"}')])
    relay.last_recorded = 2  # recorded by the relay before its follower heard of them: the follower reads them
    ahead = [viewer(hub, task, viewers["json"], after=2), viewer(hub, task, viewers["html"], after=2, format=ui.progress_html)]
    await wait_for(lambda: all(hub.followers[task["id"]].viewers) and len(hub.followers[task["id"]].viewers) == 3)
    relay.recorder.add(delta(3, "Three."))
    hub.wake(task["id"])
    await wait_for(lambda: all(any(b"Three." in chunk for chunk in chunks) for chunks in viewers.values()))
    assert [e["id"] for e in await read_events(Written(viewers["first"]), stop=lambda e: False)] == ["1", "2", "3"]
    assert [e["id"] for e in await read_events(Written(viewers["json"]), stop=lambda e: False)] == ["3"]
    html = b"".join(viewers["html"])
    assert b"event: output_text.delta" in html and b"event: answer.blocks" not in html, "the answer drawn whole"
    for task_ in (first, *ahead, relay.reading): task_.cancel()


async def test_a_flush_that_fails_after_writing_doubles_nothing(make_harness):
    "A write that was recorded although it failed (a connection lost after the commit) is not recorded again, longer."
    store, task, relay = await relay_of_a_new_task(await make_harness(), "task_flushfailed0001")
    write = store.append_progress

    async def written_then_failed(task_id, events):
        store.append_progress = write
        await write(task_id, events)
        raise StoreUnavailable("the connection was lost after the commit")
    store.append_progress = written_then_failed
    relay.recorder.add(delta(1, "Hello"))
    with pytest.raises(StoreUnavailable): await relay.flush()
    relay.recorder.add(delta(2, " world"))
    await relay.flush()
    assert "".join(json.loads(row["data"])["delta"] for row in await store.progress_after(task["id"], -1)) == "Hello world"


async def test_the_end_is_recorded_even_when_no_stream_works(make_harness):
    "Every stream stops after its first event, and no webhook comes: reading the task still finds its end."
    harness = await make_harness(demo_delay_seconds=0.5, reconcile_seconds=0.2, demo_webhooks=False)
    harness.emulator.cut_streams_after = 1
    task = (await harness.queue("Hardly any stream")).json()

    async def completed():
        return (await harness.status(task["id"])).json()["status"] == "completed"
    await wait_for(completed)


async def test_a_quiet_stream_gets_keep_alives_and_its_viewer_leaves_nothing_running(make_harness):
    "A task with nothing to record (no response yet) gets a keep-alive per `quiet_seconds`."
    harness = await make_harness()
    row = new_task_row(id="task_quietkeepalive01", owner="someone", account="someone", prompt="Quiet", model="gpt-5-mini",
                       status="in_progress")
    task, _ = await (await harness.store()).create(row, 5)
    hub, written, started = harness.services.tasks.progress, [], time.monotonic()

    async def write(chunk): written.append(chunk)
    watching = asyncio.create_task(hub.watch(task, -1, lambda events, *_, **__: b"batch" if events else b"", write, quiet_seconds=0.3, seconds=60))
    await wait_for(lambda: len(written) >= 3, timeout=5)
    assert written[:3] == [KEEP_ALIVE] * 3 and time.monotonic() - started >= 0.6
    watching.cancel()
    await wait_for(lambda: task["id"] not in hub.followers)


async def test_a_viewer_whose_replay_ends_with_done_gets_it_once_and_is_let_go(make_harness):
    """A viewer that comes as the task ends, while a follower still serves another: its replay holds `done`, so the
    follower's own `done`, handed while the replay was being read, is not written to it again."""
    harness = await make_harness()
    store, hub = await harness.store(), harness.services.tasks.progress
    task, _ = await store.create(new_task_row(id="task_replayeddone001", owner="o", account="o", prompt="Ending",
                                              model="gpt-5-mini", status="in_progress"), 5)
    first, second = [], []

    def fmt(events, state, task, ended, live): return b"done\n" if ended else b"batch\n" * bool(events)

    def into(chunks):
        async def write(chunk): chunks.append(chunk)
        return write
    read, replay_read, stalled = store.progress_after, asyncio.Event(), []

    async def stalled_once(task_id, after):
        if stalled: await stalled.pop().wait()
        return await read(task_id, after)
    store.progress_after = stalled_once
    watching = asyncio.create_task(hub.watch(task, -1, fmt, into(first), quiet_seconds=30, seconds=60))
    await wait_for(lambda: task["id"] in hub.followers and hub.followers[task["id"]].started.done())
    assert await store.advance(task["id"], "completed")
    stalled.append(replay_read)
    late = asyncio.create_task(hub.watch(await store.get(task["id"]), -1, fmt, into(second), quiet_seconds=30, seconds=60))
    hub.wake(task["id"])
    await asyncio.wait_for(watching, 10)
    replay_read.set()
    await asyncio.wait_for(late, 5)
    assert first == second == [b"done\n"]


class Written:
    "What a viewer's `write` was given, read back as a response's lines."

    def __init__(self, chunks: list[bytes]): self.chunks = chunks

    async def aiter_lines(self):
        for line in b"".join(self.chunks).decode().split("\n"): yield line


async def test_a_viewer_that_reads_slowly_holds_up_no_other_and_misses_nothing(make_harness):
    """A viewer whose socket stops taking writes: the others still get every batch at once, and the chunks handed to
    it meanwhile go out as one write when it takes writes again."""
    harness = await make_harness(demo_delay_seconds=1.5)
    task = (await harness.queue("Read slowly", **DR)).json()
    hub, chunks, unblocked = harness.services.tasks.progress, [], asyncio.Event()

    async def blocked_write(chunk):
        if not chunks: await unblocked.wait()
        chunks.append(chunk)
    slow = asyncio.create_task(hub.watch(task, -1, progress_json, blocked_write, quiet_seconds=30, seconds=60))
    others = await asyncio.wait_for(watch(harness.client, task["id"]), 30)
    assert others[-1]["event"] == "done" and not chunks and not slow.done()
    unblocked.set()
    await asyncio.wait_for(slow, 5)
    assert len(chunks) == 2, "the first write, then all that was handed while it waited, as one"
    assert await read_events(Written(chunks)) == others


async def test_events_stop_after_events_max_seconds_with_keep_alives(make_harness):
    harness = await make_harness(demo_delay_seconds=30, events_max_seconds=1.2)
    task = (await harness.queue("Long and quiet")).json()
    async with harness.client.stream("GET", f"/api/events/{task['id']}") as response:
        body = (await asyncio.wait_for(response.aread(), 10)).decode()
    assert body.startswith("retry: ") and "event: done" not in body


def test_kill_9_of_the_relaying_app_loses_no_event_and_doubles_none(tmp_path, database_url):
    """The app that queued (and relays) is killed mid-run; another app on the same database takes the relay over
    when a viewer comes (once the lease lapses), resuming OpenAI's stream after the last recorded event."""
    secret, emulator_port, app_port = new_webhook_secret(), free_port(), free_port()
    emulator = LiveServer(tmp_path, "emulator.py", "EMULATOR_PORT", "/_emulator/stats", port=emulator_port,
                          EMULATOR_WEBHOOK_URL=f"http://127.0.0.1:{app_port}/api/webhook", DEMO_WEBHOOKS="off",
                          OPENAI_WEBHOOK_SECRET=secret, DEMO_DELAY_SECONDS="15")
    env = {"OPENAI_API_KEY": "sk-relay-test", "OPENAI_WEBHOOK_SECRET": secret, "DATABASE_URL": database_url,
           "OPENAI_BASE_URL": f"{emulator.url}/v1", "RECONCILE_SECONDS": "3600"}
    first = LiveServer(tmp_path, port=app_port, **env)
    try:
        task = httpx2.post(f"{first.url}/api/queue", json={"prompt": "Kill the relay", **DR}).json()
        assert sees(first.url, task["id"], "output_text.delta", within=25)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(5)
        second = LiveServer(tmp_path, **env)
        try: events = asyncio.run(watch_url(second.url, task["id"]))
        finally: second.stop()
        streams = httpx2.get(f"{emulator.url}/_emulator/stats").json()["calls"]["stream"]
    finally:
        first.stop()
        emulator.stop()
    assert events[-1]["event"] == "done" and events[-1]["data"]["status"] == "completed"
    assert_whole(events[:-1], events[-1]["data"])
    assert streams == 2, "the create's stream, then one resumed by the app that took over"


def sees(url: str, task_id: str, kind: str, within: float) -> bool:
    "Whether a viewer of the task receives an event of `kind` within `within` seconds."
    deadline = time.monotonic() + within
    with httpx2.stream("GET", f"{url}/api/events/{task_id}", timeout=within) as response:
        for line in response.iter_lines():
            if line == f"event: {kind}": return True
            if time.monotonic() > deadline: return False
    return False


async def watch_url(url: str, task_id: str) -> list[dict]:
    async with httpx2.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.wait_for(watch(client, task_id), 60)
