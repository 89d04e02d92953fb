"""Restoration jobs: upload a photo, follow the job, fetch the result, cancel or delete."""

import logging
import uuid
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from fastapi.responses import RedirectResponse
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import (
    CurrentUser,
    RestorationServiceDep,
    SessionDep,
    SettingsDep,
    TaskQueueDep,
)
from app.api.uploads import receive_file
from app.core.errors import IdempotencyKeyReused, QueueUnavailable, RequestInvalid
from app.models import JobStatus, RestorationJob
from app.schemas.errors import ErrorResponse
from app.schemas.restoration import RestorationJobOut, RestorationJobPage
from app.services.images import inspect_image
from app.services.restoration import RestorationService
from app.workers.queue import QueueError

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/restorations", tags=["restorations"])

UPLOAD_FIELD = "file"
MAX_PAGE_SIZE = 100
# Far past any user's job count, and inside every database's OFFSET (Postgres: bigint), so no value
# the schema lets through can fail in the database.
MAX_OFFSET = 2**31 - 1
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (401, 404, 413, 415, 422, 503)
}
MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [UPLOAD_FIELD],
                    "properties": {
                        UPLOAD_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A JPEG, PNG, WebP or TIFF photo.",
                        }
                    },
                }
            }
        },
    }
}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Repeat a request safely: the same key returns the same job.",
    ),
]
JobId = Annotated[uuid.UUID, Path(description="The job's id, as returned by the upload.")]


def job_location(request: Request, job: RestorationJob) -> str:
    return request.url_for("get_restoration", job_id=str(job.id)).path


async def job_out(service: RestorationService, job: RestorationJob) -> RestorationJobOut:
    out = RestorationJobOut.model_validate(job)
    if job.status is JobStatus.COMPLETED:
        link = await service.result_link(job)
        out.result_url, out.result_url_expires_at = link.url, link.expires_at
    return out


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RestorationJobOut,
    responses=ERRORS,
    openapi_extra=MULTIPART_BODY,
    summary="Upload a photo to restore",
)
async def create_restoration(
    request: Request,
    response: Response,
    user: CurrentUser,
    session: SessionDep,
    service: RestorationServiceDep,
    queue: TaskQueueDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> RestorationJobOut:
    existing = None
    if idempotency_key is not None:
        existing = await service.find_by_idempotency_key(user, idempotency_key)

    try:
        upload = await receive_file(
            request, field_name=UPLOAD_FIELD, max_bytes=settings.max_upload_bytes
        )
    except RequestInvalid as error:
        if existing is not None:  # a replay without the file is another request
            raise IdempotencyKeyReused() from error
        raise
    try:
        if existing is not None:
            replayed = service.replay(existing, upload.sha256)
            response.headers["Location"] = job_location(request, replayed)
            response.headers["Idempotent-Replayed"] = "true"
            return await job_out(service, replayed)
        image = await anyio.to_thread.run_sync(
            lambda: inspect_image(
                upload.file,
                max_pixels=settings.max_image_pixels,
                min_side=settings.image_min_side_pixels,
            )
        )
        upload.strip_after(image.end)
        job, created = await service.create_job(
            user,
            file=upload.file,
            size=upload.size,
            image=image,
            idempotency_key=idempotency_key,
            fingerprint=upload.sha256,
        )
    finally:
        upload.close()

    response.headers["Location"] = job_location(request, job)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
        return await job_out(service, job)

    try:
        await session.commit()
    except SQLAlchemyError:
        await service.discard_original(job)
        raise

    try:
        await queue.enqueue_restoration(job.id)
    except QueueError as error:
        logger.error("enqueue failed for job %s: %s", job.id, error)
        await service.record_enqueue_failure(job, str(error))
        await session.commit()
        raise QueueUnavailable(
            "The job was stored but could not be queued; it is marked FAILED. Try again later.",
            details={"job_id": str(job.id)},
        ) from error
    return await job_out(service, job)


@router.get("", response_model=RestorationJobPage, responses=ERRORS, summary="List my jobs")
async def list_restorations(
    user: CurrentUser,
    service: RestorationServiceDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RestorationJobPage:
    jobs, total = await service.list(user, limit=limit, offset=offset)
    return RestorationJobPage(
        items=[RestorationJobOut.model_validate(job) for job in jobs],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get(
    "/{job_id}", response_model=RestorationJobOut, responses=ERRORS, summary="One job's state"
)
async def get_restoration(
    job_id: JobId, user: CurrentUser, service: RestorationServiceDep
) -> RestorationJobOut:
    return await job_out(service, await service.get(user, job_id))


@router.get(
    "/{job_id}/result",
    status_code=status.HTTP_303_SEE_OTHER,
    response_class=RedirectResponse,
    responses={**ERRORS, 409: {"model": ErrorResponse}},
    summary="Redirect to the restored image",
)
async def get_restoration_result(
    job_id: JobId, user: CurrentUser, service: RestorationServiceDep
) -> RedirectResponse:
    job = await service.get(user, job_id)
    link = await service.result_link(job)
    return RedirectResponse(link.url, status_code=status.HTTP_303_SEE_OTHER)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RestorationJobOut,
    responses={**ERRORS, 204: {"description": "The finished job and its files were deleted."}},
    summary="Cancel an active job, or delete a finished one",
)
async def delete_restoration(
    job_id: JobId, user: CurrentUser, session: SessionDep, service: RestorationServiceDep
) -> Any:
    cancelled = await service.cancel_or_delete(user, job_id)
    await session.commit()
    if cancelled is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return RestorationJobOut.model_validate(cancelled)
