"""API <-> DB, API <-> S3, API <-> Celery, against the real services."""

import json
import uuid

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from app.core.config import Settings
from fixtures import images
from fixtures.services import WorkerServices
from tests.integration.conftest import Account

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


def upload(data: bytes) -> dict:
    return {"file": ("photo.png", data, "image/png")}


def job_row(services: WorkerServices, job_id: str) -> dict:
    engine = create_engine(services.database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT * FROM restoration_jobs WHERE id = :id"), {"id": job_id}
            ).mappings().one()
            return dict(row)
    finally:
        engine.dispose()


async def test_upload_persists_the_job_and_stores_the_original(
    client: httpx.AsyncClient, alice: Account, services: WorkerServices, settings: Settings
) -> None:
    data = images.make_image("JPEG", (80, 60))

    response = await client.post(URL, files=upload(data), headers=alice.headers)

    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    row = job_row(services, job_id)
    assert row["status"] == "PENDING"
    assert (row["width"], row["height"], row["size_bytes"]) == (80, 60, len(data))
    assert row["original_key"] == f"originals/{row['user_id']}/{job_id}.jpg"

    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        region_name=settings.s3_region,
    )
    stored = s3.get_object(Bucket=settings.s3_bucket, Key=row["original_key"])
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "image/jpeg"


async def test_the_task_is_queued_on_the_broker_with_the_job_id(
    client: httpx.AsyncClient, alice: Account, settings: Settings
) -> None:
    response = await client.post(URL, files=upload(images.make_image()), headers=alice.headers)
    job_id = response.json()["id"]

    broker = redis.Redis.from_url(settings.redis_url)
    try:
        raw = broker.lrange(settings.celery_queue, 0, -1)
    finally:
        broker.close()

    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "restoration.restore_image"
    assert message["headers"]["id"] == job_id
    assert message["headers"]["argsrepr"] == repr([job_id])
    uuid.UUID(job_id)
