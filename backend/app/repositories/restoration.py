"""Restoration jobs.

Every status change the worker makes is a compare-and-set in SQL: an UPDATE whose WHERE clause names
the state it expects, so a redelivered or duplicate message never moves a job backwards. Worker-side
updates also name the attempt that claimed the job, which fences off a worker whose lease was taken.
"""

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import JobStatus, RestorationJob
from app.models.base import utcnow

ACTIVE_STATUSES = (JobStatus.PENDING, JobStatus.PROCESSING)


class RestorationJobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- reads

    async def get(self, job_id: uuid.UUID) -> RestorationJob | None:
        return await self.session.get(RestorationJob, job_id, populate_existing=True)

    async def get_for_user(self, job_id: uuid.UUID, user_id: uuid.UUID) -> RestorationJob | None:
        query = select(RestorationJob).where(
            RestorationJob.id == job_id, RestorationJob.user_id == user_id
        )
        result = await self.session.execute(query.execution_options(populate_existing=True))
        return result.scalar_one_or_none()

    async def get_by_idempotency_key(
        self, user_id: uuid.UUID, idempotency_key: str
    ) -> RestorationJob | None:
        query = select(RestorationJob).where(
            RestorationJob.user_id == user_id, RestorationJob.idempotency_key == idempotency_key
        )
        result = await self.session.execute(query)
        return result.scalar_one_or_none()

    async def list_for_user(
        self, user_id: uuid.UUID, *, limit: int, offset: int
    ) -> tuple[Sequence[RestorationJob], int]:
        """One page of the user's jobs, newest first, and how many there are in all."""
        mine = RestorationJob.user_id == user_id
        total = await self.session.scalar(select(func.count()).where(mine))
        query = (
            select(RestorationJob)
            .where(mine)
            .order_by(RestorationJob.created_at.desc(), RestorationJob.id.desc())
            .limit(limit)
            .offset(offset)
        )
        result = await self.session.execute(query)
        return result.scalars().all(), total or 0

    # --- writes from the API

    async def add(self, job: RestorationJob) -> RestorationJob:
        self.session.add(job)
        await self.session.flush()
        return job

    async def delete(self, job: RestorationJob) -> None:
        await self.session.execute(delete(RestorationJob).where(RestorationJob.id == job.id))

    async def cancel(self, job_id: uuid.UUID, user_id: uuid.UUID) -> RestorationJob | None:
        """PENDING or PROCESSING -> CANCELLED; None when the job is not active (any more)."""
        return await self._transition(
            and_(
                RestorationJob.id == job_id,
                RestorationJob.user_id == user_id,
                RestorationJob.status.in_(ACTIVE_STATUSES),
            ),
            status=JobStatus.CANCELLED,
            finished_at=utcnow(),
            heartbeat_at=None,
        )

    async def fail_pending(self, job_id: uuid.UUID, message: str) -> RestorationJob | None:
        """PENDING -> FAILED, for a job that never reached a worker."""
        return await self._transition(
            and_(RestorationJob.id == job_id, RestorationJob.status == JobStatus.PENDING),
            status=JobStatus.FAILED,
            error_message=message,
            finished_at=utcnow(),
        )

    # --- writes from the worker

    async def claim(
        self,
        job_id: uuid.UUID,
        *,
        lease_expired_before: datetime,
        held_attempt: int | None = None,
    ) -> RestorationJob | None:
        """Take the job for one attempt.

        A PENDING job is claimed, and so is a PROCESSING one whose lease was released (a retry), ran
        out (its worker died), or belongs to `held_attempt` (the retry of the attempt that holds it).
        Anything else (finished, cancelled, held by a live worker) is not.
        """
        now = utcnow()
        lease_free = or_(
            RestorationJob.heartbeat_at.is_(None),
            RestorationJob.heartbeat_at < lease_expired_before,
        )
        if held_attempt is not None:
            lease_free = or_(lease_free, RestorationJob.attempts == held_attempt)
        return await self._transition(
            and_(
                RestorationJob.id == job_id,
                or_(
                    RestorationJob.status == JobStatus.PENDING,
                    and_(RestorationJob.status == JobStatus.PROCESSING, lease_free),
                ),
            ),
            status=JobStatus.PROCESSING,
            attempts=RestorationJob.attempts + 1,
            started_at=func.coalesce(RestorationJob.started_at, now),
            heartbeat_at=now,
        )

    async def heartbeat(self, job_id: uuid.UUID, attempt: int, *, progress: float) -> bool:
        """Renew the lease and store progress; False when the job was cancelled or taken over."""
        updated = await self._transition(
            self._held(job_id, attempt),
            heartbeat_at=utcnow(),
            progress=min(max(progress, 0.0), 1.0),
        )
        return updated is not None

    async def release_for_retry(self, job_id: uuid.UUID, attempt: int, message: str) -> bool:
        """Keep the job PROCESSING but drop the lease, so the retried message can claim it."""
        updated = await self._transition(
            self._held(job_id, attempt), heartbeat_at=None, error_message=message
        )
        return updated is not None

    async def complete(
        self,
        job_id: uuid.UUID,
        attempt: int,
        *,
        result_key: str,
        width: int,
        height: int,
        prompt_id: str,
    ) -> RestorationJob | None:
        return await self._transition(
            self._held(job_id, attempt),
            status=JobStatus.COMPLETED,
            comfyui_prompt_id=prompt_id,
            result_key=result_key,
            result_width=width,
            result_height=height,
            progress=1.0,
            error_message=None,
            finished_at=utcnow(),
            heartbeat_at=None,
        )

    async def fail(self, job_id: uuid.UUID, attempt: int, message: str) -> RestorationJob | None:
        return await self._transition(
            self._held(job_id, attempt),
            status=JobStatus.FAILED,
            error_message=message,
            finished_at=utcnow(),
            heartbeat_at=None,
        )

    async def fail_processing(self, job_id: uuid.UUID, message: str) -> RestorationJob | None:
        """PROCESSING -> FAILED whichever attempt holds it: for a run Celery stopped from outside."""
        return await self._transition(
            and_(RestorationJob.id == job_id, RestorationJob.status == JobStatus.PROCESSING),
            status=JobStatus.FAILED,
            error_message=message,
            finished_at=utcnow(),
            heartbeat_at=None,
        )

    # --- recovery

    async def reap(
        self,
        *,
        lease_expired_before: datetime,
        released_before: datetime,
        pending_before: datetime,
        limit: int = 100,
    ) -> list[uuid.UUID]:
        """Ids of jobs no message may be left for, marked so the next sweep leaves them a while.

        PROCESSING jobs whose lease expired (their worker died), PROCESSING jobs released for a
        retry whose message has not come back, and PENDING jobs waiting longer than expected.
        `FOR UPDATE SKIP LOCKED`: reapers on several workers never pick the same row at once, and
        the row stays locked until the caller commits, after it sent the messages. Marking bumps
        `updated_at` and drops the lease, so each job comes back only once `released_before`
        (or `pending_before`) has passed again.
        """
        stranded = or_(
            and_(
                RestorationJob.status == JobStatus.PROCESSING,
                RestorationJob.heartbeat_at < lease_expired_before,
            ),
            and_(
                RestorationJob.status == JobStatus.PROCESSING,
                RestorationJob.heartbeat_at.is_(None),
                RestorationJob.updated_at < released_before,
            ),
            and_(
                RestorationJob.status == JobStatus.PENDING,
                RestorationJob.updated_at < pending_before,
            ),
        )
        query = (
            select(RestorationJob.id)
            .where(stranded)
            .order_by(RestorationJob.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = list((await self.session.execute(query)).scalars().all())
        if ids:
            await self.session.execute(
                update(RestorationJob)
                .where(RestorationJob.id.in_(ids))
                .values(heartbeat_at=None, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        return ids

    # --- helpers

    @staticmethod
    def _held(job_id: uuid.UUID, attempt: int) -> ColumnElement[bool]:
        return and_(
            RestorationJob.id == job_id,
            RestorationJob.status == JobStatus.PROCESSING,
            RestorationJob.attempts == attempt,
        )

    async def _transition(
        self, condition: ColumnElement[bool], **values: Any
    ) -> RestorationJob | None:
        statement = (
            update(RestorationJob)
            .where(condition)
            .values(**values)
            .returning(RestorationJob)
            .execution_options(populate_existing=True, synchronize_session=False)
        )
        result = await self.session.execute(statement)
        return result.scalar_one_or_none()
