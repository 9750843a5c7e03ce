"""Benchmarks of the app against a bare Starlette app measured in the same run, one question per script.

`.venv/bin/python bench/run.py [QUESTION ...]` (or `make bench`) runs the questions named (default: all, in
this order), prints one Markdown table and writes it to bench/results/latest.md. Each question also runs
alone: `.venv/bin/python bench/status_throughput.py --quick`. bench/profile_status.py gives the profiles
behind the status figures.
"""
import os
import sys
from pathlib import Path

import status_throughput
import viewers
import stored_tasks
import viewer_retrieves
import webhook_ack
from harness import say
from runner import parse, parser, run_questions

QUESTIONS = {module.__name__: module for module in (status_throughput, webhook_ack, stored_tasks, viewer_retrieves, viewers)}
RESULTS = Path(__file__).resolve().parent / "results" / "latest.md"


def main(argv=None) -> int:
    p = parser(QUESTIONS.values())
    p.add_argument("questions", nargs="*", metavar="QUESTION", help=f"which to run: {', '.join(QUESTIONS)} (default all)")
    p.add_argument("--output", type=Path, default=RESULTS, help="where to write the table")
    args = parse(p, argv)
    if unknown := set(args.questions) - set(QUESTIONS): p.error(f"no such question: {', '.join(sorted(unknown))}")
    text, status = run_questions([QUESTIONS[name] for name in args.questions or QUESTIONS], args)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    say(f"written to {os.path.relpath(args.output, Path.cwd())}")
    return status


if __name__ == "__main__":
    sys.exit(main())
