"""Recovery on the real parts: Postgres (its `SKIP LOCKED`), Redis and a real Celery worker with its
reaper. A job whose message is gone is found and run; a message faster than the commit that makes
its job visible waits for it instead of dropping the job."""

import asyncio
import threading
import uuid
from collections.abc import Callable

import anyio
import httpx
import psycopg
import pytest

from app.core.config import Settings
from app.core.db import create_engine, create_session_factory
from app.workers.recovery import reap_once
from fixtures import images
from fixtures.accounts import Account
from fixtures.services import WorkerServices
from tests.integration.helpers import (
    JobsTable,
    StandIn,
    StatusLog,
    logged,
    queued_messages,
    s3_client,
    wait_until,
)

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


async def upload(client: httpx.AsyncClient, account: Account) -> str:
    response = await client.post(
        URL,
        files={"file": ("photo.png", images.make_image("PNG", (24, 16)), "image/png")},
        headers=account.headers,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def test_the_reaper_runs_the_job_of_a_worker_that_died_without_its_message(
    request: pytest.FixtureRequest,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    status_log: StatusLog,
    settings: Settings,
    clean_services: WorkerServices,
) -> None:
    """A worker died mid-job and its message is gone (acknowledged, or lost with the broker):
    only the reaper can find the job, once its lease has expired."""
    job_id = await upload(client, alice)
    with psycopg.connect(clean_services.database_dsn, autocommit=True) as connection:
        connection.execute(
            "UPDATE restoration_jobs SET status = 'PROCESSING', attempts = 1, "
            "heartbeat_at = now() - interval '1 hour' WHERE id = %s",
            [job_id],
        )
    purge_queue(settings)
    assert queued_messages(settings) == []

    request.getfixturevalue("celery_worker")  # with its reaper
    row = await jobs_table.wait_until_finished(job_id)

    assert row["status"] == "COMPLETED", row["error_message"]
    assert row["attempts"] == 2
    assert status_log.statuses(job_id)[-2:] == ["PROCESSING", "COMPLETED"]


def purge_queue(settings: Settings) -> None:
    import redis

    broker = redis.Redis.from_url(settings.redis_url)
    try:
        broker.delete(settings.celery_queue)
    finally:
        broker.close()


async def test_sweeps_side_by_side_never_take_the_same_job(
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    settings: Settings,
    clean_services: WorkerServices,
) -> None:
    """Two reapers (two workers) sweep at once: `SKIP LOCKED` hands each stranded job to one."""
    job_ids = [await upload(client, alice) for _ in range(4)]
    with psycopg.connect(clean_services.database_dsn, autocommit=True) as connection:
        connection.execute(
            "UPDATE restoration_jobs SET updated_at = now() - interval '1 hour' WHERE id = ANY(%s)",
            [job_ids],
        )
    first_sent: list[uuid.UUID] = []
    second_sent: list[uuid.UUID] = []
    inside, release = threading.Event(), threading.Event()

    def send_and_hold(job_id: uuid.UUID) -> None:
        first_sent.append(job_id)
        if len(first_sent) == len(job_ids):  # its transaction stays open, rows locked
            inside.set()
            release.wait(20)

    async def sweep(send: Callable[[uuid.UUID], None]) -> list[uuid.UUID]:
        engine = create_engine(settings, pooled=False)
        try:
            return await reap_once(settings, create_session_factory(engine), send)
        finally:
            await engine.dispose()

    # The first sweep in a thread of its own, held inside its transaction.
    first = threading.Thread(target=lambda: asyncio.run(sweep(send_and_hold)))
    first.start()
    try:
        assert await anyio.to_thread.run_sync(inside.wait, 20)
        assert sorted(map(str, first_sent)) == sorted(job_ids)
        assert await sweep(second_sent.append) == []  # every row locked: none taken twice
    finally:
        release.set()
        await anyio.to_thread.run_sync(first.join, 20)
    # Committed, the marks keep the next sweep away too.
    assert await sweep(second_sent.append) == []
    assert second_sent == []


async def test_a_worker_faster_than_the_commit_waits_for_the_job(
    caplog: pytest.LogCaptureFixture,
    celery_worker: object,
    standin: StandIn,
    alice: Account,
    jobs_table: JobsTable,
    status_log: StatusLog,
    settings: Settings,
    clean_services: WorkerServices,
) -> None:
    """The enqueue race: the message reaches a worker while the job's INSERT is not committed."""
    from app.workers.celery_app import celery_app

    job_id = str(uuid.uuid4())
    with psycopg.connect(clean_services.database_dsn) as connection:
        user = connection.execute("SELECT id FROM users WHERE email = %s", [alice.email]).fetchone()
        assert user is not None
        key = f"originals/{user[0]}/{job_id}.png"
        s3_client(settings).put_object(
            Bucket=settings.s3_bucket, Key=key, Body=images.make_image("PNG", (24, 16))
        )
        connection.execute(
            "INSERT INTO restoration_jobs (id, user_id, status, original_key, content_type, "
            "size_bytes, width, height, workflow, progress, attempts, created_at, updated_at) "
            "VALUES (%s, %s, 'PENDING', %s, 'image/png', 100, 24, 16, %s, 0, 0, now(), now())",
            [job_id, user[0], key, settings.comfyui_workflow.value],
        )
        # Not committed yet: the worker must not find the job.
        celery_app.send_task(
            "restoration.restore_image", args=[job_id], queue=settings.celery_queue
        )
        await wait_until(logged(caplog, f"job {job_id} not found (yet)"), what="the early look")
        connection.commit()

    row = await jobs_table.wait_until_finished(job_id)
    assert row["status"] == "COMPLETED", row["error_message"]
    assert status_log.statuses(job_id) == ["PENDING", "PROCESSING", "COMPLETED"]
