"""Reading jobs: one, a page of them, and the result; nobody sees another user's job."""

import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import JobStatus, RestorationJob, User
from fixtures.accounts import Account

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


async def add_job(session: AsyncSession, user: User, **overrides) -> RestorationJob:
    job_id = overrides.pop("id", uuid.uuid4())
    values = {
        "id": job_id,
        "user_id": user.id,
        "original_key": f"originals/{user.id}/{job_id}.png",
        "content_type": "image/png",
        "size_bytes": 1234,
        "width": 64,
        "height": 48,
        "workflow": "restore",
    } | overrides
    job = RestorationJob(**values)
    session.add(job)
    await session.commit()
    return job


async def completed_job(session: AsyncSession, user: User, s3_client, settings) -> RestorationJob:
    job_id = uuid.uuid4()
    key = f"results/{user.id}/{job_id}.png"
    s3_client.put_object(Bucket=settings.s3_bucket, Key=key, Body=b"restored-bytes")
    return await add_job(
        session,
        user,
        id=job_id,
        status=JobStatus.COMPLETED,
        result_key=key,
        result_width=128,
        result_height=96,
        progress=1.0,
        finished_at=datetime.now(UTC),
    )


async def test_get_returns_the_job_state(
    client: httpx.AsyncClient, alice: Account, session
) -> None:
    job = await add_job(session, alice.user, status=JobStatus.PROCESSING, progress=0.5, attempts=1)

    response = await client.get(f"{URL}/{job.id}", headers=alice.headers)

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(job.id)
    assert body["status"] == "PROCESSING"
    assert body["progress"] == 0.5
    assert body["attempts"] == 1
    assert body["result_url"] is None
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None


async def test_completed_job_carries_a_short_lived_presigned_url(
    client: httpx.AsyncClient, alice: Account, session, s3_client, settings
) -> None:
    job = await completed_job(session, alice.user, s3_client, settings)

    body = (await client.get(f"{URL}/{job.id}", headers=alice.headers)).json()

    url = urlsplit(body["result_url"])
    assert url.path.endswith(f"/{settings.s3_bucket}/{job.result_key}")
    query = parse_qs(url.query)
    assert query["X-Amz-Expires"] == [str(settings.presign_expiry_seconds)]
    assert "X-Amz-Signature" in query
    expires_at = datetime.fromisoformat(body["result_url_expires_at"])
    expected = datetime.now(UTC) + timedelta(seconds=settings.presign_expiry_seconds)
    assert abs((expires_at - expected).total_seconds()) < 5
    assert (body["result_width"], body["result_height"]) == (128, 96)


async def test_failed_job_shows_its_error_message(
    client: httpx.AsyncClient, alice: Account, session
) -> None:
    job = await add_job(
        session, alice.user, status=JobStatus.FAILED, error_message="ComfyUI failed at node 1"
    )

    body = (await client.get(f"{URL}/{job.id}", headers=alice.headers)).json()

    assert (body["status"], body["error_message"]) == ("FAILED", "ComfyUI failed at node 1")


async def test_another_users_job_is_not_found(
    client: httpx.AsyncClient, alice: Account, bob: Account, session
) -> None:
    job = await add_job(session, alice.user)

    theirs = await client.get(f"{URL}/{job.id}", headers=bob.headers)
    missing = await client.get(f"{URL}/{uuid.uuid4()}", headers=bob.headers)

    assert theirs.status_code == missing.status_code == 404
    # Indistinguishable from a job that does not exist.
    assert theirs.json() == missing.json()
    assert theirs.json()["error"]["code"] == "job_not_found"


async def test_malformed_id_is_422(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.get(f"{URL}/not-a-uuid", headers=alice.headers)

    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["loc"] == ["path", "job_id"]


async def test_list_is_mine_only_newest_first_and_paginated(
    client: httpx.AsyncClient, alice: Account, bob: Account, session
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    mine = [
        await add_job(session, alice.user, created_at=start + timedelta(minutes=i))
        for i in range(5)
    ]
    await add_job(session, bob.user, created_at=start + timedelta(hours=1))

    first = (await client.get(URL, params={"limit": 2}, headers=alice.headers)).json()
    rest = (await client.get(URL, params={"limit": 2, "offset": 2}, headers=alice.headers)).json()
    last = (await client.get(URL, params={"limit": 2, "offset": 4}, headers=alice.headers)).json()

    newest_first = [str(job.id) for job in reversed(mine)]
    pages = [item["id"] for page in (first, rest, last) for item in page["items"]]
    assert pages == newest_first
    assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
    assert len(last["items"]) == 1


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"offset": -1},
        {"limit": "many"},
        # Past a bigint: the database used to answer this with a 500 (DataError).
        {"offset": 2**63},
        {"offset": 2**31},
        {"limit": 2**64},
    ],
)
async def test_list_refuses_bad_pagination(
    client: httpx.AsyncClient, alice: Account, params
) -> None:
    response = await client.get(URL, params=params, headers=alice.headers)

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


async def test_result_redirects_to_the_presigned_url(
    client: httpx.AsyncClient, alice: Account, session, s3_client, settings
) -> None:
    job = await completed_job(session, alice.user, s3_client, settings)

    response = await client.get(f"{URL}/{job.id}/result", headers=alice.headers)

    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path.endswith(job.result_key)
    assert "X-Amz-Signature" in location.query


@pytest.mark.parametrize(
    "status", [JobStatus.PENDING, JobStatus.PROCESSING, JobStatus.FAILED, JobStatus.CANCELLED]
)
async def test_result_is_409_until_completed(
    client: httpx.AsyncClient, alice: Account, session, status
) -> None:
    job = await add_job(session, alice.user, status=status)

    response = await client.get(f"{URL}/{job.id}/result", headers=alice.headers)

    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "job_not_completed"
    assert error["details"] == {"status": status.value}


async def test_result_of_another_users_job_is_404(
    client: httpx.AsyncClient, alice: Account, bob: Account, session, s3_client, settings
) -> None:
    job = await completed_job(session, alice.user, s3_client, settings)

    response = await client.get(f"{URL}/{job.id}/result", headers=bob.headers)

    assert response.status_code == 404
