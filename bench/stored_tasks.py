"""Question 3: GET /api/status/{id} JSON with 100,000 stored tasks vs 100, in paired wrk rounds.

Two apps on two stores filled with completed tasks; the task read sits in the middle of each.
"""
import json
import sys
import time

from harness import PROMPT, check_get, measured, paired_rounds, say
from runner import Row, main, p99_row, rate_row, within

SMALL = 100


def add_arguments(parser):
    parser.add_argument("--big-tasks", type=within(SMALL, 2_000_000, int), default=100_000,
                        help="tasks in the big store")


def filler(i: int, now: float) -> dict:
    "The fields of a completed task, unique by `i` (ids shaped as the app makes them: task_ + 16 characters)."
    output = f"[Demo mode] Answer {i}. " + "The tide rises and falls twice a day in most places. " * 6
    return {"id": f"task_fill{i:012d}", "response_id": f"resp_fill{i:044d}", "owner": f"browser_bench{i % 997:05d}",
            "status": "completed", "prompt": f"{PROMPT} ({i})", "model": "gpt-5-mini", "output_text": output,
            "usage": json.dumps({"input_tokens": 30, "output_tokens": 60, "total_tokens": 90}),
            "created_at": now - 86400 + i * 0.01, "updated_at": now - 86000 + i * 0.01,
            "started_at": now - 86399 + i * 0.01, "completed_at": now - 86000 + i * 0.01}


def filled_app(bench, label: str, count: int, emulator_url: str, target: dict):
    "An app whose store holds `count` tasks as the app stores them (its own new_task_row), `target` in the middle."
    url, new_row = bench.stores.new_url(label), measured("store").new_task_row
    app = bench.app(f"app-{label}", emulator_url, url)
    started, now = time.monotonic(), time.time()
    bench.stores.insert(url, (new_row(**(target if i == count // 2 else filler(i, now))) for i in range(count)))
    say(f"  inserted {count:,} tasks in {time.monotonic() - started:.1f} s")
    return app


def measure(bench) -> list[Row]:
    big_n = bench.args.big_tasks
    say(f"3. status read with {big_n:,} stored tasks vs {SMALL}")
    emulator = bench.emulator("emulator-size", delay=3, webhook_url=None)
    target = {**filler(0, time.time()), "id": "task_benchtarget00000", "response_id": "resp_benchtarget0"}
    apps = {label: filled_app(bench, label, count, emulator.url, target)
            for label, count in (("small", SMALL), ("big", big_n))}
    path = f"/api/status/{target['id']}"
    for app in apps.values(): check_get(app.url + path, False, "application/json")
    results = paired_rounds({label: (app, app.url + path, False) for label, app in apps.items()}, bench.args, "size")
    bench.stop(*apps.values(), emulator)
    measure, baseline = f"GET /api/status/{{id}} JSON with {big_n:,} stored tasks", f"the app with {SMALL:,} stored tasks"
    return [rate_row("3", measure, results, "big", "small", f"{baseline} · target 0.90-1.10"),
            p99_row("3", measure, results, "big", "small", baseline)]


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
