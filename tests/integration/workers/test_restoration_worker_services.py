"""Celery <-> DB, Celery <-> S3, Celery <-> ComfyUI on the happy path: an upload through the real
API, the task on the real Redis broker, a real Celery worker, the original fetched from S3, the
workflow run by the ComfyUI stand-in, the result stored in S3 and downloaded by its presigned URL.
"""

import io

import anyio
import httpx
import pytest
from PIL import Image

from app.core.config import Settings
from fixtures import images
from fixtures.accounts import Account
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

URL = "/api/v1/restorations"
SIZE = (40, 30)


async def test_a_job_runs_from_upload_to_a_downloadable_result(
    celery_worker: object,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    status_log: StatusLog,
    settings: Settings,
) -> None:
    # Slow enough that the API can be seen reporting PROCESSING in between.
    standin.fault("slow", node="ImageSharpen", seconds=0.5)
    original = images.make_image("PNG", SIZE, seed=3)

    job_id = await upload_png(client, alice, original)
    seen: list[str] = []
    with anyio.fail_after(20):
        while not seen or seen[-1] not in ("COMPLETED", "FAILED", "CANCELLED"):
            body = (await client.get(f"{URL}/{job_id}", headers=alice.headers)).json()
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            await anyio.sleep(0.02)

    # Celery <-> DB: every transition, in commit order, and nothing else.
    assert status_log.history(job_id) == [("PENDING", 0), ("PROCESSING", 1), ("COMPLETED", 1)]
    # The API saw the job PROCESSING (and PENDING too, unless the worker was quicker).
    assert seen in (["PENDING", "PROCESSING", "COMPLETED"], ["PROCESSING", "COMPLETED"])
    row = jobs_table.one(job_id)
    scale = settings.comfyui_scale
    expected = (round(SIZE[0] * scale), round(SIZE[1] * scale))
    assert row["status"] == "COMPLETED"
    assert row["result_key"] == f"results/{row['user_id']}/{job_id}.png"
    assert (row["result_width"], row["result_height"]) == expected
    assert (row["progress"], row["attempts"], row["error_message"]) == (1.0, 1, None)
    assert row["heartbeat_at"] is None
    assert row["created_at"] <= row["started_at"] <= row["finished_at"]
    assert row["comfyui_prompt_id"]

    # Celery <-> ComfyUI: the stand-in got exactly the original, and ran the prompt to success.
    assert standin.view("input.png", f"jobs/{job_id}") == original
    entry = standin.history(row["comfyui_prompt_id"])
    assert entry["status"]["status_str"] == "success"
    saved = entry["outputs"]["6"]["images"][0]
    assert saved["subfolder"] == f"restored/{job_id}"
    assert saved["filename"].startswith("a1_")

    # Celery <-> S3: the result is a PNG of the input's size times the scale.
    s3 = s3_client(settings)
    stored = s3.get_object(Bucket=settings.s3_bucket, Key=row["result_key"])
    assert stored["ContentType"] == "image/png"
    result = stored["Body"].read()
    with Image.open(io.BytesIO(result)) as image:
        assert image.format == "PNG"
        assert image.size == expected
        image.load()
    assert object_keys(settings) == {row["original_key"], row["result_key"]}

    # API <-> S3: the presigned URL and the redirect really download it.
    body = (await client.get(f"{URL}/{job_id}", headers=alice.headers)).json()
    assert body["result_width"] == expected[0]
    async with httpx.AsyncClient(timeout=10) as plain:
        assert (await plain.get(body["result_url"])).content == result
        redirect = await client.get(f"{URL}/{job_id}/result", headers=alice.headers)
        assert redirect.status_code == 303
        assert (await plain.get(redirect.headers["Location"])).content == result

    # The message was acknowledged: nothing is left on the broker.
    assert queued_messages(settings) == []


async def test_progress_reaches_the_api_while_the_job_runs(
    celery_worker: object,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
) -> None:
    """The worker's heartbeat writes ComfyUI's progress to the row; the API reports it."""
    standin.fault("slow", seconds=0.3)  # every node: six steps of progress

    job_id = await upload_png(client, alice, images.make_image("PNG", SIZE))
    progress: list[float] = []
    with anyio.fail_after(20):
        while True:
            body = (await client.get(f"{URL}/{job_id}", headers=alice.headers)).json()
            progress.append(body["progress"])
            if body["status"] == "COMPLETED":
                break
            await anyio.sleep(0.05)

    assert progress == sorted(progress)  # never backwards
    assert any(0 < value < 1 for value in progress), progress
    assert progress[-1] == 1.0


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "TIFF"])
async def test_every_accepted_format_is_restored(
    fmt: str,
    celery_worker: object,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    settings: Settings,
) -> None:
    original = images.make_image(fmt, (24, 16))
    response = await client.post(
        URL, files={"file": ("photo", original, "application/octet-stream")}, headers=alice.headers
    )
    job_id = response.json()["id"]

    row = await jobs_table.wait_until_finished(job_id)

    assert row["status"] == "COMPLETED", row["error_message"]
    extension = images.FORMATS[fmt]
    assert standin.view(f"input.{extension}", f"jobs/{job_id}") == original
    stored = s3_client(settings).get_object(Bucket=settings.s3_bucket, Key=row["result_key"])
    with Image.open(io.BytesIO(stored["Body"].read())) as image:
        assert (image.format, image.size) == ("PNG", (48, 32))


async def test_jobs_queued_while_no_worker_runs_wait_then_complete(
    request: pytest.FixtureRequest,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    status_log: StatusLog,
    settings: Settings,
) -> None:
    job_ids = [await upload_png(client, alice, images.make_image(seed=n)) for n in range(3)]
    await anyio.sleep(0.2)
    assert [jobs_table.one(job_id)["status"] for job_id in job_ids] == ["PENDING"] * 3
    assert len(queued_messages(settings)) == 3

    request.getfixturevalue("celery_worker")
    rows = [await jobs_table.wait_until_finished(job_id) for job_id in job_ids]

    assert [row["status"] for row in rows] == ["COMPLETED"] * 3
    for job_id in job_ids:
        assert status_log.statuses(job_id) == ["PENDING", "PROCESSING", "COMPLETED"]
    assert len({row["comfyui_prompt_id"] for row in rows}) == 3


async def test_a_duplicate_message_does_not_run_a_finished_job_again(
    caplog: pytest.LogCaptureFixture,
    celery_worker: object,
    standin: StandIn,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
    status_log: StatusLog,
    settings: Settings,
) -> None:
    """A redelivered task finds the job COMPLETED (compare-and-set) and leaves it alone."""
    from app.workers.celery_app import celery_app

    job_id = await upload_png(client, alice, images.make_image())
    done = await jobs_table.wait_until_finished(job_id)
    assert done["status"] == "COMPLETED"

    celery_app.send_task("restoration.restore_image", args=[job_id], queue=settings.celery_queue)
    await wait_until(logged(caplog, "nothing to do"), what="the duplicate being skipped")

    again = jobs_table.one(job_id)
    assert again["status"] == "COMPLETED"
    assert (again["attempts"], again["finished_at"]) == (1, done["finished_at"])
    assert status_log.statuses(job_id) == ["PENDING", "PROCESSING", "COMPLETED"]
