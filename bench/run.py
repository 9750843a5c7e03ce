"""Benchmarks of the app against a bare Starlette app, measured in the same run.

`.venv/bin/python bench/run.py` (or `make bench`) starts every server itself on free 127.0.0.1
ports (uvicorn, one worker, `--log-level warning`, no access log), measures, prints a Markdown
table and writes it to bench/results/latest.md. Every load goes to 127.0.0.1 and is bounded in
count and time; every child process is stopped on exit, on error and on Ctrl-C.

1. GET /api/status/{id} of a completed task (1a JSON, 1b HTMX fragment), and of a running one as the
   page polls it (1c, 1d): wrk req/s, p99 and the server's CPU per request, vs bare.
2. Verified webhook deliveries at a fixed rate: ack latency, errors, achieved rate, vs bare POST.
3. The status read with 100,000 stored tasks vs 100.
4. OpenAI retrieves per task while 100 viewers poll /api/status every 2 s.

The app runs in OpenAI mode against the standalone emulator (`python emulator.py`).
`--database-url postgresql://...` runs every app on PostgreSQL (a fresh schema each, dropped after).
Each run serves a frozen copy of the app (the working tree, or `--app-ref REF`), so edits made while
it runs do not mix into its figures; `--app-target` serves an experiment from bench/ instead of app:app.
`bench/profile_status.py` gives the profiles behind the status figures.
"""
import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import secrets
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402

from config import new_webhook_secret  # noqa: E402
from emulator import signed_headers  # noqa: E402
from store import TASK_COLUMNS  # noqa: E402

PYTHON = sys.executable
WRK_SCRIPT = BENCH / "wrk.lua"
RESULTS = BENCH / "results" / "latest.md"
RECONCILE_SECONDS = 5.0  # the app's default; the app is started without RECONCILE_SECONDS set
# Set empty for every child, so that neither the caller's environment nor a .env file (config.load_dotenv
# never overrides a variable that is set) changes the defaults being measured.
APP_ENV_NAMES = ("OPENAI_API_KEY", "OPENAI_WEBHOOK_SECRET", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_MODELS",
                 "DATABASE_URL", "SESSION_SECRET", "PORT", "MAX_PROMPT_CHARS", "DEMO_DELAY_SECONDS", "DEMO_WEBHOOKS",
                 "RECONCILE_SECONDS", "APP_ACCESS_TOKENS", "QUEUE_RATE", "RATE_LIMIT_STORAGE_URL",
                 "MAX_RUNNING_PER_OWNER", "VERCEL", "EMULATOR_PORT", "EMULATOR_WEBHOOK_URL", "HOST")
PROMPT = ("Write a long report on how tides form: the Moon and the Sun, spring and neap tides, "
          "and why some bays have two high tides a day and others one.")


class BenchError(Exception):
    "A benchmark step failed; the message says which and why."


# ---------------------------------------------------------------- child processes

def _die_with_parent():
    "In the child: get SIGTERM if this script dies, so no server outlives it even on SIGKILL."
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path
    url: str

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def snapshot_app(workdir: Path, ref: str | None) -> tuple[Path, str]:
    """A frozen copy of the app to serve, so edits made to the tree while the benchmark runs change nothing.

    Without `ref`: the working tree's top-level modules and static/; with `ref`: that commit (`git archive`).
    Returns the copy's folder and a label saying what it is.
    """
    target = workdir / "app"
    target.mkdir()
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)
    if ref:
        archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, capture_output=True)
        if archive.returncode != 0: raise BenchError(f"git archive {ref}: {archive.stderr.decode()[-300:]}")
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        if (ROOT / "static" / "vendor").is_dir() and not (target / "static" / "vendor").exists():
            shutil.copytree(ROOT / "static" / "vendor", target / "static" / "vendor")
        return target, f"git {ref} ({git('rev-parse', '--short', ref).stdout.strip()})"
    digest = hashlib.sha256()
    for path in sorted(ROOT.glob("*.py")):
        shutil.copy2(path, target / path.name)
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    if (ROOT / "static").is_dir(): shutil.copytree(ROOT / "static", target / "static")
    rev = git("rev-parse", "--short", "HEAD").stdout.strip() or "no git"
    changed = [line[3:] for line in git("status", "--porcelain").stdout.splitlines()
               if line[3:].endswith(".py") and "/" not in line[3:]]
    label = f"working tree at {rev}" + (f" + uncommitted {', '.join(changed)}" if changed else "")
    return target, f"{label} (app files sha256 {digest.hexdigest()[:12]})"


class Children:
    """The processes this script started; each is stopped by its own pid."""

    def __init__(self, workdir: Path, app_root: Path = ROOT):
        self.workdir, self.app_root, self.running = workdir, app_root, []

    def start(self, name: str, args: list[str], env: dict, port: int) -> Child:
        log = self.workdir / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, cwd=self.app_root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        child = Child(name, proc, log, f"http://127.0.0.1:{port}")
        self.running.append(child)
        return child

    def stop(self, child: Child, timeout: float = 8.0):
        if child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError): child.proc.send_signal(signal.SIGTERM)
            try: child.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError): child.proc.kill()
                child.proc.wait(5)
        if child in self.running: self.running.remove(child)

    def stop_all(self):
        for child in reversed(list(self.running)): self.stop(child)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def uvicorn_args(target: str, port: int, app_dir: Path = ROOT) -> list[str]:
    return [PYTHON, "-m", "uvicorn", target, "--app-dir", str(app_dir), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log"]


def wait_ready(child: Child, path: str, timeout: float = 30.0):
    "Poll `path` until it answers 200; fail with the child's log if it exits or the time runs out."
    deadline = time.monotonic() + timeout
    with httpx2.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                raise BenchError(f"{child.name} exited with {child.proc.returncode}:\n{child.log_tail()}")
            with contextlib.suppress(httpx2.HTTPError):
                if client.get(child.url + path).status_code == 200: return
            time.sleep(0.1)
    raise BenchError(f"{child.name} did not answer {path} within {timeout:.0f} s:\n{child.log_tail()}")


def cpu_seconds(pid: int) -> float:
    "User + system CPU time a process has used so far (Linux /proc)."
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def base_env() -> dict:
    env = {**os.environ, **dict.fromkeys(APP_ENV_NAMES, "")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# ---------------------------------------------------------------- stores

def filler_row(i: int, now: float) -> dict:
    "A completed task as the app stores one, unique by `i` (ids shaped as the app makes them: task_ + 16 characters)."
    output = f"[Demo mode] Answer {i}. " + "The tide rises and falls twice a day in most places. " * 6
    return {"id": f"task_fill{i:012d}", "response_id": f"resp_fill{i:044d}", "owner": f"browser_bench{i % 997:05d}",
            "idempotency_key": None, "status": "completed", "prompt": f"{PROMPT} ({i})", "model": "gpt-5-mini",
            "reasoning_effort": None, "output_text": output, "error": None,
            "usage": json.dumps({"input_tokens": 30, "output_tokens": 60, "total_tokens": 90}),
            "created_at": now - 86400 + i * 0.01, "updated_at": now - 86000 + i * 0.01,
            "started_at": now - 86399 + i * 0.01, "completed_at": now - 86000 + i * 0.01, "checked_at": None}


class SqliteStores:
    kind = "sqlite"

    def __init__(self, workdir: Path):
        self.workdir = workdir

    def new_url(self, label: str) -> str:
        return f"sqlite:///{self.workdir / label / 'tasks.db'}"

    @staticmethod
    def _path(url: str) -> str: return url.split(":///", 1)[1]

    def insert(self, url: str, rows):
        columns = ", ".join(TASK_COLUMNS)
        sql = f"INSERT INTO tasks ({columns}) VALUES ({', '.join('?' * len(TASK_COLUMNS))})"
        with contextlib.closing(sqlite3.connect(self._path(url), timeout=30)) as db:
            with db:
                db.executemany(sql, ([row[c] for c in TASK_COLUMNS] for row in rows))
            db.execute("ANALYZE")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self): pass


class PostgresStores:
    kind = "postgresql"

    def __init__(self, url: str):
        import psycopg
        self.psycopg, self.url, self.schemas = psycopg, url, []

    def new_url(self, label: str) -> str:
        schema = f"bench_{label}_{secrets.token_hex(4)}"
        with self.psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self.schemas.append(schema)
        return f"{self.url}{'&' if '?' in self.url else '?'}options=-csearch_path%3D{schema}"

    def insert(self, url: str, rows):
        with self.psycopg.connect(url, autocommit=True) as conn:
            with conn.cursor().copy(f"COPY tasks ({', '.join(TASK_COLUMNS)}) FROM STDIN") as copy:
                for row in rows: copy.write_row([row[c] for c in TASK_COLUMNS])
            conn.execute("ANALYZE tasks")

    def close(self):
        with contextlib.suppress(Exception), self.psycopg.connect(self.url, autocommit=True) as conn:
            for schema in self.schemas: conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self.schemas = []


# ---------------------------------------------------------------- servers

@dataclass
class Bench:
    args: argparse.Namespace
    children: Children
    stores: object
    workdir: Path
    secret: str = field(default_factory=new_webhook_secret)

    def emulator(self, name: str, delay: float, webhook_url: str | None) -> Child:
        port = free_port()
        env = {**base_env(), "EMULATOR_PORT": str(port), "DEMO_DELAY_SECONDS": str(delay),
               "DEMO_WEBHOOKS": "on" if webhook_url else "off", "OPENAI_WEBHOOK_SECRET": self.secret,
               "EMULATOR_WEBHOOK_URL": webhook_url or "http://127.0.0.1:9/unused"}
        child = self.children.start(name, [PYTHON, "emulator.py"], env, port)
        wait_ready(child, "/_emulator/stats")
        return child

    def app(self, name: str, emulator_url: str, database_url: str, port: int | None = None) -> Child:
        port = port or free_port()
        env = {**base_env(), "OPENAI_API_KEY": "bench-not-a-key", "OPENAI_BASE_URL": emulator_url + "/v1",
               "OPENAI_WEBHOOK_SECRET": self.secret, "DATABASE_URL": database_url,
               "SESSION_SECRET": secrets.token_hex(32), "QUEUE_RATE": "100000/minute", "MAX_RUNNING_PER_OWNER": "100000"}
        child = self.children.start(name, uvicorn_args(self.args.app_target, port, self.children.app_root), env, port)
        wait_ready(child, "/health")  # also opens the store, so the schema exists from here on
        return child

    def bare(self, sample_file: Path | None = None) -> Child:
        port = free_port()
        env = {**base_env(), **({"BARE_SAMPLE_FILE": str(sample_file)} if sample_file else {})}
        child = self.children.start("bare", uvicorn_args("bare_app:app", port, BENCH), env, port)
        wait_ready(child, "/health")
        return child


def queue_tasks(app_url: str, count: int, prompt: str = PROMPT) -> list[dict]:
    """Queue `count` tasks (the bench apps run with QUEUE_RATE and MAX_RUNNING_PER_OWNER out of reach)."""
    tasks = []
    for i in range(count):
        with httpx2.Client(base_url=app_url, timeout=30) as client:
            client.get("/")
            answer = client.post("/api/queue", json={"prompt": f"{prompt} (bench {i})"})
        if answer.status_code != 202: raise BenchError(f"POST /api/queue answered {answer.status_code}: {answer.text[:300]}")
        tasks.append(answer.json())
    return tasks


def wait_completed(app_url: str, task_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    with httpx2.Client(base_url=app_url, timeout=5) as client:
        while time.monotonic() < deadline:
            task = client.get(f"/api/status/{task_id}").json()
            if task["status"] == "completed": return task
            time.sleep(0.2)
    raise BenchError(f"task {task_id} did not complete within {timeout:.0f} s (last status {task['status']})")


def emulator_stats(emulator: Child) -> dict:
    return httpx2.get(emulator.url + "/_emulator/stats", timeout=5).json()


# ---------------------------------------------------------------- wrk

@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    server_cpu_us: float = float("nan")  # the server's CPU time per request


def wrk(url: str, seconds: float, args: argparse.Namespace, hx: bool = False, server: Child | None = None) -> WrkResult:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-s", str(WRK_SCRIPT), url]
    env = {**os.environ, "WRK_HX": "1" if hx else "0"}
    cpu_before = cpu_seconds(server.proc.pid) if server else 0.0
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    cpu = cpu_seconds(server.proc.pid) - cpu_before if server else float("nan")
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    errors = f["connect"] + f["read"] + f["write"] + f["status"] + f["timeout"]
    return WrkResult(f["requests"] / (f["duration_us"] / 1e6), f["p50_us"] / 1000, f["p99_us"] / 1000, f["requests"], errors,
                     cpu / max(1, f["requests"]) * 1e6)


def check_get(url: str, hx: bool, want_type: str):
    "One request before loading a URL: it must answer 200 with the expected content type."
    answer = httpx2.get(url, headers={"HX-Request": "true"} if hx else {}, timeout=10)
    if answer.status_code != 200 or want_type not in answer.headers.get("content-type", ""):
        raise BenchError(f"GET {url} (hx={hx}) answered {answer.status_code} {answer.headers.get('content-type')}: {answer.text[:200]}")
    return answer


def paired_rounds(configs: dict[str, tuple[Child, str, bool]], args, label: str) -> dict[str, list[WrkResult]]:
    """Run wrk on each (server, url, hx) config in turn, `args.rounds` times, interleaved so that noise hits all alike."""
    results = {name: [] for name in configs}
    for server, url, hx in configs.values():  # warm-up: imports, caches, connection set-up
        wrk(url, args.warmup, args, hx)
    for r in range(args.rounds):
        for name, (server, url, hx) in configs.items():
            result = wrk(url, args.duration, args, hx, server)
            if result.errors: raise BenchError(f"{label} {name}: wrk saw {result.errors} errors of {result.requests}")
            results[name].append(result)
            say(f"  {label} round {r + 1}/{args.rounds} {name}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, "
                f"server CPU {result.server_cpu_us:.0f} us/request")
    return results


def med(values) -> float: return statistics.median(values)


def ratio_of(results, top: str, bottom: str, attr: str) -> float:
    "Median over rounds of the per-round ratio top/bottom (each round's pair ran back to back)."
    return med([getattr(a, attr) / getattr(b, attr) for a, b in zip(results[top], results[bottom])])


# ---------------------------------------------------------------- scenarios

def say(message: str): print(message, file=sys.stderr, flush=True)


def scenario_status(bench: Bench, out: dict):
    say("1. GET /api/status/{id}: app vs bare Starlette")
    app_port = free_port()
    emulator = bench.emulator("emulator-status", delay=0.5, webhook_url=f"http://127.0.0.1:{app_port}/api/webhook")
    app = bench.app("app-status", emulator.url, bench.stores.new_url("status"), port=app_port)
    task = queue_tasks(app.url, 1)[0]
    wait_completed(app.url, task["id"])
    url = f"/api/status/{task['id']}"
    json_body = check_get(app.url + url, False, "application/json")
    html_body = check_get(app.url + url, True, "text/html")
    sample = bench.workdir / "bare-sample.json"
    sample.write_text(json.dumps({"task": json_body.json(), "html": html_body.text}))
    bare = bench.bare(sample)
    bare_json, bare_html = check_get(bare.url + url, False, "application/json"), check_get(bare.url + url, True, "text/html")
    # A task that stays running (the emulator takes an hour; no webhook), as the page polls it every 2 s.
    slow = bench.emulator("emulator-running", delay=3600, webhook_url=None)
    app_running = bench.app("app-running", slow.url, bench.stores.new_url("running"))
    running = queue_tasks(app_running.url, 1)[0]
    running_url = f"{app_running.url}/api/status/{running['id']}"
    running_json, running_html = check_get(running_url, False, "application/json"), check_get(running_url, True, "text/html")
    if running_json.json()["status"] not in ("queued", "in_progress"): raise BenchError(f"task not running: {running_json.text[:200]}")
    results = paired_rounds({"bare_json": (bare, bare.url + url, False), "app_json": (app, app.url + url, False),
                             "running_json": (app_running, running_url, False),
                             "bare_html": (bare, bare.url + url, True), "app_html": (app, app.url + url, True),
                             "running_html": (app_running, running_url, True)},
                            bench.args, "status")
    retrieves = emulator_stats(slow)["calls"].get("retrieve", 0)
    out["status"] = {"results": results, "running_status": running_json.json()["status"], "running_retrieves": retrieves,
                     "bytes": {"app_json": len(json_body.content), "bare_json": len(bare_json.content),
                               "app_html": len(html_body.content), "bare_html": len(bare_html.content),
                               "running_json": len(running_json.content), "running_html": len(running_html.content)}}
    for child in (app, emulator, app_running, slow): bench.children.stop(child)
    out["bare"] = bare  # kept for the webhook baseline


def scenario_size(bench: Bench, out: dict):
    small_n, big_n = 100, bench.args.big_tasks
    say(f"3. status read with {big_n:,} stored tasks vs {small_n}")
    emulator = bench.emulator("emulator-size", delay=3, webhook_url=None)
    now = time.time()
    target = {**filler_row(0, now), "id": "task_benchtarget00000", "response_id": "resp_benchtarget0"}
    apps = {}
    for label, count in (("small", small_n), ("big", big_n)):
        url = bench.stores.new_url(label)
        app = bench.app(f"app-{label}", emulator.url, url)
        started = time.monotonic()
        half = count // 2
        rows = (target if i == half else filler_row(i, now) for i in range(count))
        bench.stores.insert(url, rows)
        say(f"  inserted {count:,} tasks in {time.monotonic() - started:.1f} s")
        apps[label] = app
    path = f"/api/status/{target['id']}"
    for app in apps.values(): check_get(app.url + path, False, "application/json")
    results = paired_rounds({"small": (apps["small"], apps["small"].url + path, False),
                             "big": (apps["big"], apps["big"].url + path, False)}, bench.args, "size")
    out["size"] = {"results": results, "small_n": small_n, "big_n": big_n}
    for app in apps.values(): bench.children.stop(app)
    bench.children.stop(emulator)


async def _fire_at_rate(url: str, events: list[tuple[bytes, dict]], rate: float, limit_seconds: float) -> dict:
    "Open loop: event i is sent at t0 + i/rate whatever earlier ones are doing; latency counts from that time."
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
    errors = sum(n for k, n in statuses.items() if k != 200) + len(not_done)
    ok = statuses.get(200, 0)
    latencies.sort()
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
    return {"sent": len(events), "ok": ok, "errors": errors, "statuses": {str(k): v for k, v in statuses.items()},
            "outcomes": outcomes, "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
            "send_rate": len(events) / sent_in if sent_in > 0 else float("nan"),
            "achieved_rate": ok / (ended - t0) if ended > t0 else float("nan")}


def fire_measured(url: str, events, rate: float, limit: float, servers: dict[str, Child]) -> dict:
    "_fire_at_rate, plus the CPU milliseconds each server and this generator spent per event."
    before = {name: cpu_seconds(child.proc.pid) for name, child in servers.items()}
    generator_before = time.process_time()
    result = asyncio.run(_fire_at_rate(url, events, rate, limit))
    result["cpu_ms_per_event"] = {name: (cpu_seconds(child.proc.pid) - before[name]) / len(events) * 1000
                                  for name, child in servers.items()}
    result["cpu_ms_per_event"]["generator"] = (time.process_time() - generator_before) / len(events) * 1000
    return result


def webhook_events(secret: str, response_ids: list[str], count: int, run: str) -> list[tuple[bytes, dict]]:
    events = []
    for i in range(count):
        body = json.dumps({"object": "event", "id": f"evt_{run}_{i}", "type": "response.completed",
                           "created_at": int(time.time()), "data": {"id": response_ids[i % len(response_ids)]}}).encode()
        events.append((body, signed_headers(secret, body, webhook_id=f"wh_{run}_{i:07d}")))
    return events


def scenario_webhooks(bench: Bench, out: dict):
    args = bench.args
    count = int(args.webhook_rate * args.webhook_seconds)
    say(f"2. verified webhooks: {count} events at {args.webhook_rate:.0f}/s")
    emulator = bench.emulator("emulator-webhook", delay=3600, webhook_url=None)
    app = bench.app("app-webhook", emulator.url, bench.stores.new_url("webhook"))
    tasks = queue_tasks(app.url, args.webhook_tasks)
    response_ids = [t["response_id"] for t in tasks]
    bare = out.get("bare") or bench.bare()
    limit = args.webhook_seconds + 30
    warm = webhook_events(bench.secret, response_ids, 50, "warm" + secrets.token_hex(3))
    asyncio.run(_fire_at_rate(app.url + "/api/webhook", warm, 100, 10))
    asyncio.run(_fire_at_rate(bare.url + "/api/webhook", warm, 100, 10))
    before = emulator_stats(emulator)["calls"].get("retrieve", 0)
    app_result = fire_measured(app.url + "/api/webhook", webhook_events(bench.secret, response_ids, count, secrets.token_hex(4)),
                               args.webhook_rate, limit, {"app": app, "emulator": emulator})
    retrieves = emulator_stats(emulator)["calls"].get("retrieve", 0) - before
    bare_result = fire_measured(bare.url + "/api/webhook", webhook_events(bench.secret, response_ids, count, secrets.token_hex(4)),
                                args.webhook_rate, limit, {"app": bare})
    say(f"  app: {app_result}")
    say(f"  bare: {bare_result}")
    out["webhooks"] = {"app": app_result, "bare": bare_result, "retrieves": retrieves, "tasks": len(tasks),
                       "rate": args.webhook_rate, "seconds": args.webhook_seconds}
    bench.children.stop(app)
    bench.children.stop(emulator)


async def _poll(urls: list[str], viewers: int, period: float, seconds: float) -> dict:
    counts, latencies = {}, []
    limits = httpx2.Limits(max_connections=viewers, max_keepalive_connections=viewers)
    async with httpx2.AsyncClient(limits=limits, timeout=10) as client:
        stop_at = time.monotonic() + seconds

        async def viewer(i: int, task_url: str):
            await asyncio.sleep(period * i / viewers)  # viewers' polls spread over the period, as real pages are
            while (started := time.monotonic()) < stop_at:
                try:
                    answer = await client.get(task_url, headers={"HX-Request": "true"})
                    key = answer.status_code
                except httpx2.HTTPError as exc:
                    key = type(exc).__name__
                counts[key] = counts.get(key, 0) + 1
                latencies.append(time.monotonic() - started)
                await asyncio.sleep(max(0.0, started + period - time.monotonic()))

        viewers_done = [asyncio.create_task(viewer(i, urls[i % len(urls)])) for i in range(viewers)]
        await asyncio.wait_for(asyncio.gather(*viewers_done), seconds + 30)
    latencies.sort()
    return {"polls": sum(counts.values()), "statuses": {str(k): v for k, v in counts.items()},
            "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else float("nan")}


def scenario_polling(bench: Bench, out: dict):
    args = bench.args
    seconds, n = args.poll_seconds, args.poll_tasks
    say(f"4. {args.viewers} viewers polling {n} running tasks every 2 s for {seconds:.0f} s")
    delay = max(120.0, seconds + 60)
    emulator = bench.emulator("emulator-poll", delay=delay, webhook_url=None)
    app = bench.app("app-poll", emulator.url, bench.stores.new_url("poll"))
    tasks = queue_tasks(app.url, n)
    before = emulator_stats(emulator)["calls"].get("retrieve", 0)
    urls = [f"{app.url}/api/status/{t['id']}" for t in tasks]
    polled = asyncio.run(_poll(urls, args.viewers, 2.0, seconds))
    stats = emulator_stats(emulator)["calls"]
    per_task = [stats.get("retrieve:" + t["response_id"], 0) for t in tasks]
    final = [httpx2.get(u, timeout=5).json()["status"] for u in urls]
    if any(s not in ("queued", "in_progress") for s in final): raise BenchError(f"tasks ended during polling: {final}")
    out["polling"] = {"retrieves": stats.get("retrieve", 0) - before, "per_task": per_task, "tasks": n,
                      "seconds": seconds, "viewers": args.viewers, "polled": polled}
    say(f"  retrieves {out['polling']['retrieves']} ({per_task}); polls {polled}")
    bench.children.stop(app)
    bench.children.stop(emulator)


# ---------------------------------------------------------------- report

def fmt(value: float, digits: int = 2) -> str:
    return f"{value:,.{digits}f}"


def report(out: dict, args, command: str, started: float) -> str:
    lines = ["# Benchmark results", "",
             f"Command: `{command}`", "",
             f"App measured: {args.app_label}", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · "
             f"{platform.python_implementation()} {platform.python_version()} · {os.cpu_count()} CPUs · "
             f"load average before {args.load_before} · store {args.store_kind} · took {time.monotonic() - started:.0f} s", "",
             f"Servers: uvicorn, 1 worker each, `--log-level warning --no-access-log`. wrk `-t{args.threads} "
             f"-c{args.connections} -d{args.duration:g}s`, {args.rounds} round(s) per figure, the two sides of a ratio "
             "run back to back in each round; figures are medians over rounds, ratios the median of the per-round "
             "ratios. \"Server CPU\" is the server process's user+system time divided by the requests it answered.", "",
             "| # | measure | result | baseline | ratio | baseline is · notes |", "| --- | --- | ---: | ---: | ---: | --- |"]
    row = lambda *cells: lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    x = lambda value: fmt(value) + "x"
    if "status" in out:
        res, size = out["status"]["results"], out["status"]["bytes"]

        def p99_row(label, measure, app_key, bare_key):
            a, b = res[app_key], res[bare_key]
            row(label, f"GET /api/status/{{id}} {measure}", fmt(med(r.p99_ms for r in a)), fmt(med(r.p99_ms for r in b)),
                x(ratio_of(res, app_key, bare_key, "p99_ms")),
                f"bare Starlette · p50 {fmt(med(r.p50_ms for r in a))} ms vs {fmt(med(r.p50_ms for r in b))} ms; "
                f"server CPU {fmt(med(r.server_cpu_us for r in a), 0)} vs {fmt(med(r.server_cpu_us for r in b), 0)} us/request")
        for kind, label in (("json", "1a"), ("html", "1b")):
            a, b = res[f"app_{kind}"], res[f"bare_{kind}"]
            what = "JSON" if kind == "json" else "HTMX fragment (`HX-Request: true`)"
            row(label, f"GET /api/status/{{id}} {what}, req/s", fmt(med(r.rps for r in a), 0), fmt(med(r.rps for r in b), 0),
                x(ratio_of(res, f"app_{kind}", f"bare_{kind}", "rps")),
                f"bare Starlette (bench/bare_app.py) answering the same {size[f'bare_{kind}']} B body "
                f"(app {size[f'app_{kind}']} B)")
            p99_row(label, f"{what}, p99 latency (ms)", f"app_{kind}", f"bare_{kind}")
        st = out["status"]
        for kind, label in (("json", "1c"), ("html", "1d")):
            a, b = res[f"running_{kind}"], res[f"bare_{kind}"]
            what = "JSON" if kind == "json" else "HTMX fragment"
            row(label, f"GET /api/status/{{id}} {what} of a running task, req/s", fmt(med(r.rps for r in a), 0),
                fmt(med(r.rps for r in b), 0), x(ratio_of(res, f"running_{kind}", f"bare_{kind}", "rps")),
                f"bare Starlette, as in 1{'a' if kind == 'json' else 'b'} · the page's real poll: task "
                f"{st['running_status']}, app body {size[f'running_{kind}']} B; the app called OpenAI's retrieve "
                f"{st['running_retrieves']} times in all (RECONCILE_SECONDS=5)")
            p99_row(label, f"{what} of a running task, p99 latency (ms)", f"running_{kind}", f"bare_{kind}")
    if "webhooks" in out:
        w = out["webhooks"]
        a, b = w["app"], w["bare"]
        cpu = a["cpu_ms_per_event"]
        head = f"verified webhooks at {fmt(w['rate'], 0)}/s for {fmt(w['seconds'], 0)} s"
        row("2", f"{head}: ack p50 (ms)", fmt(a["p50_ms"]), fmt(b["p50_ms"]), x(a["p50_ms"] / b["p50_ms"]),
            "bare Starlette acking the same POSTs unverified · latency counted from each event's scheduled send time "
            "(open loop, asyncio + httpx2)")
        row("2", f"{head}: ack p99 (ms)", fmt(a["p99_ms"]), fmt(b["p99_ms"]), x(a["p99_ms"] / b["p99_ms"]),
            f"bare Starlette · max {fmt(a['max_ms'], 0)} ms vs {fmt(b['max_ms'], 0)} ms")
        row("2", f"{head}: errors", f"{a['errors']} of {a['sent']}", f"{b['errors']} of {b['sent']}", "",
            f"bare Starlette · app answers {a['statuses']} (client timeout 10 s)")
        row("2", f"{head}: achieved rate (acks/s)", fmt(a["achieved_rate"], 0), fmt(b["achieved_rate"], 0),
            x(a["achieved_rate"] / b["achieved_rate"]),
            f"bare Starlette · generator sent {fmt(a['send_rate'], 0)}/s; app outcomes {a['outcomes']}; emulator "
            f"retrieves {w['retrieves']} over {w['tasks']} tasks; CPU ms per event: app {fmt(cpu['app'])}, emulator "
            f"{fmt(cpu['emulator'])}, generator {fmt(cpu['generator'])} (bare {fmt(b['cpu_ms_per_event']['app'])})")
    if "size" in out:
        s = out["size"]
        res = s["results"]
        big, small = f"{s['big_n']:,}", f"{s['small_n']:,}"
        row("3", f"GET /api/status/{{id}} JSON with {big} stored tasks, req/s", fmt(med(r.rps for r in res["big"]), 0),
            fmt(med(r.rps for r in res["small"]), 0), x(ratio_of(res, "big", "small", "rps")),
            f"the app with {small} stored tasks · target 0.90-1.10")
        row("3", f"GET /api/status/{{id}} JSON with {big} stored tasks, p99 (ms)", fmt(med(r.p99_ms for r in res["big"])),
            fmt(med(r.p99_ms for r in res["small"])), x(ratio_of(res, "big", "small", "p99_ms")),
            f"the app with {small} stored tasks · p50 {fmt(med(r.p50_ms for r in res['big']))} ms vs "
            f"{fmt(med(r.p50_ms for r in res['small']))} ms")
    if "polling" in out:
        p = out["polling"]
        per_task = p["retrieves"] / p["tasks"]
        head = f"{p['viewers']} viewers polling {p['tasks']} running tasks every 2 s for {fmt(p['seconds'], 0)} s"
        row("4", f"{head}: OpenAI retrieves per task", fmt(per_task, 1), "", "",
            f"per task {p['per_task']}; {p['polled']['polls']} polls answered {p['polled']['statuses']}, "
            f"poll p99 {fmt(p['polled']['p99_ms'])} ms")
        row("4", f"{head}: OpenAI retrieves per task-minute", fmt(per_task / (p["seconds"] / 60), 1),
            fmt(60 / RECONCILE_SECONDS, 0), x(per_task / (p["seconds"] / 60) / (60 / RECONCILE_SECONDS)),
            f"expected: one per RECONCILE_SECONDS ({RECONCILE_SECONDS:g} s, the default)")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short durations for a smoke run (about a minute)")
    parser.add_argument("--database-url", default="", help="run the apps on this PostgreSQL server (fresh schemas)")
    parser.add_argument("--poll-seconds", type=float, help="scenario 4's polling time (default 60, quick 10)")
    parser.add_argument("--duration", type=float, help="seconds per wrk measurement (default 10, quick 2)")
    parser.add_argument("--rounds", type=int, help="wrk rounds per figure (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--webhook-rate", type=float, default=500.0)
    parser.add_argument("--webhook-seconds", type=float, help="default 10, quick 3")
    parser.add_argument("--webhook-tasks", type=int, default=20)
    parser.add_argument("--big-tasks", type=int, default=100_000)
    parser.add_argument("--poll-tasks", type=int, default=5)
    parser.add_argument("--viewers", type=int, default=100)
    parser.add_argument("--only", default="1,2,3,4", help="which scenarios, e.g. 1,3")
    parser.add_argument("--app-ref", default="", help="measure this git commit of the app (default: the working tree)")
    parser.add_argument("--app-target", default="app:app",
                        help="the ASGI app to serve, MODULE:ATTR; a module found only in bench/ (an experiment) is copied beside the app")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args(argv)
    quick = args.quick
    args.duration = args.duration or (2.0 if quick else 10.0)
    args.rounds = args.rounds or (1 if quick else 3)
    args.poll_seconds = args.poll_seconds or (10.0 if quick else 60.0)
    args.webhook_seconds = args.webhook_seconds or (3.0 if quick else 10.0)
    args.warmup = 1.0 if quick else 2.0
    args.only = {s.strip() for s in args.only.split(",")}
    for name in ("duration", "poll_seconds", "webhook_seconds"):
        if not 0 < getattr(args, name) <= 600: parser.error(f"--{name.replace('_', '-')} must be in (0, 600]")
    if not 0 < args.rounds <= 10: parser.error("--rounds must be 1..10")
    if not 0 < args.webhook_rate <= 5000: parser.error("--webhook-rate must be in (0, 5000]")
    if not 100 < args.big_tasks <= 2_000_000: parser.error("--big-tasks must be in (100, 2,000,000]")
    return args


def display_command() -> str:
    python = os.path.relpath(PYTHON, Path.cwd()) if PYTHON.startswith(str(ROOT)) else PYTHON
    script = os.path.relpath(Path(sys.argv[0]).resolve(), Path.cwd())
    return shlex.join([python, script, *sys.argv[1:]])


def one_run_at_a_time(wait_seconds: float = 1800):
    "Hold a lock for this run: two benchmarks on one machine would each measure the other's load."
    lock = open(Path(tempfile.gettempdir()) / "bench-run.lock", "w")
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline: raise SystemExit("another bench/run.py has held the lock for 30 min: giving up")
            say("another bench/run.py is measuring: waiting for it to end")
            time.sleep(10)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not shutil.which("wrk"): raise SystemExit("wrk is not installed (apt-get install wrk)")
    try: args.lock = one_run_at_a_time()  # held until this process exits
    except KeyboardInterrupt: return 130
    started = time.monotonic()
    args.load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = display_command()

    def on_term(signum, frame): raise KeyboardInterrupt(f"signal {signum}")
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a background job may inherit it ignored
        signal.signal(stop_signal, on_term)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        stores = PostgresStores(args.database_url) if args.database_url else SqliteStores(workdir)
        args.store_kind = stores.kind
        out = {}
        children = Children(workdir)
        try:
            children.app_root, args.app_label = snapshot_app(workdir, args.app_ref or None)
            module = args.app_target.split(":")[0]
            if not (children.app_root / f"{module}.py").exists() and (BENCH / f"{module}.py").exists():
                shutil.copy2(BENCH / f"{module}.py", children.app_root / f"{module}.py")
            if args.app_target != "app:app": args.app_label += f", served as {args.app_target}"
            say(f"app: {args.app_label}")
            bench = Bench(args, children, stores, workdir)
            if "1" in args.only: scenario_status(bench, out)
            if "3" in args.only: scenario_size(bench, out)
            if "2" in args.only: scenario_webhooks(bench, out)
            if "4" in args.only: scenario_polling(bench, out)
        except BenchError as exc:
            say(f"benchmark failed: {exc}")
            return 1
        except KeyboardInterrupt:
            say("interrupted: stopping the servers")
            return 130
        finally:
            children.stop_all()
            stores.close()
    text = report(out, args, command, started)
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    say(f"written to {os.path.relpath(output, Path.cwd())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
