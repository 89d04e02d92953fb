"""`nox -s serve` keeps the stack up: a worker that dies is started again, and said so; one that
keeps dying, or a dead API, stops it. Real child processes (sleeping Pythons) stand for the stack's."""

import io
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fixtures.processes import ManagedProcess
from fixtures.serve import Supervisor
from fixtures.stack import Stack, StackOptions

# Says " ready." as a Celery worker does once it consumes, then waits to be killed.
READY_THEN_WAIT = "import time; print('celery@host ready.', flush=True); time.sleep(120)"


def sleeper(name: str, log_dir: Path) -> ManagedProcess:
    return ManagedProcess(
        name,
        [sys.executable, "-c", READY_THEN_WAIT],
        env=dict(os.environ),
        cwd=log_dir,
        log_path=log_dir / f"{name}.log",
    )


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(StackOptions(services_env={}, log_dir=tmp_path, comfyui_url="http://comfyui"))
    stack.api = sleeper("api", tmp_path).start()
    stack.worker = sleeper("worker", tmp_path)
    stack.start_worker()
    yield stack
    stack.stop()


def kill(process: ManagedProcess) -> None:
    assert process.pid is not None
    os.killpg(process.pid, signal.SIGKILL)
    process._process.wait()  # type: ignore[union-attr]


def test_a_dead_worker_is_restarted_and_said_so(stack: Stack) -> None:
    err = io.StringIO()
    supervisor = Supervisor(stack, err=err)
    first = stack.worker.pid
    assert supervisor.check() is None
    assert err.getvalue() == ""

    kill(stack.worker)  # type: ignore[arg-type]

    assert supervisor.check() is None  # the stack goes on
    assert stack.worker.running
    assert stack.worker.pid != first  # type: ignore[union-attr]
    assert supervisor.restarts == 1
    said = err.getvalue()
    assert "worker died (exit code -9); restarting it (1 in the last 60 s)" in said
    assert said.rstrip().endswith("worker restarted")


def test_a_worker_that_keeps_dying_stops_the_stack(stack: Stack) -> None:
    clock = [100.0]
    supervisor = Supervisor(
        stack, max_deaths=3, window=60, clock=lambda: clock[0], err=io.StringIO()
    )
    for _ in range(2):
        kill(stack.worker)  # type: ignore[arg-type]
        clock[0] += 10
        assert supervisor.check() is None
    kill(stack.worker)  # type: ignore[arg-type]
    clock[0] += 10

    reason = supervisor.check()

    assert reason is not None
    assert reason.startswith("the worker died 3 times within 60 s; not restarting it")


def test_deaths_long_ago_do_not_count(stack: Stack) -> None:
    clock = [100.0]
    supervisor = Supervisor(
        stack, max_deaths=2, window=60, clock=lambda: clock[0], err=io.StringIO()
    )
    kill(stack.worker)  # type: ignore[arg-type]
    assert supervisor.check() is None
    clock[0] += 61
    kill(stack.worker)  # type: ignore[arg-type]
    assert supervisor.check() is None
    assert supervisor.restarts == 2


def test_a_dead_api_stops_the_stack(stack: Stack) -> None:
    kill(stack.api)

    reason = Supervisor(stack, err=io.StringIO()).check()

    assert reason is not None
    assert reason.startswith("api stopped:")
