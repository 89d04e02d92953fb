"""Whole runs, observed from outside: one set of services whatever -n is, nothing left behind
after a pass, a Ctrl-C or a kill, and a provider that can't start is an error."""

from __future__ import annotations

import contextlib
import json
import re
import signal
from collections.abc import Iterator

import pytest

from tests.integration.harness.services.helpers import InnerRun
from tests.integration.harness.services.servers import SERVICES, servers

ONE_OF_EACH = dict.fromkeys(SERVICES, 1)
INTERRUPTED = 2  # pytest's exit code after Ctrl-C


def assert_nothing_left(run: InnerRun, provider: str) -> None:
    assert run.header, f"no services header in the inner run's output:\n{run.output}"
    assert servers(provider, run.run_id, run.state_dir) == {}, run.output
    assert not run.state_dir.exists(), "the run's state folder is removed at the end"


@pytest.mark.parametrize("workers", ["2", "auto"])
def test_one_set_of_services_whatever_n_is(start_inner, owning_provider: str, workers: str) -> None:
    run = start_inner("scenario_shared.py", "-n", workers, "--dist", "each")
    assert run.wait() == 0, run.output
    observed = [json.loads(path.read_text()) for path in sorted(run.out.glob("counts-*.json"))]
    assert len(observed) >= 2 if workers == "2" else len(observed) >= 1
    for seen in observed:
        assert seen["counts"] == ONE_OF_EACH, f"{seen['worker']} saw {seen['counts']}"
    assert len({seen["database"] for seen in observed}) == len(observed), (
        "each worker its own database"
    )
    assert_nothing_left(run, owning_provider)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_each_service_serves_in_every_worker(start_inner, provider: str, workers: str) -> None:
    run = start_inner("scenario_basic.py", "-n", workers)
    assert run.wait() == 0, run.output
    assert "4 passed" in run.output
    assert f"services: {provider} " in run.output in run.output, "the header names the provider"
    if provider != "external":
        assert_nothing_left(run, provider)


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """As under `nohup` or in a background job of a CI script: children inherit SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize(
    ("target", "inherited"),
    [
        ("process-group", "default"),
        ("controller-only", "default"),
        ("process-group", "ignored"),
    ],
)
def test_ctrl_c_stops_everything(
    start_inner, owning_provider: str, target: str, inherited: str
) -> None:
    with sigint_ignored() if inherited == "ignored" else contextlib.nullcontext():
        run = start_inner("scenario_blocked.py", "-n", "2", "--dist", "each")
    run.wait_for_ready(2)
    assert servers(owning_provider, run.run_id, run.state_dir) == ONE_OF_EACH
    run.kill(signal.SIGINT, group=target == "process-group")
    assert run.wait(timeout=90) == INTERRUPTED, run.output
    assert_nothing_left(run, owning_provider)


def test_leftovers_of_a_killed_run_are_removed_by_the_next(
    start_inner, owning_provider: str
) -> None:
    killed = start_inner("scenario_blocked.py", "-n", "0")
    killed.wait_for_ready(1)
    killed.kill(signal.SIGKILL)
    killed.wait()
    # Nothing could clean up: the servers outlive the run...
    assert servers(owning_provider, killed.run_id, killed.state_dir) == ONE_OF_EACH

    # ...until the next run starts services, sees their owner is gone, and removes them.
    following = start_inner("scenario_basic.py::test_services_serve[0]", "-n", "0")
    assert following.wait() == 0, following.output
    assert servers(owning_provider, killed.run_id, killed.state_dir) == {}
    assert killed.state_dir.name in following.output, "the summary says what it removed"
    assert_nothing_left(following, owning_provider)


def test_a_run_without_service_fixtures_starts_nothing(start_inner, provider: str) -> None:
    run = start_inner("scenario_no_services.py", "-n", "2")
    assert run.wait() == 0, run.output
    assert not re.search(r"-+ services -+", run.output), "no services summary: none were started"
    if provider != "external":
        assert_nothing_left(run, provider)


BROKEN = {
    "docker": {"TEST_POSTGRES_IMAGE": "restoration-offline/does-not-exist:0"},
    "native": {"TEST_PG_BINDIR": "/nonexistent/postgresql/bin"},
    "external": {"TEST_DATABASE_URL": "postgresql://test:test@127.0.0.1:1/postgres"},
}
BROKEN_MESSAGE = {
    "docker": "cannot pull restoration-offline/does-not-exist:0",
    "native": "/nonexistent/postgresql/bin",
    "external": "external services do not answer",
}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_provider_that_cannot_start_is_an_error_not_a_skip(
    start_inner, provider: str, workers: str
) -> None:
    run = start_inner("scenario_basic.py", "-n", workers, env=BROKEN[provider])
    assert run.wait() == 1, run.output
    assert BROKEN_MESSAGE[provider] in run.output
    assert "4 error" in run.output
    assert "skipped" not in run.output
    if provider != "external":
        assert_nothing_left(run, provider)
