"""Question 4: OpenAI retrieves per running task while viewers poll it, against one per RECONCILE_SECONDS.

100 viewers poll 5 running tasks (the emulator sends no webhook) every 2 s, as the page does, for 60 s
(10 s with --quick); the emulator counts the retrieves the app makes.
"""
import asyncio
import sys
import time

import httpx2

from harness import BenchError, measured, queue_tasks, retrieves, say
from runner import Row, fmt, main, times, within

PERIOD = 2.0  # the page's poll


def add_arguments(parser):
    parser.add_argument("--viewers", type=within(0, 1000, int), default=100, help="viewers polling")
    parser.add_argument("--poll-tasks", type=within(0, 100, int), default=5, help="running tasks they poll")
    parser.add_argument("--poll-seconds", type=within(0, 600), help="how long they poll (default 60, quick 10)")


async def poll(urls: list[str], viewers: int, seconds: float) -> dict:
    "Viewer i polls urls[i % len(urls)] every PERIOD, the viewers spread over the period as real pages are."
    counts, latencies = {}, []
    limits = httpx2.Limits(max_connections=viewers, max_keepalive_connections=viewers)
    async with httpx2.AsyncClient(limits=limits, timeout=10) as client:
        stop_at = time.monotonic() + seconds

        async def viewer(i: int, task_url: str):
            await asyncio.sleep(PERIOD * i / viewers)
            while (started := time.monotonic()) < stop_at:
                try: key = (await client.get(task_url, headers={"HX-Request": "true"})).status_code
                except httpx2.HTTPError as exc: key = type(exc).__name__
                counts[key] = counts.get(key, 0) + 1
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(max(0.0, started + PERIOD - time.monotonic()))

        await asyncio.wait_for(asyncio.gather(*(viewer(i, urls[i % len(urls)]) for i in range(viewers))), seconds + 30)
    latencies.sort()
    return {"polls": sum(counts.values()), "statuses": {str(k): v for k, v in counts.items()},
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")}


def measure(bench) -> list[Row]:
    args = bench.args
    seconds, viewers, n = args.poll_seconds or (10.0 if args.quick else 60.0), args.viewers, args.poll_tasks
    say(f"4. {viewers} viewers polling {n} running tasks every {PERIOD:g} s for {seconds:.0f} s")
    emulator = bench.emulator("emulator-poll", delay=max(120.0, seconds + 60), webhook_url=None)
    app = bench.app("app-poll", emulator.url, bench.stores.new_url("poll"))
    tasks = queue_tasks(app.url, n)
    before = retrieves(emulator).get("retrieve", 0)
    urls = [f"{app.url}/api/status/{task['id']}" for task in tasks]
    polled = asyncio.run(poll(urls, viewers, seconds))
    calls = retrieves(emulator)
    per_task = [calls.get("retrieve:" + task["response_id"], 0) for task in tasks]
    final = [httpx2.get(url, timeout=5).json()["status"] for url in urls]
    bench.stop(app, emulator)
    if any(status not in ("queued", "in_progress") for status in final):
        raise BenchError(f"tasks ended during polling: {final}")
    say(f"  retrieves {calls.get('retrieve', 0) - before} ({per_task}); polls {polled}")
    per_minute = (calls.get("retrieve", 0) - before) / n / (seconds / 60)
    reconcile = measured("config").Settings().reconcile_seconds
    head = f"{viewers} viewers polling {n} running tasks every {PERIOD:g} s for {fmt(seconds, 0)} s"
    return [Row("4", f"{head}: OpenAI retrieves per task", fmt(per_minute * seconds / 60, 1), "", "",
                f"per task {per_task}; {polled['polls']} polls answered {polled['statuses']}, "
                f"poll p99 {fmt(polled['p99_ms'])} ms"),
            Row("4", f"{head}: OpenAI retrieves per task-minute", fmt(per_minute, 1), fmt(60 / reconcile, 0),
                times(per_minute / (60 / reconcile)), f"expected: one per RECONCILE_SECONDS ({reconcile:g} s, the default)")]


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
