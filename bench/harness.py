"""What the benchmark questions share: the servers (the app, the standalone emulator, the bare baseline), wrk, paired rounds.

Every server is a child process on a free 127.0.0.1 port (uvicorn, one worker, `--log-level warning`, no access
log), stopped by its own pid on exit, on error and on Ctrl-C. bench/runner.py makes the run around them.
"""
import argparse
import contextlib
import ctypes
import importlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
PROMPT = ("Write a long report on how tides form: the Moon and the Sun, spring and neap tides, "
          "and why some bays have two high tides a day and others one.")


class BenchError(Exception):
    "A benchmark step failed; the message says which and why."


def say(message: str): print(message, file=sys.stderr, flush=True)


def measured(module: str):
    "A module of the app being measured: its frozen copy comes first on sys.path once a run has started."
    return importlib.import_module(module)


# ---------------------------------------------------------------- child processes

def _die_with_parent():
    "In the child: get SIGTERM if the benchmark dies, so no server outlives it even on SIGKILL."
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


class Children:
    "The processes this run started; each is stopped by its own pid."

    def __init__(self, workdir: Path, app_root: Path):
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


def uvicorn_args(target: str, port: int, app_dir: Path) -> list[str]:
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
    "This environment with every variable the app reads set empty, so neither it nor a .env file moves the defaults."
    config = measured("config")
    if not hasattr(config, "VARIABLES"): raise BenchError("this app predates config.VARIABLES: measure it with its own bench/")
    cleared = {variable.name: "" for variable in config.VARIABLES}
    return {**os.environ, **cleared, "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- servers

@dataclass
class Bench:
    "The servers of one run: the app under test, the standalone emulator it calls, and the bare baseline."
    args: argparse.Namespace
    children: Children
    stores: object
    workdir: Path
    secret: str

    def emulator(self, name: str, delay: float, webhook_url: str | None) -> Child:
        port = free_port()
        env = {**base_env(), "EMULATOR_PORT": str(port), "DEMO_DELAY_SECONDS": str(delay),
               "DEMO_WEBHOOKS": "on" if webhook_url else "off", "OPENAI_WEBHOOK_SECRET": self.secret,
               "EMULATOR_WEBHOOK_URL": webhook_url or "http://127.0.0.1:9/unused"}
        child = self.children.start(name, [PYTHON, "emulator.py"], env, port)
        wait_ready(child, "/_emulator/stats")
        return child

    def app(self, name: str, emulator_url: str, database_url: str, port: int | None = None, python_args=()) -> Child:
        "The app in OpenAI mode against `emulator_url`, queue limits out of reach; `python_args` go before `-m uvicorn`."
        port = port or free_port()
        env = {**base_env(), "OPENAI_API_KEY": "bench-not-a-key", "OPENAI_BASE_URL": emulator_url + "/v1",
               "OPENAI_WEBHOOK_SECRET": self.secret, "DATABASE_URL": database_url,
               "SESSION_SECRET": secrets.token_hex(32), "QUEUE_RATE": "100000/minute", "MAX_RUNNING_PER_OWNER": "100000"}
        python, *uvicorn = uvicorn_args(self.args.app_target, port, self.children.app_root)
        child = self.children.start(name, [python, *python_args, *uvicorn], env, port)
        wait_ready(child, "/health")  # also opens the store, so the schema exists from here on
        return child

    def bare(self, sample: dict | None = None) -> Child:
        "bench/bare_app.py; `sample` ({'task': ..., 'html': ...}) makes it answer the app's very bodies."
        port, env = free_port(), base_env()
        if sample:
            env["BARE_SAMPLE_FILE"] = str(self.workdir / f"bare-sample-{port}.json")
            Path(env["BARE_SAMPLE_FILE"]).write_text(json.dumps(sample))
        child = self.children.start("bare", uvicorn_args("bare_app:app", port, BENCH), env, port)
        wait_ready(child, "/health")
        return child

    def stop(self, *children: Child):
        for child in children: self.children.stop(child)


def queue_tasks(app_url: str, count: int, model: str | None = None, prompt: str = PROMPT) -> list[dict]:
    "Queue `count` tasks, each from a new browser session (with `model`, that model instead of the default)."
    tasks = []
    for i in range(count):
        with httpx2.Client(base_url=app_url, timeout=30) as client:
            client.get("/")
            answer = client.post("/api/queue", json={"prompt": f"{prompt} (bench {i})", **({"model": model} if model else {})})
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


def retrieves(emulator: Child) -> dict[str, int]:
    "The emulator's call counts: `retrieve` in all, and `retrieve:<response id>` each."
    return httpx2.get(emulator.url + "/_emulator/stats", timeout=5).json()["calls"]


def check_get(url: str, hx: bool, want_type: str) -> httpx2.Response:
    "One request before loading a URL: it must answer 200 with the expected content type."
    answer = httpx2.get(url, headers={"HX-Request": "true"} if hx else {}, timeout=10)
    if answer.status_code != 200 or want_type not in answer.headers.get("content-type", ""):
        raise BenchError(f"GET {url} (hx={hx}) answered {answer.status_code} {answer.headers.get('content-type')}: "
                         f"{answer.text[:200]}")
    return answer


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
    "Load `url` with wrk (bench/wrk.lua; `hx` sends HX-Request) and, given `server`, count its CPU per request."
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{max(1, round(seconds))}s", "--latency",
           "-s", str(BENCH / "wrk.lua"), url]
    cpu_before = cpu_seconds(server.proc.pid) if server else 0.0
    done = subprocess.run(cmd, env={**os.environ, "WRK_HX": "1" if hx else "0"}, capture_output=True, text=True,
                          timeout=seconds + 60)
    cpu = cpu_seconds(server.proc.pid) - cpu_before if server else float("nan")
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    f = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    errors = f["connect"] + f["read"] + f["write"] + f["status"] + f["timeout"]
    return WrkResult(f["requests"] / (f["duration_us"] / 1e6), f["p50_us"] / 1000, f["p99_us"] / 1000, f["requests"],
                     errors, cpu / max(1, f["requests"]) * 1e6)


def paired_rounds(configs: dict[str, tuple[Child, str, bool]], args, label: str) -> dict[str, list[WrkResult]]:
    "wrk on each (server, url, hx) config in turn, `args.rounds` times, interleaved so that noise hits all alike."
    results = {name: [] for name in configs}
    for server, url, hx in configs.values():  # warm-up: imports, caches, connection set-up
        wrk(url, args.warmup, args, hx)
    for r in range(args.rounds):
        for name, (server, url, hx) in configs.items():
            result = wrk(url, args.seconds, args, hx, server)
            if result.errors: raise BenchError(f"{label} {name}: wrk saw {result.errors} errors of {result.requests}")
            results[name].append(result)
            say(f"  {label} round {r + 1}/{args.rounds} {name}: {result.rps:,.0f} req/s, p99 {result.p99_ms:.2f} ms, "
                f"server CPU {result.server_cpu_us:.0f} us/request")
    return results


def med(values) -> float: return statistics.median(values)


def ratio_of(results, top: str, bottom: str, attr: str) -> float:
    "Median over rounds of the per-round ratio top/bottom (each round's pair ran back to back)."
    return med([getattr(a, attr) / getattr(b, attr) for a, b in zip(results[top], results[bottom])])
