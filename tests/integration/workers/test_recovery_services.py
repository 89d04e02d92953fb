"""Recovery on the real parts: Postgres (its `SKIP LOCKED`), Redis and a real Celery worker with its
reaper. A job whose message is gone is found and run; a message faster than the commit that makes
its job visible waits for it instead of dropping the job."""

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable

import anyio
import httpx
import psycopg
import pytest

from app.core.config import Settings
from app.core.db import create_engine, create_session_factory
from app.services.comfyui import ComfyUIClient, attempt_prompt_id
from app.workers.recovery import reap_once
from app.workflows import build_workflow
from fixtures import images
from fixtures.accounts import Account
from fixtures.services import WorkerServices
from tests.integration.helpers import (
    JobsTable,
    StandIn,
    StatusLog,
    logged,
    object_keys,
    queued_messages,
    s3_client,
    upload_png,
    wait_until,
)

pytestmark = pytest.mark.anyio


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
    job_id = await upload_png(client, alice)
    strand_as_a_dead_workers(jobs_table, settings, job_id)
    assert queued_messages(settings) == []

    request.getfixturevalue("celery_worker")  # with its reaper
    row = await jobs_table.wait_until_finished(job_id)

    assert row["status"] == "COMPLETED", row["error_message"]
    assert row["attempts"] == 2
    assert status_log.statuses(job_id)[-2:] == ["PROCESSING", "COMPLETED"]


def strand_as_a_dead_workers(jobs_table: JobsTable, settings: Settings, job_id: str) -> None:
    """The job as a worker that died on it an hour ago leaves it: PROCESSING in attempt 1, the
    lease long expired, and no message left in the queue."""
    jobs_table.connection.execute(
        "UPDATE restoration_jobs SET status = 'PROCESSING', attempts = 1, "
        "heartbeat_at = now() - interval '1 hour' WHERE id = %s",
        [job_id],
    )
    purge_queue(settings)


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
    job_ids = [await upload_png(client, alice) for _ in range(4)]
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

    # The early look is an INFO record: seen whether or not an earlier test set up logging.
    caplog.set_level(logging.INFO, logger="app.workers")

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


async def test_a_job_whose_websocket_goes_silent_completes_from_the_history(
    celery_worker: object,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    settings: Settings,
) -> None:
    """The stand-in keeps the socket open and sends nothing after two messages of the run: the
    worker reads /history after COMFYUI_WS_SILENCE_SECONDS instead of waiting for the job timeout."""
    standin.fault("silent_websocket", after=2, count=1)

    job_id = await upload_png(client, alice)
    # Well inside the job timeout (COMFYUI_JOB_TIMEOUT_SECONDS), which would otherwise end it.
    row = await jobs_table.wait_until_finished(
        job_id, timeout=settings.comfyui_job_timeout_seconds / 2
    )

    assert (row["status"], row["attempts"]) == ("COMPLETED", 1), row["error_message"]


async def test_the_prompt_of_a_dead_attempt_is_interrupted_and_the_job_has_one_result(
    request: pytest.FixtureRequest,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    settings: Settings,
    clean_services: WorkerServices,
) -> None:
    """Attempt 1's worker died with its prompt still running on ComfyUI (it hangs there): attempt
    2 interrupts it by its known id, runs its own, and stores exactly one result."""
    job_id = await upload_png(client, alice)
    row = jobs_table.one(job_id)
    standin.fault("hang", node="SaveImage", count=1)
    dead = attempt_prompt_id(uuid.UUID(job_id), 1)
    async with ComfyUIClient(settings.comfyui_url) as comfy:
        uploaded = await comfy.upload_image(
            images.make_image("PNG", (24, 16)), "input.png", f"jobs/{job_id}"
        )
        graph = build_workflow(
            settings.comfyui_workflow,
            image=uploaded.load_image_value,
            output_prefix=f"restored/{job_id}/a1",
            scale=settings.comfyui_scale,
            upscale_model=settings.comfyui_upscale_model,
        )
        await comfy.submit(graph, "dead-worker", prompt_id=dead)
    await wait_until(lambda: dead in standin.queued_ids(), what="the dead attempt's prompt")
    strand_as_a_dead_workers(jobs_table, settings, job_id)

    request.getfixturevalue("celery_worker")
    done = await jobs_table.wait_until_finished(job_id)

    assert (done["status"], done["attempts"]) == ("COMPLETED", 2), done["error_message"]
    assert done["comfyui_prompt_id"] == attempt_prompt_id(uuid.UUID(job_id), 2)
    dead_entry = standin.history(dead)
    assert dead_entry["status"]["status_str"] == "error"  # interrupted, not finished
    assert [kind for kind, _ in dead_entry["status"]["messages"]][-1] == "execution_interrupted"
    results = [key for key in object_keys(settings) if key.startswith("results/")]
    assert results == [row["original_key"].replace("originals/", "results/")[:-4] + ".png"]
