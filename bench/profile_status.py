"""Where the time of GET /api/status/{id} goes: the evidence behind bench/status_throughput.py's ratios.

`.venv/bin/python bench/profile_status.py` profiles the working tree's app into bench/results/profile-*.txt.
In process (no sockets, N sequential ASGI calls): microseconds per request of the app and of bench/bare_app.py,
JSON and HTMX, with and without a session cookie; each step the app takes, timed alone; cProfile of the loop.
Under load (needs pyinstrument): uvicorn under pyinstrument while wrk loads the status route.
"""
import argparse
import asyncio
import atexit
import base64
import cProfile
import importlib.util
import io
import json
import pstats
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
sys.path.insert(0, str(ROOT))  # the working tree's app, imported into this process
WORK = Path(tempfile.mkdtemp(prefix="profile-"))
atexit.register(shutil.rmtree, WORK, True)

import bare_app  # noqa: E402
import harness  # noqa: E402
import runner  # noqa: E402
import ui  # noqa: E402
from config import Settings, new_webhook_secret  # noqa: E402
from databases import SqliteStores  # noqa: E402
from itsdangerous import TimestampSigner  # noqa: E402
from fasthtml.common import to_xml  # noqa: E402
from render import markdown_html  # noqa: E402
from responses import task_json  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from store import new_task_row  # noqa: E402
from web import create_app  # noqa: E402

SESSION_SECRET = "profile-session-secret"
OUTPUT = ("[Demo mode] No model was called: this answer was made up on your machine.\n\n"
          "- **Your prompt**: 27 words, 160 characters (fingerprint `5f1c2a9e`)\n- **It began**: " + harness.PROMPT + "\n\n"
          + "The tide rises and falls twice a day in most places, pulled by the *Moon* and the *Sun*. " * 8)
HAS_PYINSTRUMENT = importlib.util.find_spec("pyinstrument") is not None


def scope_for(path: str, hx: bool, cookie: bytes | None = None) -> dict:
    "An HTTP scope as uvicorn makes one for wrk's GET."
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    if hx: headers.append((b"hx-request", b"true"))
    if cookie: headers.append((b"cookie", cookie))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": "GET",
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}


async def receive(): return {"type": "http.request", "body": b"", "more_body": False}


async def call(asgi, scope) -> list[dict]:
    sent = []

    async def send(message): sent.append(message)
    await asgi({**scope, "state": {}}, receive, send)
    return sent


def body(sent: list[dict]) -> bytes: return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def _sync(fn): return fn()


async def per_call_us(fn, n: int, repeats: int = 5) -> float:
    "Median over `repeats` of the mean microseconds of `await fn()` run n times."
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n): await fn()
        times.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(times)


def _trim_paths(text: str) -> str:
    return text.replace(str(ROOT / ".venv" / "lib"), "…").replace(str(Path(sys.prefix) / "lib"), "…").replace(str(ROOT) + "/", "")


async def stored_tasks(store, model: str) -> tuple[dict, dict]:
    "A completed task, and a running one just checked with OpenAI (so no figure includes a call to it)."
    prompt, ids = harness.PROMPT + " (bench 0)", ("task_profile000000000", "task_profile000000001")
    for task_id, letter in zip(ids, "ab"):
        await store.create(new_task_row(id=task_id, owner="browser_profile", prompt=prompt, model=model))
        await store.attach_response(task_id, "resp_" + letter * 48)
    await store.advance(ids[0], "completed", output_text=OUTPUT,
                        usage={"input_tokens": 32, "output_tokens": 64, "total_tokens": 96})
    await store.advance(ids[1], "in_progress")
    await store.claim_check(ids[1], 0)
    return await store.get(ids[0]), await store.get(ids[1])


async def request_figures(app, completed: dict, running: dict, cookie: bytes, n: int, out: list[str]):
    "Microseconds per request of the app, bare Starlette, and bare Starlette in the app's middleware."
    path, running_path = f"/api/status/{completed['id']}", f"/api/status/{running['id']}"
    bare_app.TASKS = {completed["id"]: json.loads(body(await call(app, scope_for(path, False))))}
    bare_app.HTML = body(await call(app, scope_for(path, True))).decode()
    with_middleware = Starlette(routes=bare_app.app.routes, middleware=app.user_middleware)
    configs = {
        "bare Starlette, JSON": (bare_app.app, scope_for(path, False)),
        "bare Starlette, HTMX": (bare_app.app, scope_for(path, True)),
        "bare Starlette + the app's middleware (its whole stack: security headers, limits, sessions...), JSON":
            (with_middleware, scope_for(path, False)),
        "bare Starlette + the app's middleware, HTMX": (with_middleware, scope_for(path, True)),
        "app, JSON, no cookie (curl)": (app, scope_for(path, False)),
        "app, HTMX, no cookie": (app, scope_for(path, True)),
        "app, JSON, session cookie (a browser)": (app, scope_for(path, False, cookie)),
        "app, HTMX, session cookie (the page's poll of a completed task)": (app, scope_for(path, True, cookie)),
        "app, HTMX, session cookie, running task (the page's every-2-s poll)": (app, scope_for(running_path, True, cookie)),
        "app, JSON, running task": (app, scope_for(running_path, False)),
    }
    out.append(f"## In process: {n} sequential ASGI calls per figure, median of 5 (microseconds per request)\n")
    for name, (asgi, scope) in configs.items():
        answer = await call(asgi, scope)
        assert answer[0]["status"] == 200, (name, answer[0])
        out.append(f"- {name}: {await per_call_us(lambda asgi=asgi, scope=scope: call(asgi, scope), n):.0f} us")
    out.append("")


async def step_figures(services, completed: dict, running: dict, cookie: bytes, n: int, out: list[str]):
    "Microseconds of each step the status route takes, and of the alternatives it avoids, timed alone."
    direct = sqlite3.connect(services.settings.database_url.split(":///", 1)[1], check_same_thread=False)
    direct.row_factory = sqlite3.Row
    select = lambda: dict(direct.execute("SELECT * FROM tasks WHERE id = ?", (completed["id"],)).fetchone())
    one_thread, loop = ThreadPoolExecutor(max_workers=1), asyncio.get_running_loop()
    signer, session_value = TimestampSigner(SESSION_SECRET), cookie.split(b"=", 1)[1]
    uncached_markdown = getattr(markdown_html, "__wrapped__", markdown_html)
    steps = {
        "store.get": lambda: services.store.get(completed["id"]),
        "SELECT by id through a 1-thread executor (await run_in_executor)": lambda: loop.run_in_executor(one_thread, select),
        "SELECT by id on the event loop's thread": lambda: _sync(select),
        "the status route's read (TaskService.read), completed task": lambda: services.tasks.read(completed["id"]),
        "the status route's read, running task not due for an OpenAI check": lambda: services.tasks.read(running["id"]),
        "anyio run_in_threadpool of a no-op (a hop to a thread)": lambda: run_in_threadpool(lambda: None),
        "task_json + JSONResponse (JSON body)": lambda: _sync(lambda: JSONResponse(task_json(completed)).body),
        "ui.card_html, completed task (each state rendered once, timing filled in)": lambda: _sync(lambda: ui.card_html(completed)),
        "ui.task_card + to_xml, completed task (uncached card)": lambda: _sync(lambda: to_xml(ui.task_card(completed))),
        "markdown_html(output_text), uncached (markdown-it + nh3)": lambda: _sync(lambda: uncached_markdown(completed["output_text"])),
        "ui.task_card + to_xml, running task (no Markdown)": lambda: _sync(lambda: to_xml(ui.task_card(running))),
        "session cookie: verify + decode (itsdangerous, base64, json)":
            lambda: _sync(lambda: json.loads(base64.b64decode(signer.unsign(session_value, max_age=31536000)))),
        "session cookie: encode + sign (on every response whose session is not empty)":
            lambda: _sync(lambda: signer.sign(base64.b64encode(json.dumps({"owner": "browser_x"}).encode()))),
    }
    out.append(f"## Steps alone ({n} calls each, median of 5, microseconds per call)\n")
    for name, fn in steps.items(): out.append(f"- {name}: {await per_call_us(fn, n):.1f} us")
    out.append("")
    one_thread.shutdown()
    direct.close()


async def profiles(app, path: str, n: int):
    "cProfile of n JSON then n HTMX calls, to bench/results/profile-cprofile-*.txt."
    for label, scope in (("json", scope_for(path, False)), ("htmx", scope_for(path, True))):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(n): await call(app, scope)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(22)
        stats.sort_stats("cumulative").print_stats(40)
        (RESULTS / f"profile-cprofile-{label}.txt").write_text(_trim_paths(text.getvalue()))


async def in_process(n: int, out: list[str]):
    # RECONCILE_SECONDS of an hour: the running task is never due, so no figure includes a call to OpenAI.
    settings = Settings(database_url=f"sqlite:///{WORK}/profile.db", session_secret=SESSION_SECRET, reconcile_seconds=3600)
    app = create_app(settings)
    services = app.state.services
    completed, running = await stored_tasks(services.store, settings.model)
    path = f"/api/status/{completed['id']}"
    page = await call(app, scope_for("/", False))  # a browser's session starts with the page
    cookie = next(v for k, v in page[0]["headers"] if k == b"set-cookie").split(b";")[0]
    await request_figures(app, completed, running, cookie, n, out)
    await step_figures(services, completed, running, cookie, n, out)
    await profiles(app, path, n)
    await services.close()


def _render_session(session: Path, report: Path):
    "Text reports (tree, then self time by function) of a saved pyinstrument session."
    render = lambda *extra: subprocess.run(
        [harness.PYTHON, "-m", "pyinstrument", "--load", str(session), "-r", "text", "--no-color", "--unicode",
         "--show-regex", ".*", "-p", "processor_options.filter_threshold=0.01", *extra],
        capture_output=True, text=True, timeout=300).stdout
    flat = render("-p", "flat")
    report.write_text(_trim_paths(render() + "\n\nSelf time by function (flat):\n" + "\n".join(flat.splitlines()[:60])))


def under_load(seconds: float, out: list[str]):
    "uvicorn under pyinstrument, loaded by wrk; SIGINT makes uvicorn stop and pyinstrument write its session."
    args = runner.parse(runner.parser([]), ["--quick", "--seconds", str(seconds)])
    bench = harness.Bench(args, harness.Children(WORK, ROOT), SqliteStores(WORK), WORK, new_webhook_secret())
    try:
        for label, hx in (("json", False), ("htmx", True)):
            port = harness.free_port()
            emulator = bench.emulator(f"emulator-{label}", 0.3, f"http://127.0.0.1:{port}/api/webhook")
            report, session = RESULTS / f"profile-load-{label}.txt", WORK / f"load-{label}.pyisession"
            app = bench.app(f"app-{label}", emulator.url, bench.stores.new_url(f"load-{label}"), port,
                            python_args=["-m", "pyinstrument", "-r", "pyisession", "-i", "0.0005", "-o", str(session)])
            task = harness.queue_tasks(app.url, 1)[0]
            harness.wait_completed(app.url, task["id"])
            result = harness.wrk(f"{app.url}/api/status/{task['id']}", args.seconds, args, hx)
            out.append(f"- under pyinstrument, {label.upper()}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms "
                       f"({result.errors} errors) -> bench/results/{report.name}")
            app.proc.send_signal(signal.SIGINT)
            app.proc.wait(60)
            bench.children.running.remove(app)
            bench.stop(emulator)
            if session.exists(): _render_session(session, report)
            else: out.append(f"  (no report: {app.log_tail()})")
    finally:
        bench.children.stop_all()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="ASGI calls per in-process figure")
    parser.add_argument("--seconds", type=float, default=10, help="wrk seconds per under-load profile")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = ["# GET /api/status/{id}: where the time goes", ""]
    with runner.one_run_at_a_time():  # a benchmark running beside would distort the figures, and these its
        asyncio.run(in_process(args.requests, out))
        if not args.skip_load:
            out.append("## Under load (uvicorn + wrk -t2 -c32; whole-process pyinstrument reports)\n")
            if HAS_PYINSTRUMENT: under_load(args.seconds, out)
            else: out.append("- skipped: pyinstrument is not installed (`.venv/bin/pip install pyinstrument`)")
    text = "\n".join(out) + "\n"
    (RESULTS / "profile-summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
