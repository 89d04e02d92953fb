"""POST /api/v1/restorations: validation from the bytes, storage, persistence, enqueue, idempotency."""

import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import JobStatus, RestorationJob
from app.services.s3 import StorageTransientError
from fixtures import images
from fixtures.accounts import Account
from tests.unit.helpers import RecordingTaskQueue, count_jobs, upload

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [
        ("JPEG", "image/jpeg", "jpg"),
        ("PNG", "image/png", "png"),
        ("WEBP", "image/webp", "webp"),
        ("TIFF", "image/tiff", "tiff"),
    ],
)
async def test_accepts_each_format_stores_original_and_enqueues(
    client: httpx.AsyncClient,
    alice: Account,
    session: AsyncSession,
    s3_client,
    settings,
    task_queue: RecordingTaskQueue,
    fmt: str,
    content_type: str,
    extension: str,
) -> None:
    data = images.make_image(fmt, (64, 48))
    # A misleading filename and Content-Type: only the bytes count.
    response = await client.post(
        URL, files=upload(data, "evil.exe", "text/plain"), headers=alice.headers
    )

    assert response.status_code == 202, response.text
    body = response.json()
    job_id = uuid.UUID(body["id"])
    assert body["status"] == "PENDING"
    assert (body["content_type"], body["width"], body["height"]) == (content_type, 64, 48)
    assert body["size_bytes"] == len(data)
    assert body["result_url"] is None
    assert response.headers["location"] == f"{URL}/{job_id}"

    job = await session.get(RestorationJob, job_id)
    assert job is not None
    assert job.status is JobStatus.PENDING
    assert job.user_id == alice.user.id
    assert job.original_key == f"originals/{alice.user.id}/{job_id}.{extension}"
    stored = s3_client.get_object(Bucket=settings.s3_bucket, Key=job.original_key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == content_type
    assert task_queue.enqueued == [job_id]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(images.gif_image(), id="gif"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", id="pdf"),
        pytest.param(b"just some text, not an image at all", id="text"),
        pytest.param(b"RIFF\x00\x00\x00\x00WAVEfmt ", id="riff-wave"),
    ],
)
async def test_refuses_other_types_with_415(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, task_queue, data: bytes
) -> None:
    response = await client.post(
        URL, files=upload(data, "photo.png", "image/png"), headers=alice.headers
    )

    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert await count_jobs(session) == 0
    assert task_queue.enqueued == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"", "invalid_image", id="empty"),
        pytest.param(
            images.truncated(images.make_image("JPEG", (300, 200))),
            "invalid_image",
            id="truncated-jpeg",
        ),
        pytest.param(
            images.truncated(images.make_image("PNG", (300, 200), seed=7)),
            "invalid_image",
            id="truncated-png",
        ),
        pytest.param(images.corrupt_png(), "invalid_image", id="corrupt-png"),
        pytest.param(images.png_bomb(2000, 1000), "image_too_large", id="over-pixel-limit"),
        pytest.param(images.png_bomb(20_000, 20_000), "image_too_large", id="decompression-bomb"),
    ],
)
async def test_refuses_broken_or_oversized_images_with_422(
    client: httpx.AsyncClient,
    alice: Account,
    session: AsyncSession,
    s3_client,
    settings,
    data: bytes,
    code: str,
) -> None:
    response = await client.post(URL, files=upload(data), headers=alice.headers)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert await count_jobs(session) == 0
    assert s3_client.list_objects_v2(Bucket=settings.s3_bucket)["KeyCount"] == 0


async def test_storage_failure_answers_503_and_leaves_no_job(
    client: httpx.AsyncClient,
    alice: Account,
    session: AsyncSession,
    storage,
    task_queue,
    monkeypatch,
) -> None:
    async def broken_upload(*args, **kwargs):
        raise StorageTransientError("S3 upload failed: EndpointConnectionError")

    monkeypatch.setattr(storage, "upload", broken_upload)
    response = await client.post(URL, files=upload(images.make_image()), headers=alice.headers)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert await count_jobs(session) == 0
    assert task_queue.enqueued == []


async def test_enqueue_failure_answers_503_and_marks_the_job_failed(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, queue_down: RecordingTaskQueue
) -> None:
    response = await client.post(URL, files=upload(images.make_image()), headers=alice.headers)

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "queue_unavailable"
    job = await session.get(
        RestorationJob, uuid.UUID(error["details"]["job_id"]), populate_existing=True
    )
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert "Could not queue the job" in (job.error_message or "")
    assert "Connection refused" in (job.error_message or "")


async def test_idempotency_key_returns_the_same_job(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, task_queue: RecordingTaskQueue
) -> None:
    headers = {**alice.headers, "Idempotency-Key": "upload-42"}
    first = await client.post(URL, files=upload(images.make_image(seed=1)), headers=headers)
    # The same request: the file's bytes decide; its name and Content-Type are not the request.
    again = await client.post(
        URL, files=upload(images.make_image(seed=1), "other.png", "image/png"), headers=headers
    )

    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert await count_jobs(session) == 1
    assert len(task_queue.enqueued) == 1


async def test_idempotency_keys_are_per_user(
    client: httpx.AsyncClient, alice: Account, bob: Account, session: AsyncSession
) -> None:
    key = {"Idempotency-Key": "same-key"}
    mine = await client.post(
        URL, files=upload(images.make_image()), headers={**alice.headers, **key}
    )
    theirs = await client.post(
        URL, files=upload(images.make_image()), headers={**bob.headers, **key}
    )

    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"]
    assert await count_jobs(session) == 2


@pytest.mark.parametrize(
    "size",
    [(1, 1), (2, 2), (1, 512), (512, 1), (2, 64)],
    ids=lambda size: f"{size[0]}x{size[1]}",
)
async def test_images_below_the_minimum_side_are_refused(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, settings, size
) -> None:
    """The issue's row: these were accepted, then failed in ComfyUI's ImageBlur."""
    response = await client.post(
        URL, files=upload(images.make_image("PNG", size)), headers=alice.headers
    )

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "image_too_small"
    assert f"at least {settings.image_min_side_pixels} pixels" in error["message"]
    assert error["details"]["min_side_pixels"] == settings.image_min_side_pixels
    assert await count_jobs(session) == 0


async def test_the_minimum_side_itself_is_accepted(
    client: httpx.AsyncClient, alice: Account, settings
) -> None:
    side = settings.image_min_side_pixels
    response = await client.post(
        URL, files=upload(images.make_image("PNG", (side, side))), headers=alice.headers
    )

    assert response.status_code == 202, response.text


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
async def test_trailing_data_is_stripped_before_storage(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, s3_client, settings, fmt
) -> None:
    """The issue's row: a JPEG+ZIP polyglot was stored whole, the ZIP included."""
    image = images.make_image(fmt, (64, 48))
    response = await client.post(
        URL, files=upload(image + images.zip_archive()), headers=alice.headers
    )

    assert response.status_code == 202, response.text
    assert response.json()["size_bytes"] == len(image)
    job = await session.get(RestorationJob, uuid.UUID(response.json()["id"]))
    assert job is not None
    stored = s3_client.get_object(Bucket=settings.s3_bucket, Key=job.original_key)["Body"].read()
    assert stored == image


async def test_exif_thumbnail_end_marker_is_not_taken_for_the_image_s_end(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession, s3_client, settings
) -> None:
    image = images.jpeg_with_exif_thumbnail()
    assert image.index(b"\xff\xd9") < len(image) - 2  # the thumbnail's EOI comes first
    response = await client.post(URL, files=upload(image + b"trailing"), headers=alice.headers)

    assert response.status_code == 202, response.text
    assert response.json()["size_bytes"] == len(image)


@pytest.mark.parametrize(
    "replay",
    [
        pytest.param({"files": upload(images.make_image(seed=2))}, id="another-file"),
        pytest.param({"files": {"note": (None, "no file")}}, id="no-file-part"),
        pytest.param({"content": b"", "headers": {"Content-Type": "image/png"}}, id="no-body"),
    ],
)
async def test_idempotency_key_reused_with_another_request_is_refused(
    client: httpx.AsyncClient,
    alice: Account,
    session: AsyncSession,
    task_queue: RecordingTaskQueue,
    replay: dict,
) -> None:
    """The issue's row: the earlier job came back whatever the body was."""
    headers = {**alice.headers, "Idempotency-Key": "upload-43"}
    first = await client.post(URL, files=upload(images.make_image(seed=1)), headers=headers)

    again = await client.post(URL, headers={**headers, **replay.pop("headers", {})}, **replay)

    assert first.status_code == 202
    assert again.status_code == 422, again.text
    assert again.json()["error"]["code"] == "idempotency_key_reused"
    assert "idempotent-replayed" not in again.headers
    assert await count_jobs(session) == 1
    assert len(task_queue.enqueued) == 1


async def test_jobs_without_a_fingerprint_replay_as_before(
    client: httpx.AsyncClient, alice: Account, session: AsyncSession
) -> None:
    """Jobs made before fingerprints were kept have none: their key still replays."""
    headers = {**alice.headers, "Idempotency-Key": "from-before"}
    first = await client.post(URL, files=upload(images.make_image(seed=1)), headers=headers)
    job = await session.get(RestorationJob, uuid.UUID(first.json()["id"]))
    assert job is not None
    job.request_fingerprint = None
    await session.commit()

    again = await client.post(URL, files=upload(images.make_image(seed=2)), headers=headers)

    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
