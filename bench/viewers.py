"""Question 5: live progress over Server-Sent Events against the old 2 s HTMX poll of a running card.

5a the app's CPU per viewer-minute: N viewers (200) watch T running tasks (5) over SSE (`GET /api/events/{id}
?format=html`, as the page's running cards do) for M s (60, quick 15), then, on a fresh app process, the same N
viewers poll the running card every 2 s (`GET /api/status/{id}` with `HX-Request: true`, the old page) for M s.
Beside each, in the same window, a control app runs the same number of tasks queued at the same moment, which
nobody watches: its CPU (the relays alone) is taken off, so what is left is the CPU the viewers add, under the
same load of the machine. Each window starts once the tasks stream (the emulator's delay/10).
5b the app's memory per open stream: VmRSS with 0 and with 1,000 open streams (fresh app), and whether every one
of them receives events and `done`.
5c event latency: each viewer's arrival of an event against the emulator's own stream of the same response, read
at the same time in the same loop (the reference clock): an OpenAI event of a kind the app relays (status, text and
summary deltas, steps) reaches a viewer with the first SSE event whose id (the sequence number of the last OpenAI
event it holds) is at least its sequence number.

The app runs in OpenAI mode against the standalone emulator (`o4-mini-deep-research`: a summary, 3 web-search steps
and a cited answer, streamed over DEMO_DELAY_SECONDS, 120 s or 40 s quick; no webhooks: the relay records the end).
The load generator is this process (asyncio + httpx2); its CPU and its event loop's lag are reported beside.
"""
import asyncio
import bisect
import json
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2

from harness import PROMPT, BenchError, cpu_seconds, queue_tasks, say
from runner import Row, fmt, main, times, within
from viewer_retrieves import poll

MODEL = "o4-mini-deep-research"
EVENT_ID = re.compile(rb"^id: (\d+)$", re.M)
DONE = re.compile(rb"^event: done$", re.M)
RELAYED = {"response.in_progress", "response.output_text.delta", "response.reasoning_summary_text.delta"}
CONNECTING = 50  # streams being opened at once
GOAL_RATIO, GOAL_P99_MS = 0.1, 1000.0


def add_arguments(parser):
    parser.add_argument("--sse-viewers", type=within(0, 5000, int), default=200, help="viewers in 5a and 5c")
    parser.add_argument("--sse-tasks", type=within(0, 100, int), default=5, help="running tasks they watch")
    parser.add_argument("--sse-seconds", type=within(0, 600), help="each CPU window (default 60, quick 15)")
    parser.add_argument("--sse-delay", type=within(0, 3600), help="the emulator's DEMO_DELAY_SECONDS (default 120, quick 40)")
    parser.add_argument("--sse-streams", type=within(0, 10000, int), default=1000, help="open streams in 5b")
    parser.add_argument("--sse-format", choices=("html", "json"), default="html", help="the stream's format (the page: html)")
    parser.add_argument("--sse-long", action="store_true",
                        help="answers as long as a deep-research report (the emulator's [demo:long]: some 15 KB, 3,000 deltas)")


# ---------------------------------------------------------------- measuring a process

def rss_kb(pid: int) -> int:
    "VmRSS of a process, in KB."
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1])


def open_files_limit(pid: int) -> str:
    line = next(l for l in Path(f"/proc/{pid}/limits").read_text().splitlines() if l.startswith("Max open files"))
    return "/".join(line.split()[3:5])


def open_fds(pid: int) -> int: return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[int(q * (len(values) - 1))] if values else float("nan")


class Cpu:
    "CPU seconds used by each process named, between start() and stop()."

    def __init__(self, **pids: int): self.pids = pids

    def start(self):
        self.at, self.before = time.monotonic(), {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def stop(self) -> dict:
        self.seconds = time.monotonic() - self.at
        self.used = {name: cpu_seconds(pid) - self.before[name] for name, pid in self.pids.items()}
        return self.used


async def loop_lag(samples: list[float], period: float = 0.05):
    "How late this process's event loop wakes: a saturated load generator shows here."
    while True:
        started = time.monotonic()
        await asyncio.sleep(period)
        samples.append(time.monotonic() - started - period)


# ---------------------------------------------------------------- viewers and the reference clock

@dataclass(eq=False)
class Watch:
    "One viewer's stream: when each rise of the highest event id arrived, how many chunks, whether `done` came."
    url: str
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    connected_at: float | None = None
    chunks: int = 0
    done: bool = False
    error: str = ""


async def watch(client: httpx2.AsyncClient, w: Watch, gate: asyncio.Semaphore):
    "Follow one SSE stream to its `done` (or until cancelled); at most CONNECTING streams are being opened at once."
    await gate.acquire()
    opening, last, buffer = True, -1, b""
    try:
        async with client.stream("GET", w.url, headers={"Accept": "text/event-stream"}) as answer:
            if answer.status_code != 200:
                w.error = f"HTTP {answer.status_code}"
                return
            async for data in answer.aiter_raw():
                now = time.monotonic()
                if opening:
                    w.connected_at, opening = now, False
                    gate.release()
                buffer += data
                cut = buffer.rfind(b"\n\n")
                if cut < 0: continue
                complete, buffer = buffer[:cut + 2], buffer[cut + 2:]
                w.chunks += 1
                if ids := EVENT_ID.findall(complete):
                    if (top := max(map(int, ids))) > last:
                        last = top
                        w.arrivals.append((now, top))
                if DONE.search(complete):
                    w.done = True
                    return
            w.error = w.error or "closed before done"
    except httpx2.HTTPError as exc: w.error = type(exc).__name__
    finally:
        if opening: gate.release()


@dataclass
class Reference:
    "The emulator's own stream of a response, read beside the viewers: when each OpenAI event was sent."
    response_id: str
    opened_at: float = 0.0
    events: list[tuple[int, str, float]] = field(default_factory=list)  # (sequence_number, type, arrival)

    def live(self) -> list[tuple[int, float]]:
        "(sequence number, time sent) of the relayed events sent after the stream opened (not its opening backlog)."
        return [(seq, at) for seq, kind, at in self.events if kind in RELAYED and at > self.opened_at + 0.5]


async def reference(client: httpx2.AsyncClient, emulator_url: str, ref: Reference):
    ref.opened_at = time.monotonic()
    async with client.stream("GET", f"{emulator_url}/v1/responses/{ref.response_id}",
                             params={"stream": "true", "starting_after": "-1"}) as answer:
        buffer = b""
        async for data in answer.aiter_raw():
            now = time.monotonic()
            *messages, buffer = (buffer + data).split(b"\n\n")
            for message in messages:
                for line in message.split(b"\n"):
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        kind = event["type"]
                        if kind == "response.output_item.done" and event["item"]["type"].endswith("_call"): kind = "step"
                        ref.events.append((event["sequence_number"], kind, now))


def latencies(refs: dict[str, Reference], watches: dict[Watch, str], until: float) -> tuple[list[float], list[float], int]:
    """Seconds from the emulator sending each relayed event to each viewer of its task seeing it: every event sent
    while the viewer was connected (and at least 2 s before `until`), the first of them, and how many never arrived."""
    every, first, missed = [], [], 0
    for w, response_id in watches.items():
        live = [(seq, at) for seq, at in refs[response_id].live() if w.connected_at < at < until - 2]
        ids = [top for _, top in w.arrivals]
        for n, (seq, sent) in enumerate(live):
            i = bisect.bisect_left(ids, seq)
            if i == len(ids):
                missed += 1
                continue
            every.append(w.arrivals[i][0] - sent)
            if n == 0: first.append(w.arrivals[i][0] - sent)
    return every, first, missed


# ---------------------------------------------------------------- the phases

def events_url(app_url: str, task: dict, form: str) -> str:
    return f"{app_url}/api/events/{task['id']}" + ("?format=html" if form == "html" else "")


async def open_streams(app, emulator, tasks: list[dict], viewers: int, form: str, streaming_at: float, hold, pids: dict):
    """Open `viewers` streams spread over `tasks`, and the emulator's stream of each; once all are open and the tasks
    stream (`streaming_at`, monotonic), run `hold(watches)`; then close everything. Returns what was seen."""
    limits = httpx2.Limits(max_connections=viewers + len(tasks) + 10, max_keepalive_connections=0)
    lag: list[float] = []
    async with httpx2.AsyncClient(limits=limits, timeout=httpx2.Timeout(30, read=None)) as client:
        refs = {t["response_id"]: Reference(t["response_id"]) for t in tasks}
        running = [asyncio.create_task(reference(client, emulator.url, ref)) for ref in refs.values()]
        running.append(asyncio.create_task(loop_lag(lag)))
        gate = asyncio.Semaphore(CONNECTING)
        watches = {Watch(events_url(app.url, tasks[i % len(tasks)], form)): tasks[i % len(tasks)]["response_id"]
                   for i in range(viewers)}
        connecting = Cpu(**pids).start()
        followers = [asyncio.create_task(watch(client, w, gate)) for w in watches]
        deadline = time.monotonic() + 60 + viewers / 20
        while any(w.connected_at is None and not w.error and not w.done for w in watches):
            if time.monotonic() > deadline: raise BenchError(f"{viewers} streams did not all open within {deadline:.0f} s")
            await asyncio.sleep(0.1)
        connected = connecting.stop()
        if errors := [w.error for w in watches if w.error]:
            raise BenchError(f"{len(errors)} of {viewers} streams failed to open: {sorted(set(errors))}")
        say(f"  {viewers} streams open in {connecting.seconds:.1f} s (app CPU {connected['app']:.2f} s)")
        await asyncio.sleep(max(0.0, streaming_at - time.monotonic()))
        lag.clear()
        held = await hold(watches)
        until = time.monotonic()
        for task in [*followers, *running]: task.cancel()
        await asyncio.gather(*followers, *running, return_exceptions=True)
    every, first, missed = latencies(refs, watches, until)
    return {"held": held, "connect_cpu_ms": connected["app"] / viewers * 1000, "connect_seconds": connecting.seconds,
            "latency": every, "first": first, "missed": missed, "lag": lag, "watches": watches,
            "chunks": sum(w.chunks for w in watches), "errors": [w.error for w in watches if w.error and not w.done]}


def new_app(bench, emulator, label: str, tasks: int):
    "A fresh app process with `tasks` deep-research tasks queued: app, tasks, when they start streaming (monotonic)."
    app = bench.app(f"app-{label}", emulator.url, bench.stores.new_url(label))
    queued_at = time.monotonic()
    queued = queue_tasks(app.url, tasks, MODEL, bench.prompt)
    return app, queued, queued_at + bench.emulator_delay / 10 + 1.0


def with_control(bench, emulator, label: str, ntasks: int):
    """A fresh app with `ntasks` tasks, and its control: another fresh app whose tasks are queued at the same moment
    and which nobody watches. Returns app, its tasks, control, its tasks, when they all stream (monotonic)."""
    app = bench.app(f"app-{label}", emulator.url, bench.stores.new_url(label))
    control = bench.app(f"app-{label}-control", emulator.url, bench.stores.new_url(f"{label}-control"))
    queued_at = time.monotonic()
    tasks, control_tasks = [], []
    for _ in range(ntasks):  # alternately, so that each app's tasks are as far along as the other's
        tasks += queue_tasks(app.url, 1, MODEL, bench.prompt)
        control_tasks += queue_tasks(control.url, 1, MODEL, bench.prompt)
    return app, tasks, control, control_tasks, queued_at + bench.emulator_delay / 10 + 1.0


def stop_control(bench, control, tasks: list[dict]):
    "Stop the control; its tasks must still have been streaming, or the window saw the end of their lives."
    final = [httpx2.get(f"{control.url}/api/status/{task['id']}", timeout=5).json()["status"] for task in tasks]
    bench.stop(control)
    if any(status != "in_progress" for status in final): raise BenchError(f"tasks not streaming to the window's end: {final}")


def sse_cpu(bench, emulator, viewers: int, ntasks: int, seconds: float, form: str) -> dict:
    app, tasks, control, control_tasks, streaming_at = with_control(bench, emulator, "sse", ntasks)
    pids = {"app": app.proc.pid, "control": control.proc.pid, "emulator": emulator.proc.pid, "load": _self()}

    async def hold(watches):
        window = Cpu(**pids).start()
        chunks = sum(w.chunks for w in watches)
        await asyncio.sleep(seconds)
        used = window.stop()
        return {"cpu": used, "seconds": window.seconds, "chunks": sum(w.chunks for w in watches) - chunks,
                "ended": sum(w.done for w in watches)}

    seen = asyncio.run(open_streams(app, emulator, tasks, viewers, form, streaming_at, hold, pids))
    stop_control(bench, control, control_tasks)
    bench.stop(app)
    return seen


def poll_cpu(bench, emulator, viewers: int, ntasks: int, seconds: float) -> dict:
    app, tasks, control, control_tasks, streaming_at = with_control(bench, emulator, "poll", ntasks)
    pids = {"app": app.proc.pid, "control": control.proc.pid, "emulator": emulator.proc.pid, "load": _self()}
    urls = [f"{app.url}/api/status/{task['id']}" for task in tasks]
    time.sleep(max(0.0, streaming_at - time.monotonic()))
    window = Cpu(**pids).start()
    polled = asyncio.run(poll(urls, viewers, seconds))
    used = window.stop()
    stop_control(bench, control, control_tasks)
    bench.stop(app)
    return {"cpu": used, "seconds": window.seconds, "polled": polled}


def memory(bench, emulator, streams: int, ntasks: int, form: str) -> dict:
    app, tasks, streaming_at = new_app(bench, emulator, "streams", ntasks)
    pid = app.proc.pid
    pids = {"app": pid, "emulator": emulator.proc.pid, "load": _self()}

    async def warm_up():  # the stream's code paths run once, so that the 0-stream figure holds them
        gate = asyncio.Semaphore(CONNECTING)
        async with httpx2.AsyncClient(timeout=httpx2.Timeout(30, read=None)) as client:
            ws = [Watch(events_url(app.url, task, form)) for task in tasks for _ in range(4)]
            running = [asyncio.create_task(watch(client, w, gate)) for w in ws]
            await asyncio.sleep(1.5)
            for task in running: task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    asyncio.run(warm_up())
    time.sleep(1.0)
    rss0, fds0 = statistics.median(_samples(lambda: rss_kb(pid))), open_fds(pid)
    limit = open_files_limit(pid)

    async def hold(watches):
        await asyncio.sleep(2.0)
        rss1, fds1 = statistics.median(await _asamples(lambda: rss_kb(pid))), open_fds(pid)
        say(f"  RSS {rss0:,.0f} KB with 0 streams, {rss1:,.0f} KB with {streams} ({fds1} fds)")
        window, peak = Cpu(**pids).start(), rss1
        chunks, deadline = sum(w.chunks for w in watches), time.monotonic() + bench.emulator_delay + 30
        while not all(w.done or w.error for w in watches) and time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            peak = max(peak, rss_kb(pid))
        used = window.stop()
        return {"rss1": rss1, "fds1": fds1, "peak": peak, "cpu": used, "seconds": window.seconds,
                "chunks": sum(w.chunks for w in watches) - chunks, "done": sum(w.done for w in watches),
                "receiving": sum(len(w.arrivals) >= 3 for w in watches)}

    seen = asyncio.run(open_streams(app, emulator, tasks, streams, form, time.monotonic(), hold, pids))
    time.sleep(1.0)
    seen |= {"rss0": rss0, "fds0": fds0, "limit": limit, "rss_after": rss_kb(pid)}
    bench.stop(app)
    return seen


def _self() -> int:
    import os
    return os.getpid()


def _samples(read, n: int = 3, gap: float = 0.3) -> list:
    values = []
    for _ in range(n):
        values.append(read())
        time.sleep(gap)
    return values


async def _asamples(read, n: int = 3, gap: float = 0.3) -> list:
    values = []
    for _ in range(n):
        values.append(read())
        await asyncio.sleep(gap)
    return values


def raise_open_files(need: int):
    "This process holds a socket per viewer: lift its soft RLIMIT_NOFILE to the hard limit (it must cover `need`)."
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < need:
        raise BenchError(f"RLIMIT_NOFILE {resource.getrlimit(resource.RLIMIT_NOFILE)} is below the {need} sockets needed")


# ---------------------------------------------------------------- the question

def measure(bench) -> list[Row]:
    args = bench.args
    seconds = args.sse_seconds or (15.0 if args.quick else 60.0)
    bench.emulator_delay = args.sse_delay or (40.0 if args.quick else 120.0)
    viewers, ntasks, streams, form = args.sse_viewers, args.sse_tasks, args.sse_streams, args.sse_format
    bench.prompt = PROMPT + (" [demo:long]" if args.sse_long else "")
    if bench.emulator_delay * 0.9 < seconds + 5:
        raise BenchError(f"--sse-delay {bench.emulator_delay:g} s is too short for {seconds:g} s windows: the tasks would end")
    raise_open_files(max(viewers, streams) * 2 + 100)
    say(f"5. live progress: {viewers} viewers of {ntasks} tasks, SSE vs 2 s polling, {seconds:.0f} s each; "
        f"{streams} open streams (emulator delay {bench.emulator_delay:g} s{', report-length answers' * args.sse_long})")
    emulator = bench.emulator("emulator-sse", delay=bench.emulator_delay, webhook_url=None)
    sse = sse_cpu(bench, emulator, viewers, ntasks, seconds, form)
    say(f"  SSE: app CPU {sse['held']['cpu']['app']:.2f} s (control {sse['held']['cpu']['control']:.2f} s), load "
        f"{sse['held']['cpu']['load']:.2f} s over {sse['held']['seconds']:.1f} s; {sse['held']['chunks']} chunks")
    polled = poll_cpu(bench, emulator, viewers, ntasks, seconds)
    say(f"  poll: app CPU {polled['cpu']['app']:.2f} s (control {polled['cpu']['control']:.2f} s), load "
        f"{polled['cpu']['load']:.2f} s over {polled['seconds']:.1f} s ({polled['polled']['polls']} polls)")
    mem = memory(bench, emulator, streams, ntasks, form)
    bench.stop(emulator)
    return rows(sse, polled, mem, viewers, ntasks, seconds, streams, form, " (report-length answers)" * args.sse_long)


def per_viewer_minute(cpu_s: float, viewers: int, seconds: float) -> float:
    "ms of CPU per viewer-minute"
    return cpu_s * 1000 / (viewers * seconds / 60)


def rows(sse, polled, mem, viewers, ntasks, seconds, streams, form, answers: str) -> list[Row]:
    held = sse["held"]
    sse_ms = per_viewer_minute(held["cpu"]["app"], viewers, held["seconds"])
    poll_ms = per_viewer_minute(polled["cpu"]["app"], viewers, polled["seconds"])
    sse_net = per_viewer_minute(held["cpu"]["app"] - held["cpu"]["control"], viewers, held["seconds"])
    poll_net = per_viewer_minute(polled["cpu"]["app"] - polled["cpu"]["control"], viewers, polled["seconds"])
    control = lambda w: f"{fmt(w['cpu']['control'] / w['seconds'] * 100, 1)}%"
    load = lambda w: f"{w['cpu']['load'] / w['seconds'] * 100:.0f}%"
    head = f"{viewers} viewers of {ntasks} streaming tasks{answers} for {fmt(seconds, 0)} s"
    p = polled["polled"]
    lag_ms = lambda s: f"{fmt(pct(s['lag'], 0.99) * 1000, 0)} ms (max {fmt(max(s['lag'], default=0) * 1000, 0)})"
    table = [
        Row("5a", f"{head}: app CPU per viewer-minute (ms), SSE ({form}) vs 2 s HTMX poll", fmt(sse_ms), fmt(poll_ms),
            times(sse_ms / poll_ms),
            f"polling the running card (GET /api/status/{{id}}, HX-Request) on a fresh app, the relays' CPU in both · "
            f"app CPU {fmt(held['cpu']['app'] / held['seconds'] * 100, 1)}% vs {fmt(polled['cpu']['app'] / polled['seconds'] * 100, 1)}% "
            f"of a core; {held['chunks']:,} SSE chunks received vs {p['polls']:,} polls {p['statuses']} (poll p99 "
            f"{fmt(p['p99_ms'])} ms); opening a stream cost {fmt(sse['connect_cpu_ms'])} ms of app CPU once · load generator "
            f"CPU {load(held)} vs {load(polled)} of a core, its loop lag p99 {lag_ms(sse)}; emulator "
            f"{fmt(held['cpu']['emulator'] / held['seconds'] * 100, 1)}%"),
        Row("5a", f"{head}: the same net of the relays' own CPU (ms per viewer-minute)", fmt(sse_net), fmt(poll_net),
            times(sse_net / poll_net),
            f"goal ≤ {GOAL_RATIO:g}x: the CPU a viewer adds · each side's control (a fresh app in the same window, "
            f"{ntasks} tasks queued with the app's, no viewer: the relays alone) used {control(held)} and "
            f"{control(polled)} of a core, taken off its side"),
    ]
    lat, first = [x * 1000 for x in sse["latency"]], [x * 1000 for x in sse["first"]]
    table.append(Row("5c", f"{head}: event latency p99 (ms), emulator sent → viewer received", fmt(pct(lat, 0.99)),
                     fmt(GOAL_P99_MS, 0), times(pct(lat, 0.99) / GOAL_P99_MS),
                     f"goal · p50 {fmt(pct(lat, 0.5))} ms, max {fmt(max(lat, default=float('nan')))} ms over {len(lat):,} "
                     f"(event, viewer) pairs, {sse['missed']} never arrived; first live event (in_progress: the viewers opened before it) p50 "
                     f"{fmt(pct(first, 0.5))} / p99 {fmt(pct(first, 0.99))} ms over {len(first)} viewers; reference: the "
                     f"emulator's stream of the same response read in the same loop"))
    h = mem["held"]
    per_stream = (h["rss1"] - mem["rss0"]) / streams
    mlat = [x * 1000 for x in mem["latency"]]
    table += [
        Row("5b", f"{streams} open SSE streams on one process: app memory per stream (KB of VmRSS)", fmt(per_stream, 1),
            "", "", f"VmRSS {mem['rss0']:,.0f} KB with 0 streams (after a warm-up), {h['rss1']:,.0f} KB with {streams} "
            f"open, peak {h['peak']:,.0f} KB while they followed {ntasks} tasks to the end, {mem['rss_after']:,.0f} KB after "
            f"they closed; fds {mem['fds0']} → {h['fds1']} (app's open-files limit {mem['limit']}); opening them took "
            f"{fmt(mem['connect_seconds'], 1)} s, {fmt(mem['connect_cpu_ms'])} ms of app CPU each"),
        Row("5b", f"{streams} open SSE streams on one process: viewers that received `done`", f"{h['done']} of {streams}",
            "", "", f"{h['receiving']} received ≥ 3 id-bearing chunks; errors {sorted(set(mem['errors'])) or 'none'}; "
                    f"{h['chunks']:,} chunks in {fmt(h['seconds'], 0)} s; app CPU {fmt(h['cpu']['app'] / h['seconds'] * 100, 1)}% "
                    f"of a core ({fmt(per_viewer_minute(h['cpu']['app'], streams, h['seconds']))} ms per viewer-minute), load "
                    f"generator {load(h)}, its loop lag p99 {lag_ms(mem)}"),
        Row("5c", f"{streams} open SSE streams: event latency p99 (ms)", fmt(pct(mlat, 0.99)), fmt(GOAL_P99_MS, 0),
            times(pct(mlat, 0.99) / GOAL_P99_MS),
            f"goal · p50 {fmt(pct(mlat, 0.5))} ms over {len(mlat):,} (event, viewer) pairs, {mem['missed']} never arrived"),
    ]
    return table


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
