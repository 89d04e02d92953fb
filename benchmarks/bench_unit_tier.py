"""The unit tier's wall time on every core (xdist), with and without coverage, side by side.

    python benchmarks/bench_unit_tier.py

`nox -s unit` runs the tier under coverage (branch, greenlet-aware: SQLAlchemy's asyncio layer runs
on greenlets, and without it lines after its awaits go unseen); the plain run is what the tests
themselves cost. Prints the figures, writes reports/bench/unit_tier.json, and exits 1 when a run
misses the target: 10 s of pytest wall time on a 2-core machine (issue 10).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
REPORTS = REPO_ROOT / "reports" / "bench"
TARGET_SECONDS = 10.0  # issue 10, on 2 cores
PYTEST = ["-m", "pytest", "tests/unit", "-q", "-n", "auto", "-p", "no:cacheprovider"]


def run(command: list[str], env: dict[str, str]) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(  # noqa: S603 - our own interpreter and pytest arguments
        [sys.executable, *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    reported = re.search(r" in ([\d.]+)s", result.stdout)
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr
    return {
        "passed": result.returncode == 0,
        "summary": last.strip("= "),
        "pytest_seconds": float(reported[1]) if reported else None,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 2
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPORTS / "unit_tier.json")
    args, _ = parser.parse_known_args(argv)  # `nox -s bench -- ...` hands every script its options

    with tempfile.TemporaryDirectory() as scratch:
        # Coverage data goes to a scratch folder, not into the report `nox -s coverage` combines.
        env = {**os.environ, "COVERAGE_FILE": str(Path(scratch) / ".coverage")}
        runs = {
            "plain": run(PYTEST, env),
            "under_coverage": run(["-m", "coverage", "run", *PYTEST], env),
        }
    figures = {
        "runs": runs,
        "coverage_over_plain": (
            round(runs["under_coverage"]["pytest_seconds"] / runs["plain"]["pytest_seconds"], 2)
            if runs["plain"]["pytest_seconds"] and runs["under_coverage"]["pytest_seconds"]
            else None
        ),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    for name, figures_of_run in runs.items():
        print(f"  {name:15} {figures_of_run['summary']}")
        for key in ("pytest_seconds", "wall_seconds", "cpu_seconds"):
            print(f"    {key:16} {figures_of_run[key]}")
    print(f"  coverage/plain  {figures['coverage_over_plain']}")
    print(f"  cores {figures['cores']}, load average {figures['load_average_1m']}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2))
    print(f"written to {args.output}")

    missed = False
    for name, figures_of_run in runs.items():
        seconds = figures_of_run["pytest_seconds"]
        if not figures_of_run["passed"]:
            print(f"failed: the {name} run: {figures_of_run['summary']}")
            missed = True
        elif seconds is not None and seconds > TARGET_SECONDS:
            print(f"missed: the {name} run took {seconds} s of pytest > {TARGET_SECONDS} s")
            missed = True
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
