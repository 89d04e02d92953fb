"""The worker process runtime: one event loop and one pooled context per process."""

import asyncio
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool

from app.core.config import Settings
from app.services.s3 import S3Storage
from app.workers import runtime
from app.workers.context import WorkerContext, worker_context


@pytest.fixture(autouse=True)
def no_runtime() -> Iterator[None]:
    """Each test starts and ends without an installed runtime."""
    runtime.uninstall()
    yield
    runtime.uninstall()


async def context_of_run(settings: Settings) -> tuple[WorkerContext, asyncio.AbstractEventLoop]:
    async with worker_context(settings) as ctx:
        async with ctx.session_factory() as session:
            assert await session.scalar(text("SELECT 1")) == 1
        return ctx, asyncio.get_running_loop()


def engine_of(ctx: WorkerContext) -> AsyncEngine:
    engine: AsyncEngine = ctx.session_factory.kw["bind"]
    return engine


def test_without_a_runtime_each_run_has_its_own_loop_and_context(
    settings: Settings, closed: list[Any]
) -> None:
    first, first_loop = runtime.run(context_of_run(settings))
    second, second_loop = runtime.run(context_of_run(settings))

    assert first_loop is not second_loop
    assert first is not second
    assert isinstance(engine_of(first).pool, NullPool)
    assert closed == [first.restorer, engine_of(first), second.restorer, engine_of(second)]


def test_a_runtime_keeps_its_loop_and_pooled_context_until_it_is_closed(
    settings: Settings, closed: list[Any]
) -> None:
    installed = runtime.install()

    first, first_loop = runtime.run(context_of_run(settings))
    second, second_loop = runtime.run(context_of_run(settings))

    assert first_loop is second_loop is installed.loop
    assert first is second
    assert not isinstance(engine_of(first).pool, NullPool)
    assert closed == []

    runtime.uninstall()
    assert closed == [first.restorer, engine_of(first)]
    assert installed.loop.is_closed()
    assert runtime.current_runtime() is None


def test_new_settings_replace_the_context(settings: Settings, closed: list[Any]) -> None:
    runtime.install()
    first, _ = runtime.run(context_of_run(settings))
    other = settings.model_copy(update={"comfyui_scale": 3.0})

    second, _ = runtime.run(context_of_run(other))

    assert second is not first
    assert second.settings is other
    assert closed == [first.restorer, engine_of(first)]


def test_a_run_broken_off_leaves_nothing_that_resumes_in_the_next(settings: Settings) -> None:
    """Celery's soft time limit is raised by a signal handler, also while the loop waits in
    select(), outside any task: the run must end there, and none of it resume later."""
    installed = runtime.install()
    resumed: list[str] = []

    async def stuck() -> None:
        async def child() -> None:
            await asyncio.sleep(0.2)
            resumed.append("child")

        asyncio.get_running_loop().create_task(child())
        await asyncio.sleep(0.2)
        resumed.append("body")

    def soft_time_limit(signum: int, frame: object) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGUSR1, soft_time_limit)
    try:
        threading.Timer(0.02, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        with pytest.raises(SoftTimeLimitExceeded):
            runtime.run(stuck())
    finally:
        signal.signal(signal.SIGUSR1, previous)

    async def later() -> str:
        await asyncio.sleep(0.25)  # past the moment the body and its child would have resumed
        return "fine"

    assert runtime.run(later()) == "fine"
    assert resumed == []
    assert not [task for task in asyncio.all_tasks(installed.loop) if not task.done()]


def test_a_forked_child_drops_the_parents_connections_without_closing_them(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = runtime.install()
    ctx, _ = runtime.run(context_of_run(settings))
    disposed: list[bool] = []
    sync_engine = engine_of(ctx).sync_engine
    monkeypatch.setattr(sync_engine, "dispose", lambda close=True: disposed.append(close))
    parent.pid = -1  # as the child of a fork sees its parent's runtime

    child = runtime.install()

    assert disposed == [False]
    assert child is not parent
    assert runtime.current_runtime() is child
    parent.pid = child.pid  # let the test close the parent's loop
    parent.close()


def test_a_prepared_runtime_has_its_context_before_the_first_job(
    settings: Settings, storage: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[WorkerContext] = []
    real_open = runtime.open_worker_context

    def open_context(settings: Settings, *, pooled: bool) -> Any:
        context, close = real_open(settings, pooled=pooled)
        built.append(context)
        return context, close

    monkeypatch.setattr(runtime, "open_worker_context", open_context)
    installed = runtime.install()

    installed.prepare(settings)
    assert len(built) == 1

    ctx, _ = runtime.run(context_of_run(settings))
    assert built == [ctx]
    assert ctx.storage.bucket == storage.bucket


def test_a_runtime_prepared_while_a_service_is_down_starts_cold(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    installed = runtime.install()  # no moto here: S3 answers nothing

    installed.prepare(settings.model_copy(update={"s3_endpoint_url": "http://127.0.0.1:1"}))

    assert "worker process started cold" in caplog.text
    assert runtime.run(asyncio.sleep(0, result="usable")) == "usable"


def test_celery_process_signals_install_and_close_the_runtime(
    monkeypatch: pytest.MonkeyPatch, settings: Settings
) -> None:
    prepared: list[Settings] = []
    monkeypatch.setattr(runtime, "get_settings", lambda: settings)
    monkeypatch.setattr(runtime.ProcessRuntime, "prepare", lambda self, s: prepared.append(s))

    signals.worker_process_init.send(sender="worker@test")
    installed = runtime.current_runtime()
    assert installed is not None
    assert installed.preparing is not None
    installed.preparing.join()
    assert prepared == [settings]

    signals.worker_process_shutdown.send(sender="worker@test", pid=installed.pid, exitcode=0)

    assert runtime.current_runtime() is None
    assert installed.loop.is_closed()
