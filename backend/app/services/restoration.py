"""Restoration jobs as the API sees them: create, read, list, cancel, delete.

Services never commit: the endpoint owns the transaction, because the order "store the original,
insert the job, commit, then enqueue" spans the database, S3 and the broker.
"""

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.errors import (
    IdempotencyKeyReused,
    JobNotCompleted,
    JobNotFound,
    StorageUnavailable,
)
from app.models import JobStatus, RestorationJob, User
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from app.services import s3
from app.services.images import ImageInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultLink:
    url: str
    expires_at: datetime


class RestorationService:
    def __init__(self, session: AsyncSession, storage: s3.S3Storage, settings: Settings) -> None:
        self.session = session
        self.jobs = RestorationJobRepository(session)
        self.storage = storage
        self.settings = settings

    async def find_by_idempotency_key(self, user: User, key: str) -> RestorationJob | None:
        return await self.jobs.get_by_idempotency_key(user.id, key)

    @staticmethod
    def replay(job: RestorationJob, fingerprint: str | None) -> RestorationJob:
        """The job an Idempotency-Key made, if this request is the same one (IETF draft: a key
        reused with another request is refused)."""
        if job.request_fingerprint is not None and job.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        return job

    async def create_job(
        self,
        user: User,
        *,
        file: IO[bytes],
        size: int,
        image: ImageInfo,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> tuple[RestorationJob, bool]:
        """Store the original in S3, then insert the PENDING job (not committed).

        Returns the job and whether it is new: with an Idempotency-Key seen before, the earlier job
        (IdempotencyKeyReused when `fingerprint` differs from the one it was made with).
        No job row survives a failed upload, and no object survives a failed insert.
        """
        # Read now: the rollback below expires every object of the session, `user` too, and
        # reading an expired attribute reloads it synchronously, which fails on an async session.
        user_id = user.id
        if idempotency_key is not None:
            existing = await self.jobs.get_by_idempotency_key(user_id, idempotency_key)
            if existing is not None:
                return self.replay(existing, fingerprint), False

        job_id = uuid.uuid4()
        key = s3.original_key(user_id, job_id, image.format.extension)
        try:
            await self.storage.upload(key, file, content_type=image.format.content_type)
        except s3.StorageError as error:
            logger.warning("original upload failed for job %s: %s", job_id, error)
            raise StorageUnavailable("The image could not be stored; try again later.") from error

        job = RestorationJob(
            id=job_id,
            user_id=user_id,
            status=JobStatus.PENDING,
            idempotency_key=idempotency_key,
            request_fingerprint=fingerprint,
            original_key=key,
            content_type=image.format.content_type,
            size_bytes=size,
            width=image.width,
            height=image.height,
            workflow=self.settings.comfyui_workflow.value,
        )
        try:
            await self.jobs.add(job)
        except IntegrityError:
            # Another request with the same Idempotency-Key won the race: answer with its job.
            await self.session.rollback()
            await self.discard_original(job)
            if idempotency_key is not None:
                existing = await self.jobs.get_by_idempotency_key(user_id, idempotency_key)
                if existing is not None:
                    return self.replay(existing, fingerprint), False
            raise
        except BaseException:
            await self.discard_original(job)
            raise
        return job, True

    async def discard_original(self, job: RestorationJob) -> None:
        """Best effort: remove the original of a job whose row never got committed."""
        try:
            await self.storage.delete(job.original_key)
        except s3.StorageError as error:
            logger.warning("could not remove orphaned original %s: %s", job.original_key, error)

    async def record_enqueue_failure(self, job: RestorationJob, reason: str) -> RestorationJob:
        failed = await self.jobs.fail_pending(job.id, f"Could not queue the job: {reason}")
        return failed or job

    async def get(self, user: User, job_id: uuid.UUID) -> RestorationJob:
        job = await self.jobs.get_for_user(job_id, user.id)
        if job is None:  # another user's job looks exactly like a missing one
            raise JobNotFound()
        return job

    async def list(
        self, user: User, *, limit: int, offset: int
    ) -> tuple[Sequence[RestorationJob], int]:
        return await self.jobs.list_for_user(user.id, limit=limit, offset=offset)

    async def result_link(self, job: RestorationJob) -> ResultLink:
        if job.status is not JobStatus.COMPLETED or job.result_key is None:
            raise JobNotCompleted(
                f"The job is {job.status.value}; a result exists once it is COMPLETED.",
                details={"status": job.status.value},
            )
        expires_in = self.settings.presign_expiry_seconds
        try:
            url = await self.storage.presign_download(job.result_key, expires_in=expires_in)
        except s3.StorageError as error:
            raise StorageUnavailable() from error
        return ResultLink(url=url, expires_at=utcnow() + timedelta(seconds=expires_in))

    async def cancel_or_delete(self, user: User, job_id: uuid.UUID) -> RestorationJob | None:
        """Cancel an active job (returned), or delete a finished one and its objects (None)."""
        job = await self.get(user, job_id)
        if not job.status.is_finished:
            cancelled = await self.jobs.cancel(job.id, user.id)
            if cancelled is not None:
                return cancelled
            job = await self.get(user, job_id)  # it finished meanwhile: delete it below
        await self.jobs.delete(job)
        try:
            await self.storage.delete(job.original_key, job.result_key or "")
        except s3.StorageError as error:
            # The caller's transaction rolls back: the row stays and still names its objects.
            raise StorageUnavailable("The job's files could not be deleted; try again.") from error
        return None
