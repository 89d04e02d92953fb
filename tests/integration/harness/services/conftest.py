"""Helpers for the tests of the services layer: inner pytest runs of scenarios/ in subprocesses.

A whole run (controller, xdist workers, start, stop, Ctrl-C) can only be observed from outside,
so these tests start pytest as a child and look at what it leaves running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fixtures.services.plugin import SHARED
from fixtures.services.run import state_base
from fixtures.services.sharing import remove_dead_runs

REPO_ROOT = Path(__file__).resolve().parents[3]
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


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> str:
    """The provider this (outer) run uses; the inner runs use the same, as CI selects it."""
    return request.config.stash[SHARED].get_choice().provider


@pytest.fixture
def owning_provider(provider: str) -> str:
    """For tests about servers we start and stop: external starts none."""
    if provider == "external":
        pytest.skip("the external provider starts and stops no servers")
    return provider


@pytest.fixture
def inner_state_base(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder of run folders for one test's inner runs alone: the sweep of killed runs in
    another xdist worker's inner run must not take this test's leftovers before it looks.
    Short and beside the default base: Postgres' socket path has a length limit. At the end,
    whatever a killed inner run left there is stopped, as the next run's sweep would."""
    base = Path(tempfile.mkdtemp(prefix="rs-", dir=state_base()))
    base.chmod(0o755)  # as a shared temp dir: native Postgres runs as another user
    yield base
    monkeypatch.setenv("TEST_SERVICES_TMPDIR", str(base))
    remove_dead_runs()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def inner_runs(inner_state_base: Path) -> Iterator[list[InnerRun]]:
    """Starts inner runs; interrupts what is left of them at the end, even when a test fails."""
    runs: list[InnerRun] = []
    yield runs
    for run in runs:
        if run.process.poll() is None:
            run.kill(signal.SIGINT)
            try:
                run.process.wait(60)
            except subprocess.TimeoutExpired:
                run.kill(signal.SIGKILL)
                run.process.wait()


@pytest.fixture
def start_inner(
    inner_runs: list[InnerRun], tmp_path: Path, provider: str, inner_state_base: Path
) -> Callable[..., InnerRun]:
    """`start_inner(scenario, *pytest_args, env={...})` starts an inner run with this run's provider."""
    counter = iter(range(100))

    def start(scenario: str, *args: str, env: dict[str, str] | None = None) -> InnerRun:
        index = next(counter)
        out = tmp_path / f"inner-{index}"
        out.mkdir()
        log = tmp_path / f"inner-{index}.log"
        environment = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
        environment |= {
            "TEST_SERVICES": provider,
            "TEST_SERVICES_TMPDIR": str(inner_state_base),
            "SCENARIO_OUT": str(out),
            **(env or {}),
        }
        with log.open("wb") as output:
            process = subprocess.Popen(
                [
                    *INNER_PYTEST,
                    *("--basetemp", str(tmp_path / f"basetemp-{index}")),
                    str(SCENARIOS / scenario),
                    *args,
                ],
                cwd=REPO_ROOT,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        run = InnerRun(process, out, log)
        inner_runs.append(run)
        return run

    return start
