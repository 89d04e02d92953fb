"""The restoration task: claim the job, restore the original with ComfyUI, store the result.

Every transition is a compare-and-set (see `RestorationJobRepository`), so a redelivered or duplicate
message never reprocesses a finished job or moves one backwards. While it works, the task renews its
lease on the job; a failed renewal means the job was cancelled (or taken over), and the run stops.

A message never ends while its job may still need it: a job held by another attempt's live lease is
checked again once that lease can have expired, and a job not yet visible (a message faster than
the API's commit) is looked for again during a grace period. Transient failures retry within a time
budget (`TASK_RETRY_BUDGET_SECONDS`), not a count. The reaper (`app.workers.recovery`) catches what
messages alone cannot: jobs whose messages were lost.
"""

import asyncio
import contextlib
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from app.core.config import Settings, WorkflowName, get_settings
from app.core.db import session_scope
from app.core.timing import job_timings
from app.models import JobStatus, RestorationJob
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from app.services import s3
from app.services.comfyui import ComfyUIError, ExecutionCancelled
from app.workers import recovery, runtime
from app.workers.celery_app import celery_app
from app.workers.context import ContextFactory, WorkerContext, worker_context
from app.workers.queue import RESTORE_TASK
from app.workers.recovery import REAP_TASK

logger = logging.getLogger(__name__)

# Tests swap this for a factory that hands out doubles.
context_factory: ContextFactory = worker_context


class Result(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # not ours to run: finished or cancelled
    RETRY = "retry"
    HELD = "held"  # another attempt's lease is live: look again once it can have expired
    MISSING = "missing"  # no such job (yet): the API's commit may not have landed


class JobDatabaseError(Exception):
    """The database failed during a run; the task retries it.

    `attempt` is the attempt whose lease the run holds (the one it claimed, else the one it was
    handed), so the retry can take the job back at once instead of waiting for the lease to expire.
    """

    def __init__(self, message: str, attempt: int | None) -> None:
        super().__init__(message, attempt)
        self.attempt = attempt

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Outcome:
    result: Result
    attempt: int | None = None
    retry_in: float | None = None
    message: str | None = None
    # When the current run of transient failures began (time.time()): the budget counts from it.
    retrying_since: float | None = None


def backoff_seconds(attempt: int, settings: Settings) -> float:
    """Exponential backoff with jitter: half the ceiling, plus up to the other half at random."""
    ceiling = min(
        settings.task_retry_backoff_max_seconds,
        settings.task_retry_backoff_seconds * 2.0 ** max(attempt - 1, 0),
    )
    return ceiling / 2 + random.uniform(0, ceiling / 2)  # noqa: S311 - jitter, not security


class _Progress:
    """The latest progress the restorer reported; the heartbeat writes it."""

    def __init__(self) -> None:
        self.value = 0.0

    def update(self, value: float) -> None:
        self.value = max(self.value, min(value, 1.0))


async def _keep_lease(
    ctx: WorkerContext, job_id: uuid.UUID, attempt: int, progress: _Progress, stop: asyncio.Event
) -> None:
    """Renew the lease every few seconds; set `stop` once the job is no longer ours."""
    while True:
        await asyncio.sleep(ctx.settings.task_heartbeat_seconds)
        try:
            async with session_scope(ctx.session_factory) as session:
                held = await RestorationJobRepository(session).heartbeat(
                    job_id, attempt, progress=progress.value
                )
                await session.commit()
        except SQLAlchemyError as error:  # a blip must not abort a healthy run
            logger.warning("heartbeat for job %s failed: %s", job_id, error)
            continue
        if not held:
            logger.info("job %s was cancelled or taken over; stopping attempt %d", job_id, attempt)
            stop.set()
            return


def waiting_message(error: Exception, attempt: int, delay: float) -> str:
    """What the job shows while it waits for a transient failure to pass."""
    if isinstance(error, ComfyUIError):
        what = "waiting for ComfyUI"
    elif isinstance(error, s3.StorageError):
        what = "waiting for storage"
    else:
        what = f"Attempt {attempt} failed"
    return f"{what}: {error} (attempt {attempt}; trying again in {delay:.0f} s)"


async def _finish(
    ctx: WorkerContext,
    job: RestorationJob,
    attempt: int,
    error: Exception,
    retrying_since: float | None = None,
) -> Outcome:
    """Record a failed attempt: retry transient errors within the time budget, else FAILED."""
    transient = bool(getattr(error, "transient", False))
    now = time.time()
    since = retrying_since if retrying_since is not None else now
    async with session_scope(ctx.session_factory) as session:
        jobs = RestorationJobRepository(session)
        delay = backoff_seconds(attempt, ctx.settings)
        if transient and now - since + delay <= ctx.settings.task_retry_budget_seconds:
            message = waiting_message(error, attempt, delay)
            held = await jobs.release_for_retry(job.id, attempt, message)
            await session.commit()
            if held:
                logger.warning("job %s: %s", job.id, message)
                return Outcome(
                    Result.RETRY, attempt, retry_in=delay, message=message, retrying_since=since
                )
            return Outcome(Result.CANCELLED, attempt)
        message = (
            f"Gave up after {attempt} attempts in {now - since:.0f} s: {error}"
            if transient
            else str(error)
        )
        failed = await jobs.fail(job.id, attempt, message)
        await session.commit()
    if failed is None:
        return Outcome(Result.CANCELLED, attempt)
    logger.error("job %s failed: %s", job.id, message)
    return Outcome(Result.FAILED, attempt, message=message)


async def process_job(
    ctx: WorkerContext,
    job_id: uuid.UUID,
    *,
    held_attempt: int | None = None,
    retrying_since: float | None = None,
) -> Outcome:
    """One attempt at one job. Database errors propagate as `JobDatabaseError`: the task retries them."""
    settings = ctx.settings
    lease = timedelta(seconds=settings.task_lease_seconds)
    try:
        async with session_scope(ctx.session_factory) as session:
            jobs = RestorationJobRepository(session)
            job = await jobs.claim(
                job_id, lease_expired_before=utcnow() - lease, held_attempt=held_attempt
            )
            await session.commit()
            if job is None:
                unclaimed = await jobs.get(job_id)
    except DBAPIError as error:
        raise JobDatabaseError(f"claiming job {job_id}: {error.orig}", held_attempt) from error
    if job is None:
        return _not_claimed(job_id, unclaimed, lease)
    try:
        return await _run_attempt(ctx, job, retrying_since)
    except DBAPIError as error:
        raise JobDatabaseError(f"running job {job_id}: {error.orig}", job.attempts) from error


def _not_claimed(job_id: uuid.UUID, job: RestorationJob | None, lease: timedelta) -> Outcome:
    """Why the claim failed: no such job (yet), a live lease, or a finished job."""
    if job is None:
        logger.info("job %s not found (yet)", job_id)
        return Outcome(Result.MISSING)
    if job.status is JobStatus.PROCESSING and job.heartbeat_at is not None:
        # Its holder may have died a moment ago (a redelivery after a pool process was killed):
        # look again once the lease can have expired, rather than drop the message.
        remaining = (job.heartbeat_at + lease - utcnow()).total_seconds()
        retry_in = max(remaining, 0.0) + 1.0
        logger.info(
            "job %s is held by attempt %d; checking again in %.0f s", job_id, job.attempts, retry_in
        )
        return Outcome(Result.HELD, job.attempts, retry_in=retry_in)
    logger.info("job %s is %s; nothing to do", job_id, job.status.value)
    return Outcome(Result.SKIPPED)


async def _run_attempt(
    ctx: WorkerContext, job: RestorationJob, retrying_since: float | None = None
) -> Outcome:
    settings = ctx.settings
    attempt = job.attempts
    progress, stop = _Progress(), asyncio.Event()
    lease = asyncio.create_task(_keep_lease(ctx, job.id, attempt, progress, stop))
    result_key: str | None = None
    try:
        original = await ctx.storage.download(job.original_key)
        restored = await ctx.restorer.restore(
            job_id=job.id,
            attempt=attempt,
            image=original,
            extension=job.original_key.rsplit(".", 1)[-1],
            workflow=WorkflowName(job.workflow),
            on_progress=progress.update,
            cancel=stop,
        )
        result_key = s3.result_key(job.user_id, job.id)
        await ctx.storage.put_bytes(result_key, restored.data, content_type="image/png")
        async with session_scope(ctx.session_factory) as session:
            completed = await RestorationJobRepository(session).complete(
                job.id,
                attempt,
                result_key=result_key,
                width=restored.width,
                height=restored.height,
                prompt_id=restored.prompt_id,
            )
            await session.commit()
    except ExecutionCancelled as error:
        if not stop.is_set():  # not our doing: someone interrupted ComfyUI, the job must end
            return await _finish(ctx, job, attempt, error)
        return Outcome(Result.CANCELLED, attempt)
    except (ComfyUIError, s3.StorageError) as error:
        return await _finish(ctx, job, attempt, error, retrying_since)
    except SoftTimeLimitExceeded:
        limit = settings.task_soft_time_limit_seconds
        return await _finish(
            ctx, job, attempt, TimeoutError(f"The job took longer than {limit:g} s.")
        )
    except DBAPIError:
        raise
    except Exception as error:
        logger.exception("job %s: unexpected error", job.id)
        # The log has the details; the job's message, which users read, does not.
        internal = RuntimeError(f"Internal error ({type(error).__name__}); see the worker log.")
        return await _finish(ctx, job, attempt, internal)
    finally:
        lease.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease

    if completed is None:  # cancelled while we worked: the result is not wanted
        with contextlib.suppress(s3.StorageError):
            await ctx.storage.delete(result_key)
        return Outcome(Result.CANCELLED, attempt)
    logger.info("job %s completed (%dx%d)", job.id, restored.width, restored.height)
    return Outcome(Result.COMPLETED, attempt)


async def run_job(
    settings: Settings,
    job_id: uuid.UUID,
    held_attempt: int | None,
    retrying_since: float | None = None,
) -> Outcome:
    with job_timings(job_id):  # logs the run's stage timings
        async with context_factory(settings) as ctx:
            return await process_job(
                ctx, job_id, held_attempt=held_attempt, retrying_since=retrying_since
            )


async def fail_overdue_job(settings: Settings, job_id: uuid.UUID, message: str) -> None:
    async with context_factory(settings) as ctx, session_scope(ctx.session_factory) as session:
        await RestorationJobRepository(session).fail_processing(job_id, message)
        await session.commit()


@celery_app.task(bind=True, name=RESTORE_TASK, max_retries=None)
def restore_image(
    self: Task[Any, str],
    job_id: str,
    held_attempt: int | None = None,
    retrying_since: float | None = None,
    missing_since: float | None = None,
) -> str:
    settings = get_settings()
    job_uuid = uuid.UUID(job_id)
    now = time.time()
    try:
        outcome = runtime.run(run_job(settings, job_uuid, held_attempt, retrying_since))
    except JobDatabaseError as error:
        # The database is away: try again later, holding on to our lease if we had one.
        since = retrying_since if retrying_since is not None else now
        delay = backoff_seconds(self.request.retries + 1, settings)
        if now - since + delay > settings.task_retry_budget_seconds:
            logger.error("job %s: database unavailable, giving up: %s", job_id, error)
            raise
        logger.warning("job %s: database unavailable, retrying in %.0f s", job_id, delay)
        raise self.retry(
            countdown=delay,
            exc=error,
            kwargs={"held_attempt": error.attempt, "retrying_since": since},
        ) from error
    except SoftTimeLimitExceeded:
        # Celery raises this from a signal handler, so it can surface outside process_job (in the
        # event loop itself): record the failure here too, or the job would stay PROCESSING.
        limit = settings.task_soft_time_limit_seconds
        logger.error("job %s exceeded the soft time limit of %s s", job_id, limit)
        runtime.run(fail_overdue_job(settings, job_uuid, f"The job took longer than {limit:g} s."))
        return Result.FAILED.value
    if outcome.result is Result.RETRY:
        assert outcome.retry_in is not None
        raise self.retry(
            countdown=outcome.retry_in,
            kwargs={"held_attempt": outcome.attempt, "retrying_since": outcome.retrying_since},
        )
    if outcome.result is Result.HELD:
        assert outcome.retry_in is not None
        raise self.retry(countdown=outcome.retry_in, kwargs={"retrying_since": retrying_since})
    if outcome.result is Result.MISSING:
        since = missing_since if missing_since is not None else now
        if now - since < settings.task_missing_job_grace_seconds:
            delay = min(0.5 * 2.0**self.request.retries, 5.0)
            raise self.retry(countdown=delay, kwargs={"missing_since": since})
        logger.warning(
            "job %s: still not found after %.0f s; dropping the message", job_id, now - since
        )
    return outcome.result.value


@celery_app.task(name=REAP_TASK, ignore_result=True)
def reap_stranded_jobs() -> int:
    """One sweep of `app.workers.recovery`, asked for by every worker's timer."""
    settings = get_settings()
    recover = recovery.celery_sender(celery_app, settings)
    requeue = recovery.celery_sender(celery_app, settings, settings.celery_queue)
    return len(runtime.run(sweep_stranded_jobs(settings, recover, requeue)))


async def sweep_stranded_jobs(
    settings: Settings, recover: recovery.Send, requeue: recovery.Send
) -> list[uuid.UUID]:
    # On the process's pooled context, like a job: a sweep every few seconds on every worker
    # would otherwise build an engine and an event loop each time.
    async with context_factory(settings) as ctx:
        return await recovery.reap_once(settings, ctx.session_factory, recover, requeue)
