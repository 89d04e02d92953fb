"""One event loop per worker process, and a worker context that lives as long as the process.

Building a loop, a database engine, an httpx client and a boto3 client for every task cost more
than the pipeline's own work (issue 10: ~100 ms a job). So a pool process builds them once:

- `worker_process_init` (sent in each prefork child after the fork, and once by the solo pool)
  installs a `ProcessRuntime` and builds its context, with a first database and S3 connection.
  Whatever the child inherited from its parent is dropped first, without closing: the parent's
  sockets are not the child's to close.
- The task runs its body with `run(coro)` on the process's loop instead of `asyncio.run`;
  `worker_context` hands it the process's pooled context (built on first use, rebuilt if the
  settings change).
- `worker_process_shutdown` (prefork child) and `worker_shutdown` (solo) close it all.

Without an installed runtime (eager tasks, scripts) `run` falls back to `asyncio.run` and each run
gets a context of its own, as before.
"""

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from celery import signals
from sqlalchemy import text

from app.core.config import Settings, get_settings
from app.workers.context import WorkerContext, open_worker_context

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREPARE_TIMEOUT_SECONDS = 10.0


class ProcessRuntime:
    """An event loop and the worker context built on it, for one process.

    Runs one coroutine at a time, from whichever thread calls `run` (the solo pool in tests calls
    from a thread of its own); a lock keeps two threads from entering the loop at once.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._context: WorkerContext | None = None
        self._close_context: Any = None
        self.preparing: threading.Thread | None = None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            task = self.loop.create_task(coro)
            try:
                return self.loop.run_until_complete(task)
            except BaseException:
                # Something (a Celery time limit, raised from a signal handler) broke out of the
                # loop: as `asyncio.run` would, cancel what the run left, so nothing of it resumes
                # in the next one.
                self._cancel_pending()
                raise

    def _cancel_pending(self) -> None:
        pending = [task for task in asyncio.all_tasks(self.loop) if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))

    def prepare(self, settings: Settings) -> None:
        """Build the context and open a database and an S3 connection now, while the process
        starts, so that its first job does not pay for them (~0.7 s of CPU on a busy machine).
        Best effort: a service that is down now is the first job's problem, as it would be."""

        def warm() -> None:
            try:
                self.run(asyncio.wait_for(self._warm(settings), timeout=PREPARE_TIMEOUT_SECONDS))
            except Exception as error:
                logger.warning("worker process started cold: %s: %s", type(error).__name__, error)

        _outside_any_loop(warm)

    def prepare_in_background(self, settings: Settings) -> None:
        """`prepare` on a thread of its own: a prefork child has only a few seconds (Celery's
        `worker_proc_alive_timeout`) to report itself up. A task that comes sooner waits for the
        warm-up to end (`run` holds the same lock)."""
        self.preparing = threading.Thread(
            target=self.prepare, args=(settings,), name="worker-runtime-prepare", daemon=True
        )
        self.preparing.start()

    async def _warm(self, settings: Settings) -> None:
        context = await self.context(settings)

        async def database() -> None:
            async with context.session_factory() as session:
                await session.execute(text("SELECT 1"))

        await asyncio.gather(database(), context.storage.check())

    async def context(self, settings: Settings) -> WorkerContext:
        """The process's context for `settings`; built on first use, rebuilt when they change."""
        if self._context is not None and self._context.settings == settings:
            return self._context
        await self._aclose_context()
        self._context, self._close_context = open_worker_context(settings, pooled=True)
        return self._context

    async def _aclose_context(self) -> None:
        close, self._context, self._close_context = self._close_context, None, None
        if close is not None:
            await close()

    def close(self) -> None:
        """Close the context and the loop."""
        _outside_any_loop(self._close)

    def _close(self) -> None:
        with self._lock:
            if self.loop.is_closed():
                return
            try:
                self.loop.run_until_complete(self._aclose_context())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.run_until_complete(self.loop.shutdown_default_executor())
            except Exception:
                logger.exception("closing the worker context failed")
            finally:
                self.loop.close()

    def abandon(self) -> None:
        """After a fork: forget the parent's connections without closing them (they are its)."""
        context = self._context
        self._context = self._close_context = None
        if context is not None:
            context.session_factory.kw["bind"].sync_engine.dispose(close=False)


def _outside_any_loop(function: Callable[[], None]) -> None:
    """Call `function` here, or, when this thread already runs an event loop (a worker started
    and stopped by async code, in tests), in a thread of its own: a thread runs one loop at a time.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        function()
        return
    thread = threading.Thread(target=function, name="worker-runtime")
    thread.start()
    thread.join()


_runtime: ProcessRuntime | None = None


def current_runtime() -> ProcessRuntime | None:
    """The runtime of this process, if one is installed and running the calling code's loop."""
    runtime = _runtime
    if runtime is None or runtime.pid != os.getpid():
        return None
    return runtime


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a task body: on the process's loop if a runtime is installed, else in `asyncio.run`."""
    runtime = current_runtime()
    if runtime is None:
        return asyncio.run(coro)
    return runtime.run(coro)


def install() -> ProcessRuntime:
    global _runtime
    if _runtime is not None:
        if _runtime.pid != os.getpid():
            _runtime.abandon()  # inherited through a fork
        else:
            _runtime.close()
    _runtime = ProcessRuntime()
    return _runtime


def uninstall() -> None:
    global _runtime
    runtime, _runtime = _runtime, None
    if runtime is not None and runtime.pid == os.getpid():
        runtime.close()


@signals.worker_process_init.connect
def _on_process_init(**_: Any) -> None:
    install().prepare_in_background(get_settings())


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    uninstall()
