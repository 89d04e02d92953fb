"""Recovery of stranded jobs, run inside every Celery worker: no job waits on luck or on the
broker's visibility timeout.

A thread of the worker's main process sweeps the database every `REAPER_INTERVAL_SECONDS` and sends
a new message for each job that no message may be left for (see `RestorationJobRepository.reap`):
a PROCESSING job whose lease expired (its worker died), one released for a retry whose message
never came back, a PENDING job older than `REAPER_PENDING_AFTER_SECONDS`. The sweep locks rows with
`SKIP LOCKED`, so workers sweep side by side without sending the same job twice. A job gets a
second message at worst; the claim's compare-and-set lets only one of them run it.

The messages go to `<CELERY_QUEUE>.recovery`, which every worker also consumes, so a recovered job
does not wait behind a backlog of new ones. A job of a crashed worker runs again within its lease
plus one sweep: less than 2 x `TASK_LEASE_SECONDS` while the interval is below the lease.
"""

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Celery, bootsteps
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_session_factory, session_scope
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from app.workers.queue import RESTORE_TASK

logger = logging.getLogger(__name__)

Send = Callable[[uuid.UUID], None]


def recovery_queue(settings: Settings) -> str:
    return f"{settings.celery_queue}.recovery"


async def reap_once(
    settings: Settings, session_factory: async_sessionmaker[AsyncSession], send: Send
) -> list[uuid.UUID]:
    """One sweep: find stranded jobs, send a message for each, then commit the marks."""
    now = utcnow()
    lease = timedelta(seconds=settings.task_lease_seconds)
    async with session_scope(session_factory) as session:
        ids = await RestorationJobRepository(session).reap(
            lease_expired_before=now - lease,
            # A released job's retry comes within the backoff cap; past it (and a lease), it's lost.
            released_before=now
            - lease
            - timedelta(seconds=settings.task_retry_backoff_max_seconds),
            pending_before=now - timedelta(seconds=settings.reaper_pending_after_seconds),
        )
        for job_id in ids:  # before the commit: a failed send leaves the job to the next sweep
            send(job_id)
        await session.commit()
    if ids:
        logger.warning("re-enqueued %d stranded job(s): %s", len(ids), ", ".join(map(str, ids)))
    return ids


def celery_sender(celery: Celery, settings: Settings) -> Send:
    queue = recovery_queue(settings)

    def send(job_id: uuid.UUID) -> None:
        celery.send_task(
            RESTORE_TASK,
            args=[str(job_id)],
            task_id=str(job_id),
            queue=queue,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
        )

    return send


class Reaper:
    """The sweep on a timer, in a thread of its own with its own event loop and engine."""

    def __init__(self, settings: Settings, send: Send) -> None:
        self.settings = settings
        self.send = send
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="restoration-reaper", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        asyncio.run(self._loop())

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early (within 0.2 s) when the worker stops."""
        deadline = time.monotonic() + seconds
        # `stopping` is a threading.Event, set from the worker's thread: poll it.
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.2))

    async def _loop(self) -> None:
        engine = create_engine(self.settings, pooled=False)
        factory = create_session_factory(engine)
        try:
            while not self.stopping.is_set():
                try:
                    await reap_once(self.settings, factory, self.send)
                except Exception as error:  # the database or broker is away: next sweep
                    logger.warning("reaper sweep failed: %s: %s", type(error).__name__, error)
                await self._pause(self.settings.reaper_interval_seconds)
        finally:
            await engine.dispose()


class RecoveryStep(bootsteps.StartStopStep):
    """Worker bootstep: consume the recovery queue too, and run the reaper while the worker runs."""

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        # Queues are chosen before the steps are built and read when the consumer starts (last).
        worker.app.amqp.queues.select_add(recovery_queue(get_settings()))

    def create(self, worker: Any) -> Reaper:  # type: ignore[override]  # stubs say None
        """The step's `obj`: Celery starts, stops and terminates it with the worker."""
        settings = get_settings()
        return Reaper(settings, celery_sender(worker.app, settings))
