"""DELETE: cancel an active job, delete a finished one with its files."""

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import JobStatus, RestorationJob
from app.services.s3 import StorageTransientError
from fixtures.accounts import Account
from tests.unit.api.test_restoration_read import add_job

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


def keys(s3_client, settings) -> set[str]:
    listing = s3_client.list_objects_v2(Bucket=settings.s3_bucket)
    return {item["Key"] for item in listing.get("Contents", [])}


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.PROCESSING])
async def test_delete_cancels_an_active_job(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, status: JobStatus
) -> None:
    job = await add_job(session, alice.user, status=status)

    response = await client.delete(f"{URL}/{job.id}", headers=alice.headers)

    assert response.status_code == 202
    assert response.json()["status"] == "CANCELLED"
    stored = await session.get(RestorationJob, job.id, populate_existing=True)
    assert stored is not None
    assert stored.status is JobStatus.CANCELLED
    assert stored.finished_at is not None


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED])
async def test_delete_removes_a_finished_job_and_its_objects(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, s3_client, settings, status
) -> None:
    job_id = uuid.uuid4()
    original = f"originals/{alice.user.id}/{job_id}.png"
    result = f"results/{alice.user.id}/{job_id}.png" if status is JobStatus.COMPLETED else None
    for key in filter(None, (original, result)):
        s3_client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"x")
    other = await add_job(session, alice.user)  # must survive
    s3_client.put_object(Bucket=settings.s3_bucket, Key=other.original_key, Body=b"x")
    await add_job(
        session, alice.user, id=job_id, status=status, original_key=original, result_key=result
    )

    response = await client.delete(f"{URL}/{job_id}", headers=alice.headers)

    assert response.status_code == 204
    assert response.content == b""
    assert await session.get(RestorationJob, job_id, populate_existing=True) is None
    assert keys(s3_client, settings) == {other.original_key}
    assert (await client.get(f"{URL}/{job_id}", headers=alice.headers)).status_code == 404


async def test_delete_keeps_the_job_when_storage_fails(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, storage, monkeypatch
) -> None:
    job = await add_job(session, alice.user, status=JobStatus.COMPLETED, result_key="results/x.png")

    async def broken_delete(*keys):
        raise StorageTransientError("S3 delete failed: SlowDown")

    monkeypatch.setattr(storage, "delete", broken_delete)
    response = await client.delete(f"{URL}/{job.id}", headers=alice.headers)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    stored = await session.get(RestorationJob, job.id, populate_existing=True)
    assert stored is not None
    assert stored.status is JobStatus.COMPLETED


async def test_delete_of_another_users_job_is_404_and_harmless(
    client: httpx.AsyncClient, alice: Account, bob: Account, session: AsyncSession
) -> None:
    job = await add_job(session, alice.user, status=JobStatus.PENDING)

    response = await client.delete(f"{URL}/{job.id}", headers=bob.headers)

    assert response.status_code == 404
    stored = await session.get(RestorationJob, job.id, populate_existing=True)
    assert stored is not None
    assert stored.status is JobStatus.PENDING
