"""Question 2: verified webhook deliveries at a fixed rate, the app's ack latency vs bare Starlette acking unverified.

Open loop (asyncio + httpx2): event i is sent at t0 + i/rate whatever earlier ones are doing, and its latency
counts from that time. Each app ack retrieves the response from the emulator and writes the task.
"""
import asyncio
import contextlib
import json
import secrets
import sys
import time

import httpx2

from harness import cpu_seconds, measured, queue_tasks, retrieves, say
from runner import Row, fmt, main, times, within


def add_arguments(parser):
    parser.add_argument("--webhook-rate", type=within(0, 5000), default=500.0, help="events per second")
    parser.add_argument("--webhook-seconds", type=within(0, 600), help="seconds of events (default 10, quick 3)")
    parser.add_argument("--webhook-tasks", type=within(0, 1000, int), default=20, help="running tasks the events name")


async def fire_at_rate(url: str, events: list[tuple[bytes, dict]], rate: float, limit_seconds: float) -> dict:
    "POST each event at its scheduled time; latencies, answers and rates once all are answered or `limit_seconds` passed."
    latencies, statuses, outcomes = [], {}, {}
    limits = httpx2.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx2.AsyncClient(limits=limits, timeout=10) as client:
        async def fire(body: bytes, headers: dict, scheduled: float):
            try:
                answer = await client.post(url, content=body, headers=headers)
                key = answer.status_code
                with contextlib.suppress(ValueError, AttributeError):
                    outcome = answer.json().get("outcome")
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
            except httpx2.HTTPError as exc:
                key = type(exc).__name__
            statuses[key] = statuses.get(key, 0) + 1
            if key == 200: latencies.append(time.perf_counter() - scheduled)
            return time.perf_counter()

        t0 = time.perf_counter() + 0.1
        pending = []
        for i, (body, headers) in enumerate(events):
            scheduled = t0 + i / rate
            if (wait := scheduled - time.perf_counter()) > 0: await asyncio.sleep(wait)
            pending.append(asyncio.create_task(fire(body, headers, scheduled)))
        sent_in = time.perf_counter() - t0
        done, not_done = await asyncio.wait(pending, timeout=limit_seconds)
        for task in not_done: task.cancel()
        await asyncio.gather(*not_done, return_exceptions=True)
        ended = max((t.result() for t in done), default=time.perf_counter())
    return summary(latencies, statuses, outcomes, len(events), len(not_done),
                   sent_rate=len(events) / sent_in if sent_in > 0 else float("nan"),
                   achieved_rate=statuses.get(200, 0) / (ended - t0) if ended > t0 else float("nan"))


def summary(latencies: list[float], statuses: dict, outcomes: dict, sent: int, unanswered: int, **rates) -> dict:
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
    return {"sent": sent, "errors": sum(n for k, n in statuses.items() if k != 200) + unanswered,
            "statuses": {str(k): v for k, v in statuses.items()}, "outcomes": outcomes, "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else float("nan"), **rates}


def fire_measured(url: str, events, rate: float, limit: float, servers: dict) -> dict:
    "fire_at_rate, plus the CPU milliseconds each server and this generator spent per event."
    before = {name: cpu_seconds(child.proc.pid) for name, child in servers.items()}
    generator_before = time.process_time()
    result = asyncio.run(fire_at_rate(url, events, rate, limit))
    result["cpu_ms_per_event"] = {name: (cpu_seconds(child.proc.pid) - before[name]) / len(events) * 1000
                                  for name, child in servers.items()}
    result["cpu_ms_per_event"]["generator"] = (time.process_time() - generator_before) / len(events) * 1000
    return result


def webhook_events(secret: str, response_ids: list[str], count: int) -> list[tuple[bytes, dict]]:
    "`count` signed response.completed events (new ids each call), over the given responses in turn."
    signed_headers, run = measured("emulator").signed_headers, secrets.token_hex(4)
    events = []
    for i in range(count):
        body = json.dumps({"object": "event", "id": f"evt_{run}_{i}", "type": "response.completed",
                           "created_at": int(time.time()), "data": {"id": response_ids[i % len(response_ids)]}}).encode()
        events.append((body, signed_headers(secret, body, webhook_id=f"wh_{run}_{i:07d}")))
    return events


def measure(bench) -> list[Row]:
    args = bench.args
    rate, seconds = args.webhook_rate, args.webhook_seconds or (3.0 if args.quick else 10.0)
    count = int(rate * seconds)
    say(f"2. verified webhooks: {count} events at {rate:.0f}/s")
    emulator = bench.emulator("emulator-webhook", delay=3600, webhook_url=None)
    app = bench.app("app-webhook", emulator.url, bench.stores.new_url("webhook"))
    response_ids = [task["response_id"] for task in queue_tasks(app.url, args.webhook_tasks)]
    bare = bench.bare()
    warm = webhook_events(bench.secret, response_ids, 50)
    for server in (app, bare): asyncio.run(fire_at_rate(server.url + "/api/webhook", warm, 100, 10))
    before = retrieves(emulator).get("retrieve", 0)
    app_result = fire_measured(app.url + "/api/webhook", webhook_events(bench.secret, response_ids, count), rate,
                               seconds + 30, {"app": app, "emulator": emulator})
    calls = retrieves(emulator).get("retrieve", 0) - before
    bare_result = fire_measured(bare.url + "/api/webhook", webhook_events(bench.secret, response_ids, count), rate,
                                seconds + 30, {"app": bare})
    say(f"  app: {app_result}\n  bare: {bare_result}")
    bench.stop(app, emulator, bare)
    return rows(app_result, bare_result, f"verified webhooks at {fmt(rate, 0)}/s for {fmt(seconds, 0)} s",
                f"emulator retrieves {calls} over {len(response_ids)} tasks")


def rows(a: dict, b: dict, head: str, retrieved: str) -> list[Row]:
    cpu = a["cpu_ms_per_event"]
    return [
        Row("2", f"{head}: ack p50 (ms)", fmt(a["p50_ms"]), fmt(b["p50_ms"]), times(a["p50_ms"] / b["p50_ms"]),
            "bare Starlette acking the same POSTs unverified · latency counted from each event's scheduled send time "
            "(open loop, asyncio + httpx2)"),
        Row("2", f"{head}: ack p99 (ms)", fmt(a["p99_ms"]), fmt(b["p99_ms"]), times(a["p99_ms"] / b["p99_ms"]),
            f"bare Starlette · max {fmt(a['max_ms'], 0)} ms vs {fmt(b['max_ms'], 0)} ms"),
        Row("2", f"{head}: errors", f"{a['errors']} of {a['sent']}", f"{b['errors']} of {b['sent']}", "",
            f"bare Starlette · app answers {a['statuses']} (client timeout 10 s)"),
        Row("2", f"{head}: achieved rate (acks/s)", fmt(a["achieved_rate"], 0), fmt(b["achieved_rate"], 0),
            times(a["achieved_rate"] / b["achieved_rate"]),
            f"bare Starlette · generator sent {fmt(a['sent_rate'], 0)}/s; app outcomes {a['outcomes']}; {retrieved}; "
            f"CPU ms per event: app {fmt(cpu['app'])}, emulator {fmt(cpu['emulator'])}, generator {fmt(cpu['generator'])} "
            f"(bare {fmt(b['cpu_ms_per_event']['app'])})"),
    ]


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
