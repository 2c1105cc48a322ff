"""Benchmark: how long the README's test command takes, and where the time goes.

Runs ``python -m pytest -q`` (the command README.md gives and ``.ci/run`` calls; ``pyproject.toml``
adds ``-n 2``) with a JUnit report, and writes ``bench/results/suite_time.json``: the wall time,
the tests' outcome counts, and the summed test time of each file (both xdist workers' time, so
their sum is about twice the wall time). Run it on a machine with nothing else running, or the
time measures the other work too.

  python bench/suite_time.py             # -> bench/results/suite_time.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.provenance import git_commit  # noqa: E402

GOAL_S = 15 * 60


def per_file(junit: Path) -> tuple[dict[str, float], dict[str, int]]:
    """Summed seconds per test file, and the outcome counts, from a JUnit report."""
    seconds: dict[str, float] = collections.Counter()
    outcomes: dict[str, int] = collections.Counter()
    for case in ET.parse(junit).iter("testcase"):
        seconds[case.get("classname", "").rsplit(".", 1)[-1] + ".py"] += float(case.get("time", 0))
        found = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        outcomes[found[0] if found else "passed"] += 1
    return dict(sorted(seconds.items(), key=lambda kv: -kv[1])), dict(outcomes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "suite_time.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        junit = Path(folder) / "junit.xml"
        started = time.time()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", f"--junitxml={junit}"], cwd=REPO)
        wall = time.time() - started
        files, outcomes = per_file(junit)
    result = {"command": "python bench/suite_time.py", "tests": "python -m pytest -q", "commit": git_commit(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "exit_code": done.returncode, "wall_s": round(wall, 1), "goal_s": GOAL_S,
              "within_goal": wall <= GOAL_S, "outcomes": outcomes,
              "worker_seconds_by_file": {name: round(s, 1) for name, s in files.items()}}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{wall:.0f} s wall (goal {GOAL_S} s), {outcomes}; the slowest files (worker seconds):")
    for name, s in list(files.items())[:8]:
        print(f"  {s:7.1f}  {name}")
    print(f"wrote {args.out}")
    sys.exit(done.returncode)


if __name__ == "__main__":
    main()
