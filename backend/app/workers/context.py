"""What one task run needs, built inside its event loop and closed after it.

Each Celery task runs its async body with `asyncio.run`, a fresh loop each time, so database
connections and the ComfyUI client must not outlive the run; the boto3 client may.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, WorkflowName
from app.core.db import create_engine, create_session_factory
from app.services.comfyui import ComfyUIService, ProgressCallback, RestoredImage
from app.services.s3 import S3Storage


class Restorer(Protocol):
    """The worker's view of ComfyUI (`app.services.comfyui.ComfyUIService` in production).

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


@asynccontextmanager
async def worker_context(settings: Settings) -> AsyncIterator[WorkerContext]:
    engine = create_engine(settings, pooled=False)
    restorer = ComfyUIService.from_settings(settings)
    try:
        yield WorkerContext(
            settings=settings,
            session_factory=create_session_factory(engine),
            storage=S3Storage(settings),
            restorer=restorer,
        )
    finally:
        await restorer.aclose()
        await engine.dispose()
