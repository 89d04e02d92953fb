"""What a task run needs: the database, S3 and ComfyUI, as one `WorkerContext`.

In a worker process the context lives as long as the process, on its one event loop (see
`app.workers.runtime`): pooled database connections, one httpx client per ComfyUI host, one boto3
client. A run outside such a process (an eager task, a script) builds a context of its own inside
its event loop, without a connection pool, and closes it after the run.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, WorkflowName
from app.core.db import create_engine, create_session_factory
from app.services.comfyui import ProgressCallback, RestoredImage
from app.services.comfyui.pool import comfyui_from_settings
from app.services.s3 import S3Storage


class Restorer(Protocol):
    """The worker's view of ComfyUI (`ComfyUIService` for one host, `ComfyUIPool` for several).

    Only what differs per job: scale, model and time limit come from settings when it is built.
    """

    async def restore(
        self,
        *,
        job_id: uuid.UUID,
        attempt: int,
        image: bytes,
        extension: str,
        workflow: WorkflowName,
        on_progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
    ) -> RestoredImage: ...


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    storage: S3Storage
    restorer: Restorer


ContextFactory = Callable[[Settings], AbstractAsyncContextManager[WorkerContext]]


def open_worker_context(
    settings: Settings, *, pooled: bool
) -> tuple[WorkerContext, Callable[[], Awaitable[None]]]:
    """A new context and the coroutine function that closes it.

    `pooled` only where the context lives as long as its event loop: pooled connections belong
    to the loop that opened them.
    """
    engine = create_engine(settings, pooled=pooled)
    restorer = comfyui_from_settings(settings)
    context = WorkerContext(
        settings=settings,
        session_factory=create_session_factory(engine),
        storage=S3Storage(settings),
        restorer=restorer,
    )

    async def close() -> None:
        try:
            await restorer.aclose()
        finally:
            await engine.dispose()

    return context, close


@asynccontextmanager
async def worker_context(settings: Settings) -> AsyncIterator[WorkerContext]:
    """The process's context when running on its worker runtime; else one for this run alone."""
    from app.workers.runtime import current_runtime  # the runtime builds its context with ours

    runtime = current_runtime()
    if runtime is not None and asyncio.get_running_loop() is runtime.loop:
        yield await runtime.context(settings)
        return
    context, close = open_worker_context(settings, pooled=False)
    try:
        yield context
    finally:
        await close()
