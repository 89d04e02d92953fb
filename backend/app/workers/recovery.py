"""Recovery of stranded jobs, run inside every Celery worker: no job waits on luck or on the
broker's visibility timeout.

Every `REAPER_INTERVAL_SECONDS` each worker's timer asks for a sweep (a `restoration.reap` task).
The sweep sends a new message for each job that no message may be left for (see
`RestorationJobRepository.reap`): a PROCESSING job whose lease expired (its worker died), one
released for a retry whose message never came back, a PENDING job older than
`REAPER_PENDING_AFTER_SECONDS`. The sweep locks rows with
`SKIP LOCKED`, so workers sweep side by side without sending the same job twice. A job gets a
second message at worst; the claim's compare-and-set lets only one of them run it.

The messages for PROCESSING jobs go to `<CELERY_QUEUE>.recovery`, which every worker also
consumes, so a job of a dead worker does not wait behind a backlog of new ones. A PENDING job goes
back to the end of `<CELERY_QUEUE>`: it may only be waiting its turn in a long queue, and a batch of
such jobs in the recovery queue would stand before the dead worker's jobs (and the sweeps). A job of a crashed worker runs again within its lease
plus one sweep: less than 2 x `TASK_LEASE_SECONDS` while the interval is below the lease.
"""

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from celery import Celery, bootsteps
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, get_settings
from app.core.db import session_scope
from app.models import JobStatus, RestorationJob
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from app.workers.queue import RESTORE_TASK

REAP_TASK = "restoration.reap"

logger = logging.getLogger(__name__)

Send = Callable[[uuid.UUID], None]


def recovery_queue(settings: Settings) -> str:
    return f"{settings.celery_queue}.recovery"


async def reap_once(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    send: Send,
    send_pending: Send | None = None,
) -> list[uuid.UUID]:
    """One sweep: find stranded jobs, send a message for each, then commit the marks.
    PENDING jobs go through `send_pending` where given (see the module's docstring)."""
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
        pending: set[uuid.UUID] = set()
        if ids and send_pending is not None:
            found = await session.scalars(
                select(RestorationJob.id).where(
                    RestorationJob.id.in_(ids), RestorationJob.status == JobStatus.PENDING
                )
            )
            pending = set(found.all())
        for job_id in ids:  # before the commit: a failed send leaves the job to the next sweep
            if send_pending is not None and job_id in pending:
                send_pending(job_id)
            else:
                send(job_id)
        await session.commit()
    if ids:
        logger.warning("re-enqueued %d stranded job(s): %s", len(ids), ", ".join(map(str, ids)))
    return ids


def celery_sender(celery: Celery, settings: Settings, queue: str | None = None) -> Send:
    """Sends to `queue`, by default the recovery queue."""
    queue = queue or recovery_queue(settings)

    def send(job_id: uuid.UUID) -> None:
        celery.send_task(
            RESTORE_TASK,
            args=[str(job_id)],
            # A task id of its own: Celery remembers the id of an expired message as revoked,
            # and would then drop every later message with that id (the job's own id).
            task_id=f"{job_id}.recovery.{uuid.uuid4().hex[:12]}",
            queue=queue,
            # Behind a long backlog, a PENDING job is swept again each period: an older copy that
            # is still waiting expires unrun, so copies never pile up.
            expires=settings.reaper_pending_after_seconds,
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
        )

    return send


class RecoveryStep(bootsteps.StartStopStep):
    """Consumer bootstep: consume the recovery queue too, and ask for a sweep on a timer.

    The timer (the worker's own, on its main loop) only sends a `restoration.reap` message to the
    recovery queue; a pool process runs the sweep. No thread lives in the process that forks the
    pool (a fork taken while a thread holds a lock leaves the child hung), and a message that waited
    longer than one interval expires unrun, so sweeps never pile up behind busy workers.
    """

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        super().__init__(consumer, **kwargs)
        self.settings = get_settings()
        self.timer_entry: Any = None
        # Queues are chosen before the consumer is built and read when its task consumer starts.
        consumer.app.amqp.queues.select_add(recovery_queue(self.settings))

    def start(self, consumer: Any) -> None:
        self.timer_entry = consumer.timer.call_repeatedly(
            self.settings.reaper_interval_seconds, request_sweep, (consumer.app, self.settings)
        )

    def stop(self, consumer: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    shutdown = stop


def request_sweep(celery: Celery, settings: Settings) -> None:
    """Send one sweep request; a broker that does not answer only costs this sweep."""
    try:
        celery.send_task(
            REAP_TASK,
            queue=recovery_queue(settings),
            expires=settings.reaper_interval_seconds,
            retry=False,
        )
    except Exception as error:  # the broker is away: the next tick tries again
        logger.warning("could not request a sweep: %s: %s", type(error).__name__, error)
