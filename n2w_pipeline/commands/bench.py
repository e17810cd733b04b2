"""``n2w bench NAME``: run a benchmark script from ``benchmarks/``."""

from __future__ import annotations

import argparse
import subprocess
import sys

from n2w_pipeline.instance import project_file


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run a benchmark from benchmarks/ (backfill, realtime, corrections)",
        description="Run benchmarks/NAME.py with the remaining arguments; each benchmark "
        "prints its figures beside a baseline measured in the same run. "
        "`n2w bench NAME --help` shows a benchmark's own options.",
    )
    p.add_argument("name", help="benchmark name: a file benchmarks/NAME.py")
    p.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder = project_file("benchmarks")
    script = folder / f"{args.name}.py"
    if not script.exists():
        names = sorted(p.stem for p in folder.glob("*.py") if not p.name.startswith("_"))
        raise SystemExit(f"n2w bench: no benchmark {args.name!r}; have {names}")
    return subprocess.call([sys.executable, str(script), *args.args])
