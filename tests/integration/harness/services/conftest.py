"""Fixtures for the tests of the services layer: the outer run's provider and inner pytest runs
of scenarios/ (`helpers.InnerRun`), stopped at the end even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fixtures import REPO_ROOT
from fixtures.services.plugin import SHARED
from fixtures.services.run import state_base
from fixtures.services.sharing import remove_dead_runs
from tests.integration.harness.services.helpers import (
    DROPPED_ENV,
    INNER_PYTEST,
    SCENARIOS,
    InnerRun,
)


def default_sigint() -> None:
    """In the inner run, before it execs: Ctrl-C must act on it whatever this run inherited. A
    background job of a non-interactive shell, or `nohup`, starts with SIGINT ignored, and Python
    keeps an ignored SIGINT ignored (no KeyboardInterrupt), so the inner run would never stop."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
                preexec_fn=default_sigint,
            )
        run = InnerRun(process, out, log)
        inner_runs.append(run)
        return run

    return start
