"""API <-> DB, API <-> S3, API <-> Celery, against the real services: what the API writes to
Postgres, stores in S3 and puts on the Redis broker, read back with plain clients."""

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from app.api.v1.restoration import MAX_OFFSET
from app.core.config import Settings
from fixtures import images
from fixtures.accounts import Account
from tests.integration.helpers import JobsTable, object_keys, queued_messages, s3_client

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


def upload(data: bytes, filename: str = "photo.png", content_type: str = "image/png") -> dict:
    return {"file": (filename, data, content_type)}


async def create_job(client: httpx.AsyncClient, account: Account, **headers: str) -> str:
    response = await client.post(
        URL, files=upload(images.make_image()), headers={**account.headers, **headers}
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def complete_by_hand(jobs_table: JobsTable, settings: Settings, job_id: str, result: bytes) -> str:
    """What the worker would do: store a result and mark the job COMPLETED."""
    row = jobs_table.one(job_id)
    key = f"results/{row['user_id']}/{job_id}.png"
    s3_client(settings).put_object(
        Bucket=settings.s3_bucket, Key=key, Body=result, ContentType="image/png"
    )
    jobs_table.connection.execute(
        "UPDATE restoration_jobs SET status = 'COMPLETED', result_key = %s, result_width = 2, "
        "result_height = 2, progress = 1, finished_at = now() WHERE id = %s",
        [key, job_id],
    )
    return key


# --- API <-> DB and API <-> S3: the upload


@pytest.mark.parametrize("fmt", list(images.FORMATS))
async def test_upload_persists_the_job_and_stores_the_original(
    fmt: str,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    settings: Settings,
) -> None:
    data = images.make_image(fmt, (80, 60))
    before = datetime.now(UTC)

    # The filename and Content-Type lie: the bytes decide.
    response = await client.post(
        URL, files=upload(data, "photo.gif", "text/plain"), headers=alice.headers
    )

    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["Location"] == f"{URL}/{job_id}"
    row = jobs_table.one(job_id)
    assert row["status"] == "PENDING"
    assert (row["width"], row["height"], row["size_bytes"]) == (80, 60, len(data))
    assert row["content_type"] == images.CONTENT_TYPES[fmt]
    assert row["workflow"] == settings.comfyui_workflow.value
    assert (row["attempts"], row["progress"], row["error_message"]) == (0, 0.0, None)
    assert row["created_at"] >= before
    assert row["result_key"] is None
    # Keys come from ids only, never from the filename.
    assert row["original_key"] == f"originals/{row['user_id']}/{job_id}.{images.FORMATS[fmt]}"
    stored = s3_client(settings).get_object(Bucket=settings.s3_bucket, Key=row["original_key"])
    assert stored["Body"].read() == data
    assert stored["ContentType"] == images.CONTENT_TYPES[fmt]
    assert object_keys(settings) == {row["original_key"]}


async def test_the_job_belongs_to_the_token_s_user(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable
) -> None:
    job_id = await create_job(client, alice)

    owner = jobs_table.connection.execute(
        "SELECT u.email FROM restoration_jobs j JOIN users u ON u.id = j.user_id WHERE j.id = %s",
        [job_id],
    ).fetchone()
    assert owner == {"email": alice.email}


async def test_the_api_reads_back_what_postgres_holds(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable
) -> None:
    job_id = await create_job(client, alice)
    jobs_table.connection.execute(
        "UPDATE restoration_jobs SET status = 'FAILED', error_message = 'it broke', "
        "progress = 0.5, attempts = 3, finished_at = now() WHERE id = %s",
        [job_id],
    )

    body = (await client.get(f"{URL}/{job_id}", headers=alice.headers)).json()

    assert body["status"] == "FAILED"
    assert body["error_message"] == "it broke"
    assert body["progress"] == 0.5
    assert body["result_url"] is None
    assert body["finished_at"] is not None


async def test_the_list_is_newest_first_and_paginated(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    created = [await create_job(client, alice) for _ in range(3)]
    await create_job(client, bob)

    first = (await client.get(URL, params={"limit": 2}, headers=alice.headers)).json()
    second = (await client.get(URL, params={"limit": 2, "offset": 2}, headers=alice.headers)).json()

    assert first["total"] == second["total"] == 3
    listed = [job["id"] for job in first["items"] + second["items"]]
    assert listed == created[::-1]


async def test_any_offset_the_schema_lets_through_is_in_range_for_postgres(
    client: httpx.AsyncClient, alice: Account
) -> None:
    deepest = await client.get(URL, params={"offset": MAX_OFFSET}, headers=alice.headers)
    past = await client.get(URL, params={"offset": 2**63}, headers=alice.headers)

    assert deepest.status_code == 200, deepest.text
    assert deepest.json()["items"] == []
    # Postgres answered an offset past a bigint with DataError, a 500.
    assert past.status_code == 422, past.text
    assert past.json()["error"]["code"] == "validation_error"


async def test_the_same_idempotency_key_gives_the_same_job(
    client: httpx.AsyncClient,
    alice: Account,
    bob: Account,
    jobs_table: JobsTable,
    settings: Settings,
) -> None:
    first = await create_job(client, alice, **{"Idempotency-Key": "k-1"})
    again = await client.post(
        URL, files=upload(images.make_image()), headers={**alice.headers, "Idempotency-Key": "k-1"}
    )
    other_user = await create_job(client, bob, **{"Idempotency-Key": "k-1"})

    assert again.status_code == 202
    assert again.json()["id"] == first
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other_user != first
    assert jobs_table.count() == 2
    assert len(object_keys(settings)) == 2
    assert len(queued_messages(settings)) == 2
    assert (
        jobs_table.one(first)["request_fingerprint"]
        == hashlib.sha256(images.make_image()).hexdigest()
    )


async def post_at_once(
    client: httpx.AsyncClient, account: Account, key: str, *, seeds: list[int]
) -> list[httpx.Response]:
    """One upload per seed (the image's), all at once, all with Idempotency-Key `key`."""
    answers: list[httpx.Response] = []

    async def post(seed: int) -> None:
        answers.append(
            await client.post(
                URL,
                files=upload(images.make_image(seed=seed)),
                headers={**account.headers, "Idempotency-Key": key},
            )
        )

    async with anyio.create_task_group() as group:
        for seed in seeds:
            group.start_soon(post, seed)
    return answers


async def test_concurrent_requests_with_one_idempotency_key_make_one_job(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    """Both pass the first look-up; Postgres' unique constraint decides, the loser answers with
    the winner's job and removes the original it had stored."""
    answers = await post_at_once(client, alice, "same", seeds=[0, 0, 0, 0])

    assert [answer.status_code for answer in answers] == [202] * 4
    assert len({answer.json()["id"] for answer in answers}) == 1
    assert jobs_table.count() == 1
    assert object_keys(settings) == {jobs_table.one(answers[0].json()["id"])["original_key"]}
    assert len(queued_messages(settings)) == 1


async def test_concurrent_different_requests_with_one_key_make_one_job_and_refuse_the_rest(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    """Losers of the unique-constraint race compare fingerprints too: another file is a 422."""
    answers = await post_at_once(client, alice, "raced", seeds=[0, 1, 2, 3])

    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [202, 422, 422, 422], [answer.text for answer in answers]
    refused = [answer.json()["error"]["code"] for answer in answers if answer.status_code == 422]
    assert refused == ["idempotency_key_reused"] * 3
    assert jobs_table.count() == 1
    winner = next(answer for answer in answers if answer.status_code == 202)
    assert object_keys(settings) == {jobs_table.one(winner.json()["id"])["original_key"]}


# --- user <-> job


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("GET", "/result"), ("DELETE", "")])
async def test_another_user_s_job_is_not_found(
    method: str,
    suffix: str,
    client: httpx.AsyncClient,
    alice: Account,
    bob: Account,
    jobs_table: JobsTable,
) -> None:
    job_id = await create_job(client, alice)
    missing = await client.request(method, f"{URL}/{uuid.uuid4()}{suffix}", headers=bob.headers)

    response = await client.request(method, f"{URL}/{job_id}{suffix}", headers=bob.headers)

    assert response.status_code == 404
    assert response.json() == missing.json()  # indistinguishable from a job that doesn't exist
    assert jobs_table.one(job_id)["status"] == "PENDING"
    assert (await client.get(URL, headers=bob.headers)).json()["total"] == 0


async def test_a_deleted_user_s_token_no_longer_works_and_their_jobs_are_gone(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable
) -> None:
    job_id = await create_job(client, alice)

    jobs_table.connection.execute("DELETE FROM users WHERE email = %s", [alice.email])

    assert jobs_table.row(job_id) is None
    assert (await client.get(URL, headers=alice.headers)).status_code == 401


# --- cancel and delete


async def test_deleting_a_pending_job_cancels_it(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    job_id = await create_job(client, alice)

    response = await client.delete(f"{URL}/{job_id}", headers=alice.headers)

    assert response.status_code == 202
    assert response.json()["status"] == "CANCELLED"
    row = jobs_table.one(job_id)
    assert row["status"] == "CANCELLED"
    assert row["finished_at"] is not None
    assert object_keys(settings) == {row["original_key"]}  # kept until the job is deleted


async def test_deleting_a_finished_job_removes_its_row_and_objects(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    job_id = await create_job(client, alice)
    complete_by_hand(jobs_table, settings, job_id, images.make_image(size=(2, 2)))
    assert len(object_keys(settings)) == 2

    response = await client.delete(f"{URL}/{job_id}", headers=alice.headers)

    assert response.status_code == 204
    assert jobs_table.row(job_id) is None
    assert object_keys(settings) == set()


# --- presigned URLs that really download


async def test_the_result_url_downloads_the_result(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    job_id = await create_job(client, alice)
    result = images.make_image(size=(2, 2), seed=7)
    key = complete_by_hand(jobs_table, settings, job_id, result)
    before = datetime.now(UTC)

    body = (await client.get(f"{URL}/{job_id}", headers=alice.headers)).json()

    assert body["status"] == "COMPLETED"
    query = parse_qs(urlsplit(body["result_url"]).query)
    assert urlsplit(body["result_url"]).path == f"/{settings.s3_bucket}/{key}"
    assert query["X-Amz-Expires"] == [str(settings.presign_expiry_seconds)]
    assert "X-Amz-Signature" in query
    expires_at = datetime.fromisoformat(body["result_url_expires_at"])
    assert abs(expires_at - (before + timedelta(seconds=settings.presign_expiry_seconds))) < (
        timedelta(seconds=30)
    )
    async with httpx.AsyncClient(timeout=10) as s3:
        downloaded = await s3.get(body["result_url"])
    assert downloaded.status_code == 200
    assert downloaded.content == result
    assert downloaded.headers["content-type"] == "image/png"


async def test_the_result_redirect_leads_to_the_result(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    job_id = await create_job(client, alice)
    result = images.make_image(size=(2, 2), seed=8)
    complete_by_hand(jobs_table, settings, job_id, result)

    response = await client.get(f"{URL}/{job_id}/result", headers=alice.headers)

    assert response.status_code == 303
    async with httpx.AsyncClient(timeout=10) as s3:
        downloaded = await s3.get(response.headers["Location"])
    assert downloaded.status_code == 200
    assert downloaded.content == result


async def test_no_result_before_the_job_completed(
    client: httpx.AsyncClient, alice: Account
) -> None:
    job_id = await create_job(client, alice)

    response = await client.get(f"{URL}/{job_id}/result", headers=alice.headers)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "job_not_completed"


# --- API <-> Celery


async def test_the_task_is_queued_on_the_broker_with_the_job_id(
    client: httpx.AsyncClient, alice: Account, settings: Settings
) -> None:
    job_id = await create_job(client, alice)

    messages = queued_messages(settings)

    assert len(messages) == 1
    message = messages[0]
    assert message["headers"]["task"] == "restoration.restore_image"
    assert message["headers"]["id"] == job_id  # the job id doubles as the task id
    assert message["headers"]["retries"] == 0
    assert message["headers"]["eta"] is None
    assert message["content-type"] == "application/json"
    assert message["properties"]["delivery_info"]["routing_key"] == settings.celery_queue
    assert message["properties"]["delivery_mode"] == 2  # persistent
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([job_id], {})
    uuid.UUID(job_id)


async def test_nothing_is_queued_for_a_refused_upload(
    client: httpx.AsyncClient, alice: Account, jobs_table: JobsTable, settings: Settings
) -> None:
    response = await client.post(URL, files=upload(images.gif_image()), headers=alice.headers)

    assert response.status_code == 415
    assert queued_messages(settings) == []
    assert jobs_table.count() == 0
    assert object_keys(settings) == set()
