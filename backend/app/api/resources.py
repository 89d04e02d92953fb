"""The long-lived clients the API needs, built once at start-up and closed at shutdown.

The worker's twin is `app.workers.context`. Tests register their own doubles by handing
`create_app` another factory (see tests/unit/conftest.py).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_engine, create_session_factory
from app.services.comfyui import ComfyUIHealth
from app.services.comfyui.pool import comfyui_from_settings
from app.services.s3 import S3Storage
from app.workers.celery_app import create_celery_app
from app.workers.queue import CeleryTaskQueue, TaskQueue


class HealthProbe(Protocol):
    async def health(self) -> ComfyUIHealth: ...


class BrokerProbe(Protocol):
    async def ping(self) -> None: ...


class RedisBrokerProbe:
    def __init__(self, settings: Settings) -> None:
        self.client = redis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=settings.broker_connect_timeout_seconds,
            socket_timeout=settings.broker_connect_timeout_seconds,
        )

    async def ping(self) -> None:
        await self.client.ping()

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class Resources:
    settings: Settings
    session_factory: async_sessionmaker[AsyncSession]
    storage: S3Storage
    task_queue: TaskQueue
    broker: BrokerProbe
    comfyui: HealthProbe
    # Run at shutdown, in order; what a factory did not open, it does not list.
    closers: tuple[Callable[[], Awaitable[None]], ...] = ()

    async def aclose(self) -> None:
        for close in self.closers:
            await close()


ResourcesFactory = Callable[[Settings], Awaitable[Resources]]


async def build_resources(settings: Settings) -> Resources:
    engine = create_engine(settings)
    broker = RedisBrokerProbe(settings)
    comfyui = comfyui_from_settings(settings)
    return Resources(
        settings=settings,
        session_factory=create_session_factory(engine),
        storage=S3Storage(settings),
        task_queue=CeleryTaskQueue(
            create_celery_app(settings),
            queue=settings.celery_queue,
            timeout=settings.broker_enqueue_timeout_seconds,
        ),
        broker=broker,
        comfyui=comfyui,
        closers=(broker.aclose, comfyui.aclose, engine.dispose),
    )
