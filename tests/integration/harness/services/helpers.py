"""Inner pytest runs of scenarios/ in subprocesses, for the tests of the services layer.

A whole run (controller, xdist workers, start, stop, Ctrl-C) can only be observed from outside,
so these tests start pytest as a child and look at what it leaves running; the fixtures that
start them are in conftest.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SCENARIOS = Path(__file__).parent / "scenarios"
HEADER = re.compile(
    r"services: (?P<provider>\w+) .*; run (?P<run_id>[0-9a-f]{8}), state (?P<state_dir>\S+)"
)
# -p: the plugin as the root conftest loads it, in case this checkout's conftest doesn't yet.
INNER_PYTEST = (
    sys.executable,
    "-m",
    "pytest",
    "-p",
    "fixtures.services.plugin",
    "-p",
    "no:cacheprovider",
)
# Variables of the outer run that would confuse an inner one.
DROPPED_ENV = (
    "PYTEST_ADDOPTS",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_CURRENT_TEST",
)


@dataclass
class InnerRun:
    """A pytest run of one scenario in a child process, in its own process group."""

    process: subprocess.Popen[bytes]
    out: Path  # SCENARIO_OUT: where the scenario's tests write what they saw
    log: Path
    output: str = ""
    header: dict[str, str] = field(default_factory=dict)

    def wait(self, timeout: float = 180) -> int:
        try:
            code = self.process.wait(timeout)
        finally:
            self.read_output()
        return code

    def read_output(self) -> str:
        self.output = self.log.read_text(errors="replace")
        if match := HEADER.search(self.output):
            self.header = match.groupdict()
        return self.output

    def wait_for_ready(self, count: int, timeout: float = 120) -> None:
        """Until `count` tests have written their ready file (their services are up)."""
        deadline = time.monotonic() + timeout
        while len(list(self.out.glob("ready-*"))) < count:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.read_output()
                pytest.fail(f"the inner run never got ready:\n{self.output}")
            time.sleep(0.1)
        self.read_output()

    @property
    def run_id(self) -> str:
        return self.header["run_id"]

    @property
    def state_dir(self) -> Path:
        return Path(self.header["state_dir"])

    def kill(self, signum: signal.Signals, *, group: bool = True) -> None:
        """`group`: like Ctrl-C in a terminal, every process of the run gets it."""
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
