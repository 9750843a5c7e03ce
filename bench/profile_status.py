"""Where the time of GET /api/status/{id} goes: the evidence behind bench/run.py's ratios.

`.venv/bin/python bench/profile_status.py` writes bench/results/profile-*.txt and prints a summary:

1. In process (no sockets, one task, N sequential ASGI calls): microseconds per request for the
   app and for bench/bare_app.py, JSON and HTMX, with and without a browser's session cookie; then
   the cost of each step the app takes, timed alone; then cProfile and pyinstrument of the app's loop.
2. Under load: the app served by uvicorn under `pyinstrument -r text` while wrk loads the status
   route (JSON, then HTMX), stopped with SIGINT so that pyinstrument writes its report.
"""
import argparse
import asyncio
import atexit
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from copy import deepcopy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))
WORK = Path(tempfile.mkdtemp(prefix="profile-"))
atexit.register(shutil.rmtree, WORK, True)
os.environ.update({"DATABASE_URL": f"sqlite:///{WORK}/import.db", "SESSION_SECRET": "profile-session-secret",
                   "OPENAI_API_KEY": "", "APP_ACCESS_TOKENS": ""})
os.chdir(ROOT)

import run  # noqa: E402  (bench/run.py: servers, wrk)


def scope_for(path: str, hx: bool, cookie: bytes | None = None, method: str = "GET") -> dict:
    "An HTTP scope as uvicorn makes one for wrk's request."
    headers = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
    if hx: headers.append((b"hx-request", b"true"))
    if cookie: headers.append((b"cookie", cookie))
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}


async def receive(): return {"type": "http.request", "body": b"", "more_body": False}


async def call(asgi, scope) -> list[dict]:
    sent = []

    async def send(message): sent.append(message)
    await asgi({**scope, "state": {}}, receive, send)
    return sent


async def per_call_us(fn, n: int, repeats: int = 5) -> float:
    "Median over `repeats` of the mean microseconds of `await fn()` run n times."
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(n): await fn()
        times.append((time.perf_counter() - started) / n * 1e6)
    return statistics.median(times)


async def read_task(svc, task_id: str):
    "The task as the status route reads it (whichever TaskService API this tree has)."
    if hasattr(svc, "read_quietly"): return await svc.read_quietly(task_id)
    task = await svc.store.get(task_id)
    return await svc.refreshed_quietly(task) if task else None


def with_app_middleware(asgi, settings):
    "`asgi` wrapped in the app's own middleware stack (security headers, body limit, sessions)."
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.sessions import SessionMiddleware
    from app import body_too_large
    from middleware import BodyLimit, SecurityHeaders
    return Starlette(routes=asgi.routes, middleware=[
        Middleware(SecurityHeaders), Middleware(BodyLimit, limit=settings.max_body_bytes, refuse=body_too_large),
        Middleware(SessionMiddleware, secret_key="profile-session-secret", session_cookie="session", same_site="lax")])


async def in_process(n: int, out: list[str]):
    from concurrent.futures import ThreadPoolExecutor
    from app import create_app
    from config import Settings
    from emulator import demo_answer
    from fasthtml.common import to_xml
    from fasthtml.core import _params, parse_form
    from itsdangerous import TimestampSigner
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    import base64
    import json as jsonlib
    import sqlite3
    import bare_app
    import ui
    from render import markdown_html
    from store import new_task_row
    from tasks import task_json

    # RECONCILE_SECONDS of an hour: the running task is never due, so no figure includes a call to OpenAI.
    settings = Settings(database_url=f"sqlite:///{WORK}/profile.db", session_secret="profile-session-secret",
                        reconcile_seconds=3600)
    app = create_app(settings)
    svc = await app.state.service()
    prompt = run.PROMPT + " (bench 0)"
    task, _ = await svc.store.create(new_task_row(id="task_profile000000000", owner="browser_profile", prompt=prompt,
                                                  model=settings.model))
    await svc.store.attach_response(task["id"], "resp_" + "a" * 48)
    await svc.store.advance(task["id"], "completed", demo_answer(prompt),
                            usage={"input_tokens": 32, "output_tokens": 64, "total_tokens": 96})
    running, _ = await svc.store.create(new_task_row(id="task_profile000000001", owner="browser_profile", prompt=prompt,
                                                     model=settings.model))
    await svc.store.attach_response(running["id"], "resp_" + "b" * 48)
    await svc.store.advance(running["id"], "in_progress")
    await svc.store.claim_check(running["id"], 0)
    path, running_path = f"/api/status/{task['id']}", f"/api/status/{running['id']}"
    first = await call(app, scope_for(path, True, method="GET"))
    cookie = next((v for k, v in first[0]["headers"] if k == b"set-cookie"), None)
    if cookie is None:  # the app may not start a session on a status read: take the one the page starts
        page = await call(app, scope_for("/", False))
        cookie = next(v for k, v in page[0]["headers"] if k == b"set-cookie")
    cookie = cookie.split(b";")[0]
    body = b"".join(m.get("body", b"") for m in await call(app, scope_for(path, False)) if m["type"] == "http.response.body")
    html = b"".join(m.get("body", b"") for m in first if m["type"] == "http.response.body")
    bare_app.TASKS = {task["id"]: jsonlib.loads(body)}
    bare_app.HTML = html.decode()
    bare_with_middleware = with_app_middleware(bare_app.app, settings)
    for asgi in (app, bare_app.app, bare_with_middleware):
        for hx in (False, True):
            answer = await call(asgi, scope_for(path, hx))
            assert answer[0]["status"] == 200, answer[0]

    out.append(f"## In process: {n} sequential ASGI calls per figure, median of 5 (microseconds per request)\n")
    configs = {
        "bare Starlette, JSON": (bare_app.app, scope_for(path, False)),
        "bare Starlette, HTMX": (bare_app.app, scope_for(path, True)),
        "bare Starlette + the app's middleware (security headers, body limit, sessions), JSON":
            (bare_with_middleware, scope_for(path, False)),
        "bare Starlette + the app's middleware, HTMX": (bare_with_middleware, scope_for(path, True)),
        "app, JSON, no cookie (curl)": (app, scope_for(path, False)),
        "app, HTMX, no cookie": (app, scope_for(path, True)),
        "app, JSON, session cookie (a browser)": (app, scope_for(path, False, cookie)),
        "app, HTMX, session cookie (the page's poll of a completed task)": (app, scope_for(path, True, cookie)),
        "app, HTMX, session cookie, running task (the page's every-2-s poll)": (app, scope_for(running_path, True, cookie)),
        "app, JSON, running task": (app, scope_for(running_path, False)),
    }
    figures = {}
    for name, (asgi, scope) in configs.items():
        figures[name] = await per_call_us(lambda asgi=asgi, scope=scope: call(asgi, scope), n)
        out.append(f"- {name}: {figures[name]:.0f} us")
    out.append("")

    row, running_row = await svc.store.get(task["id"]), await svc.store.get(running["id"])
    direct = sqlite3.connect(f"{WORK}/profile.db", check_same_thread=False)
    direct.row_factory = sqlite3.Row
    select = lambda: dict(direct.execute("SELECT * FROM tasks WHERE id = ?", (task["id"],)).fetchone())
    one_thread = ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    req = Request(scope_for(path, True), receive)
    signer = TimestampSigner("profile-session-secret")
    session_value = cookie.split(b"=", 1)[1]
    before = app.before[0] if app.before else None
    uncached_markdown = getattr(markdown_html, "__wrapped__", markdown_html)
    steps = {
        "store.get, as this tree's store does it": lambda: svc.store.get(task["id"]),
        "SELECT by id through a 1-thread executor (await run_in_executor)": lambda: loop.run_in_executor(one_thread, select),
        "SELECT by id on the event loop's thread": lambda: _sync(select),
        "the status route's read (store + TaskService), completed task": lambda: read_task(svc, task["id"]),
        "the status route's read, running task not due for an OpenAI check": lambda: read_task(svc, running["id"]),
        "anyio run_in_threadpool of a no-op (how FastHTML calls a sync `def` handler or `before`)":
            lambda: run_in_threadpool(lambda: None),
        "fasthtml _params(before): inspect.signature, redone per request for the app-level `before`":
            lambda: _sync(lambda: _params(getattr(before, "f", before))) if before else _sync(lambda: None),
        "fasthtml parse_form on a GET (run for `before` and again for the route)": lambda: parse_form(req),
        "FastHTML per-request deepcopy of hdrs/ftrs/htmlkw/bodykw":
            lambda: _sync(lambda: list(map(deepcopy, (app.hdrs, app.ftrs, app.htmlkw, app.bodykw)))),
        "task_json + JSONResponse (JSON body)": lambda: _sync(lambda: JSONResponse(task_json(row)).body),
        "ui.task_card + to_xml, completed task (render.markdown_html as it is in this tree)":
            lambda: _sync(lambda: to_xml(ui.task_card(row))),
        "markdown_html(output_text), uncached (markdown-it + nh3)": lambda: _sync(lambda: uncached_markdown(row["output_text"])),
        "ui.task_card + to_xml, running task (no Markdown)": lambda: _sync(lambda: to_xml(ui.task_card(running_row))),
        "session cookie: verify + decode (itsdangerous, base64, json)":
            lambda: _sync(lambda: jsonlib.loads(base64.b64decode(signer.unsign(session_value, max_age=31536000)))),
        "session cookie: encode + sign (on every response whose session is not empty)":
            lambda: _sync(lambda: signer.sign(base64.b64encode(jsonlib.dumps({"owner": "browser_x"}).encode()))),
    }
    out.append(f"## Steps alone ({n} calls each, median of 5, microseconds per call)\n")
    for name, fn in steps.items():
        out.append(f"- {name}: {await per_call_us(fn, n):.1f} us")
    out.append("")
    one_thread.shutdown()

    for label, scope in (("JSON", scope_for(path, False)), ("HTMX", scope_for(path, True))):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(n): await call(app, scope)
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("tottime").print_stats(22)
        stats.sort_stats("cumulative").print_stats(40)
        (RESULTS / f"profile-cprofile-{label.lower()}.txt").write_text(_trim_paths(text.getvalue()))
    with contextlib.suppress(ImportError):
        from pyinstrument import Profiler
        for label, scope in (("JSON", scope_for(path, False)), ("HTMX", scope_for(path, True))):
            profiler = Profiler(interval=0.0001, async_mode="disabled")
            profiler.start()
            for _ in range(n): await call(app, scope)
            profiler.stop()
            tree = profiler.output_text(unicode=True, processor_options=SHOW_ALL_ABOVE_1_PERCENT)
            flat = profiler.output_text(unicode=True, flat=True, processor_options={"show_regex": ".*"})
            (RESULTS / f"profile-inprocess-{label.lower()}.txt").write_text(
                _trim_paths(tree + "\n\nSelf time by function (flat):\n" + "\n".join(flat.splitlines()[:60])))
    direct.close()
    await app.state.shutdown()
    return figures


async def _sync(fn): return fn()


SHOW_ALL_ABOVE_1_PERCENT = {"show_regex": ".*", "filter_threshold": 0.01}


def _render_session(session: Path, report: Path):
    "Text reports (tree, then self time by function) of a saved pyinstrument session."
    render = lambda *extra: subprocess.run(
        [run.PYTHON, "-m", "pyinstrument", "--load", str(session), "-r", "text", "--no-color", "--unicode",
         "--show-regex", ".*", "-p", "processor_options.filter_threshold=0.01", *extra],
        capture_output=True, text=True, timeout=300).stdout
    flat = render("-p", "flat")
    report.write_text(_trim_paths(render() + "\n\nSelf time by function (flat):\n" + "\n".join(flat.splitlines()[:60])))


def _trim_paths(text: str) -> str:
    return text.replace(str(ROOT / ".venv" / "lib"), "…").replace(str(Path(sys.prefix) / "lib"), "…").replace(str(ROOT) + "/", "")


def under_load(seconds: float, out: list[str]):
    "uvicorn under pyinstrument, loaded by wrk; SIGINT makes uvicorn stop and pyinstrument write its report."
    args = run.parse_args(["--quick"])
    args.duration, args.connections, args.threads = seconds, 32, 2
    children = run.Children(WORK)
    bench = run.Bench(args, children, run.SqliteStores(WORK), WORK)
    try:
        for label, hx in (("json", False), ("htmx", True)):
            app_port = run.free_port()
            emulator = bench.emulator(f"emulator-{label}", 0.3, f"http://127.0.0.1:{app_port}/api/webhook")
            report = RESULTS / f"profile-load-{label}.txt"
            session = WORK / f"load-{label}.pyisession"
            env = {**run.base_env(), "OPENAI_API_KEY": "bench-not-a-key", "OPENAI_BASE_URL": emulator.url + "/v1",
                   "OPENAI_WEBHOOK_SECRET": bench.secret, "DATABASE_URL": bench.stores.new_url(f"load-{label}"),
                   "SESSION_SECRET": "profile-session-secret"}
            cmd = [run.PYTHON, "-m", "pyinstrument", "-r", "pyisession", "-i", "0.0005", "-o", str(session),
                   *run.uvicorn_args("app:app", app_port)[1:]]
            app = children.start(f"app-{label}", cmd, env, app_port)
            run.wait_ready(app, "/health")
            task = run.queue_tasks(app.url, 1)[0]
            run.wait_completed(app.url, task["id"])
            url = f"{app.url}/api/status/{task['id']}"
            result = run.wrk(url, seconds, args, hx)
            out.append(f"- under pyinstrument, {label.upper()}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.1f} ms "
                       f"({result.errors} errors) -> bench/results/{report.name}")
            app.proc.send_signal(signal.SIGINT)
            app.proc.wait(60)
            children.running.remove(app)
            children.stop(emulator)
            if session.exists(): _render_session(session, report)
            else: out.append(f"  (no report: {app.log_tail()})")
    finally:
        children.stop_all()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="ASGI calls per in-process figure")
    parser.add_argument("--seconds", type=float, default=10, help="wrk seconds per under-load profile")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = ["# GET /api/status/{id}: where the time goes", ""]
    asyncio.run(in_process(args.requests, out))
    if not args.skip_load:
        out.append("## Under load (uvicorn + wrk -t2 -c32; whole-process pyinstrument reports)\n")
        under_load(args.seconds, out)
    text = "\n".join(out) + "\n"
    (RESULTS / "profile-summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
