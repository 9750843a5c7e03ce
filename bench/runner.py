"""One benchmark run: the command line, one run at a time, a frozen copy of the app, and the Markdown table.

A question is a module with `measure(bench) -> list[Row]`, and `add_arguments(parser)` if it has options of
its own. `runner.main(module)` runs one alone; bench/run.py runs several into one table.
"""
import argparse
import contextlib
import fcntl
import hashlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx2

from databases import stores_for
from harness import BENCH, PYTHON, ROOT, Bench, BenchError, Children, med, measured, ratio_of, say


@dataclass
class Row:
    "One line of the table: what was measured, the app's figure, the baseline's, their ratio, and notes."
    question: str
    measure: str
    result: str
    baseline: str = ""
    ratio: str = ""
    notes: str = ""


def fmt(value: float, digits: int = 2) -> str: return f"{value:,.{digits}f}"


def times(value: float) -> str: return fmt(value) + "x"


def rate_row(question: str, measure: str, results: dict, top: str, bottom: str, notes: str) -> Row:
    "Median req/s of paired rounds `top` vs `bottom`, and the median of the per-round ratios."
    return Row(question, f"{measure}, req/s", fmt(med(r.rps for r in results[top]), 0),
               fmt(med(r.rps for r in results[bottom]), 0), times(ratio_of(results, top, bottom, "rps")), notes)


def p99_row(question: str, measure: str, results: dict, top: str, bottom: str, baseline_is: str, more: str = "") -> Row:
    "As rate_row for the p99 latency; the notes add both p50s."
    a, b = results[top], results[bottom]
    return Row(question, f"{measure}, p99 latency (ms)", fmt(med(r.p99_ms for r in a)), fmt(med(r.p99_ms for r in b)),
               times(ratio_of(results, top, bottom, "p99_ms")),
               f"{baseline_is} · p50 {fmt(med(r.p50_ms for r in a))} ms vs {fmt(med(r.p50_ms for r in b))} ms{more}")


def within(low: float, high: float, kind=float):
    "An argparse type: a number in (low, high]."
    def parse(raw: str):
        value = kind(raw)
        if not low < value <= high: raise argparse.ArgumentTypeError(f"{raw} is not in ({low:g}, {high:g}]")
        return value
    return parse


def parser(questions) -> argparse.ArgumentParser:
    "The options every question takes, then each question's own."
    p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short durations for a smoke run")
    p.add_argument("--database-url", default="", help="run the apps on this PostgreSQL server (fresh schemas)")
    p.add_argument("--app-ref", default="", help="measure this git commit of the app (default: the working tree)")
    p.add_argument("--app-target", default="app:app",
                   help="the ASGI app to serve, MODULE:ATTR (a module found only in bench/ is copied beside the app)")
    p.add_argument("--seconds", type=within(0, 600), help="seconds per wrk measurement (default 10, quick 2)")
    p.add_argument("--rounds", type=within(0, 10, int), help="wrk rounds per figure (default 3, quick 1)")
    p.add_argument("--threads", type=within(0, 64, int), default=2, help="wrk threads")
    p.add_argument("--connections", type=within(0, 1024, int), default=32, help="wrk connections")
    for question in questions:
        if hasattr(question, "add_arguments"): question.add_arguments(p)
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    "The options, with the defaults that depend on --quick filled in."
    args = p.parse_args(argv)
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.warmup = 1.0 if args.quick else 2.0
    return args


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


@contextlib.contextmanager
def open_bench(args: argparse.Namespace, workdir: Path):
    "A Bench serving a frozen copy of the app; its children stopped and its stores dropped on the way out."
    app_root, args.app_label = snapshot_app(workdir, args.app_ref or None)
    module = args.app_target.split(":")[0]
    if not (app_root / f"{module}.py").exists() and (BENCH / f"{module}.py").exists():
        shutil.copy2(BENCH / f"{module}.py", app_root / f"{module}.py")
    if args.app_target != "app:app": args.app_label += f", served as {args.app_target}"
    sys.path.insert(0, str(app_root))  # `measured` imports from the copy: its variables, columns, signatures
    say(f"app: {args.app_label}")
    children, stores = Children(workdir, app_root), stores_for(args.database_url, workdir)
    try: yield Bench(args, children, stores, workdir, measured("config").new_webhook_secret())
    except httpx2.HTTPError as exc:  # a server stopped answering: say which died, and why
        dead = [f"\n{c.name} exited with {c.proc.returncode}:\n{c.log_tail()}"
                for c in children.running if c.proc.poll() is not None]
        raise BenchError(f"{exc!r}{''.join(dead)}") from exc
    finally:
        children.stop_all()
        stores.close()


def one_run_at_a_time(wait_seconds: float = 1800):
    "Hold a lock for this run: two benchmarks on one machine would each measure the other's load."
    lock = open(Path(tempfile.gettempdir()) / "bench-run.lock", "w")
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline: raise SystemExit("another benchmark has held the lock for 30 min: giving up")
            say("another benchmark is measuring: waiting for it to end")
            time.sleep(10)


def interrupt_on_signals():
    "SIGTERM and SIGHUP stop the run as Ctrl-C does; SIGINT too, as a background job may inherit it ignored."
    def on_signal(signum, frame): raise KeyboardInterrupt(f"signal {signum}")
    for stop_signal in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(stop_signal, on_signal)


def run_questions(questions, args: argparse.Namespace) -> tuple[str, int]:
    "Measure each question in turn; the report (with what was measured before any failure) and an exit status."
    if not shutil.which("wrk"): raise SystemExit("wrk is not installed (apt-get install wrk)")
    try: lock = one_run_at_a_time()
    except KeyboardInterrupt: raise SystemExit(130)
    started, args.load_before = time.monotonic(), " ".join(f"{x:.2f}" for x in os.getloadavg())
    interrupt_on_signals()
    rows, failure, status = [], "", 0
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        try:
            with open_bench(args, Path(tmp)) as bench:
                for question in questions: rows += question.measure(bench)
        except BenchError as exc: failure, status = f"benchmark failed: {exc}", 1
        except KeyboardInterrupt: failure, status = "interrupted: the servers were stopped", 130
    lock.close()
    if failure: say(failure)
    return report(rows, args, time.monotonic() - started, failure), status


def report(rows: list[Row], args: argparse.Namespace, took: float, failure: str) -> str:
    lines = ["# Benchmark results", "", f"Command: `{display_command()}`", "",
             f"App measured: {getattr(args, 'app_label', '(no copy made)')}", "",
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · "
             f"{platform.python_implementation()} {platform.python_version()} · {os.cpu_count()} CPUs · "
             f"load average before {args.load_before} · store {'postgresql' if args.database_url else 'sqlite'} · "
             f"took {took:.0f} s", "",
             f"Servers: uvicorn, 1 worker each, `--log-level warning --no-access-log`. wrk `-t{args.threads} "
             f"-c{args.connections} -d{args.seconds:g}s`, {args.rounds} round(s) per figure, the two sides of a ratio "
             "run back to back in each round; figures are medians over rounds, ratios the median of the per-round "
             "ratios. \"Server CPU\" is the server process's user+system time divided by the requests it answered.", "",
             "| # | measure | result | baseline | ratio | baseline is · notes |", "| --- | --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {r.question} | {r.measure} | {r.result} | {r.baseline} | {r.ratio} | {r.notes} |" for r in rows]
    if failure: lines += ["", f"**Not finished**: {failure.splitlines()[0]}"]
    return "\n".join(lines) + "\n"


def display_command() -> str:
    python = os.path.relpath(PYTHON, Path.cwd()) if PYTHON.startswith(str(ROOT)) else PYTHON
    return shlex.join([python, os.path.relpath(Path(sys.argv[0]).resolve(), Path.cwd()), *sys.argv[1:]])


def main(question) -> int:
    "Run one question alone and print its table."
    text, status = run_questions([question], parse(parser([question])))
    print(text)
    return status
