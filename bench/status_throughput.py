"""Question 1: GET /api/status/{id} throughput, the app vs bare Starlette answering the same bodies.

1a JSON and 1b HTMX fragment of a completed task; 1c JSON and 1d HTMX card of a running task, as the page
polls it every 2 s. wrk req/s, p99 and the server's CPU per request, in paired rounds against bench/bare_app.py.
"""
import sys

from harness import (BenchError, check_get, free_port, med, measured, paired_rounds, queue_tasks, retrieves, say,
                     wait_completed)
from runner import Row, fmt, main, p99_row, rate_row

KINDS = {"json": ("JSON", False, "application/json"), "html": ("HTMX fragment", True, "text/html")}


def completed_task(bench):
    "The app with one completed task (its emulator answers in 0.5 s and sends the webhook): app, emulator, status URL."
    port = free_port()
    emulator = bench.emulator("emulator-status", delay=0.5, webhook_url=f"http://127.0.0.1:{port}/api/webhook")
    app = bench.app("app-status", emulator.url, bench.stores.new_url("status"), port=port)
    task = queue_tasks(app.url, 1)[0]
    wait_completed(app.url, task["id"])
    return app, emulator, f"/api/status/{task['id']}"


def running_task(bench):
    "The app with a task that stays running (its emulator takes an hour and sends no webhook): app, emulator, URL."
    emulator = bench.emulator("emulator-running", delay=3600, webhook_url=None)
    app = bench.app("app-running", emulator.url, bench.stores.new_url("running"))
    task = queue_tasks(app.url, 1)[0]
    return app, emulator, f"{app.url}/api/status/{task['id']}"


def answers(url: str) -> dict:
    "The JSON and the HTMX answer of `url`, checked."
    return {kind: check_get(url, hx, content_type) for kind, (_, hx, content_type) in KINDS.items()}


def measure(bench) -> list[Row]:
    say("1. GET /api/status/{id}: app vs bare Starlette")
    app, emulator, path = completed_task(bench)
    bodies = {"app": answers(app.url + path)}
    bare = bench.bare({"task": bodies["app"]["json"].json(), "html": bodies["app"]["html"].text})
    bodies["bare"] = answers(bare.url + path)
    running, slow, running_url = running_task(bench)
    bodies["running"] = answers(running_url)
    status = bodies["running"]["json"].json()["status"]
    if status not in ("queued", "in_progress"): raise BenchError(f"task not running: {bodies['running']['json'].text[:200]}")
    configs = {}
    for kind, (_, hx, _) in KINDS.items():
        configs |= {f"bare_{kind}": (bare, bare.url + path, hx), f"app_{kind}": (app, app.url + path, hx),
                    f"running_{kind}": (running, running_url, hx)}
    results = paired_rounds(configs, bench.args, "status")
    calls = retrieves(slow).get("retrieve", 0)
    bench.stop(app, emulator, running, slow, bare)
    sizes = {f"{who}_{kind}": len(answer.content) for who, by_kind in bodies.items() for kind, answer in by_kind.items()}
    return rows(results, sizes, status, calls)


def rows(results: dict, sizes: dict, status: str, calls: int) -> list[Row]:
    "Rows 1a, 1b (completed task) and 1c, 1d (running task), each req/s then p99."
    cpu = lambda top, bottom: (f"; server CPU {fmt(med(r.server_cpu_us for r in results[top]), 0)} vs "
                               f"{fmt(med(r.server_cpu_us for r in results[bottom]), 0)} us/request")
    reconcile = measured("config").Settings().reconcile_seconds
    table = []
    for letter, (kind, (what, _, _)) in zip("ab", KINDS.items()):
        app, bare, measure = f"app_{kind}", f"bare_{kind}", f"GET /api/status/{{id}} {what}"
        table += [rate_row(f"1{letter}", measure, results, app, bare, f"bare Starlette (bench/bare_app.py) answering the "
                           f"same {sizes[bare]} B body (app {sizes[app]} B)"),
                  p99_row(f"1{letter}", measure, results, app, bare, "bare Starlette", cpu(app, bare))]
    for letter, (kind, (what, _, _)) in zip("cd", KINDS.items()):
        app, bare, measure = f"running_{kind}", f"bare_{kind}", f"GET /api/status/{{id}} {what} of a running task"
        table += [rate_row(f"1{letter}", measure, results, app, bare,
                           f"bare Starlette, as in 1{'a' if kind == 'json' else 'b'} · the page's real poll: task {status}, "
                           f"app body {sizes[app]} B; the app called OpenAI's retrieve {calls} times in all "
                           f"(RECONCILE_SECONDS={reconcile:g})"),
                  p99_row(f"1{letter}", measure, results, app, bare, "bare Starlette", cpu(app, bare))]
    return table


if __name__ == "__main__":
    sys.exit(main(sys.modules[__name__]))
