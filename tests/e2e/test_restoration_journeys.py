"""A user's journeys through the whole stack: upload, follow, download; and when things go wrong."""

import io
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from fixtures import images
from fixtures.accounts import Account
from fixtures.photos import DegradedPhoto, degraded_photo
from fixtures.stack import Stack
from tests.e2e.helpers import Client


@pytest.fixture(scope="module")
def photo() -> DegradedPhoto:
    return degraded_photo("chelsea", seed=1, max_side=256)


def download_result(client: Client, job: dict) -> Image.Image:
    """Fetch the result through the presigned URL, as a browser would (no token)."""
    response = httpx.get(job["result_url"], timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def assert_restored(result: Image.Image, photo: DegradedPhoto) -> None:
    assert result.format == "PNG"
    assert result.size == (photo.width * 2, photo.height * 2)
    original = Image.open(io.BytesIO(photo.png)).convert("RGB").resize(result.size)
    difference = np.abs(np.asarray(result.convert("RGB"), float) - np.asarray(original, float))
    assert difference.mean() > 0.5, "the result is just the input scaled up"


def test_upload_follow_and_download_the_restored_photo(
    client: Client, alice: Account, photo: DegradedPhoto
) -> None:
    response = client.upload(alice, photo.png)

    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/api/v1/restorations/{job_id}"

    job = client.wait_for(alice, job_id, "COMPLETED", "FAILED")
    assert job["status"] == "COMPLETED", job["error_message"]
    assert job["progress"] == 1.0
    assert (job["result_width"], job["result_height"]) == (photo.width * 2, photo.height * 2)
    assert job["started_at"] <= job["finished_at"]
    assert_restored(download_result(client, job), photo)

    # The result route redirects to the same object.
    redirect = client.http.get(f"/api/v1/restorations/{job_id}/result", headers=alice.headers)
    assert redirect.status_code == 303
    assert httpx.get(redirect.headers["location"], timeout=30).status_code == 200


def test_several_uploads_at_once_all_complete(client: Client, alice: Account) -> None:
    photos = [
        degraded_photo(name, seed=2, max_side=192)
        for name in ("astronaut", "coffee", "rocket", "camera")
    ]

    with ThreadPoolExecutor(max_workers=len(photos)) as pool:
        responses = list(pool.map(lambda p: client.upload(alice, p.png), photos))

    assert [r.status_code for r in responses] == [202] * len(photos)
    ids = [r.json()["id"] for r in responses]
    assert len(set(ids)) == len(ids)
    for job_id, photo in zip(ids, photos, strict=True):
        job = client.wait_for(alice, job_id, "COMPLETED", "FAILED", timeout=90)
        assert job["status"] == "COMPLETED", job["error_message"]
        assert_restored(download_result(client, job), photo)
    listed = client.http.get("/api/v1/restorations", headers=alice.headers).json()
    assert listed["total"] == len(photos)
    assert {item["id"] for item in listed["items"]} == set(ids)
    created = [item["created_at"] for item in listed["items"]]
    assert created == sorted(created, reverse=True)  # newest first


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (images.gif_image(), 415, "unsupported_media_type"),
        (b"%PDF-1.7 not a photo", 415, "unsupported_media_type"),
        (images.truncated(images.make_image("JPEG", (300, 200))), 422, "invalid_image"),
        (b"", 422, "invalid_image"),
    ],
)
def test_a_bad_file_is_refused_and_leaves_nothing_behind(
    client: Client, alice: Account, data: bytes, status: int, code: str
) -> None:
    response = client.upload(alice, data)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    listed = client.http.get("/api/v1/restorations", headers=alice.headers).json()
    assert listed["total"] == 0


def test_another_users_job_is_invisible(
    client: Client, alice: Account, bob: Account, photo: DegradedPhoto
) -> None:
    job_id = client.upload(alice, photo.png).json()["id"]

    for method, path in [
        ("GET", f"/api/v1/restorations/{job_id}"),
        ("GET", f"/api/v1/restorations/{job_id}/result"),
        ("DELETE", f"/api/v1/restorations/{job_id}"),
    ]:
        response = client.http.request(method, path, headers=bob.headers)
        assert response.status_code == 404, (method, path)
    assert client.http.get("/api/v1/restorations", headers=bob.headers).json()["total"] == 0
    assert client.http.get(f"/api/v1/restorations/{job_id}").status_code == 401
    # Alice's job went on regardless.
    assert client.wait_for(alice, job_id, "COMPLETED", "FAILED")["status"] == "COMPLETED"


@pytest.mark.usefixtures("needs_standin")
def test_comfyui_failing_mid_run_fails_the_job_with_a_readable_message(
    client: Client, alice: Account, photo: DegradedPhoto
) -> None:
    client.set_fault(
        kind="node_error",
        node="ImageSharpen",
        exception_type="torch.OutOfMemoryError",
        message="CUDA out of memory. Tried to allocate 2.00 GiB",
    )

    job_id = client.upload(alice, photo.png).json()["id"]
    job = client.wait_for(alice, job_id, "COMPLETED", "FAILED")

    assert job["status"] == "FAILED"
    message = job["error_message"]
    assert "ImageSharpen" in message
    assert "out of memory" in message.lower()
    assert "Traceback" not in message
    assert job["attempts"] == 1  # a failed execution is not retried
    result = client.http.get(f"/api/v1/restorations/{job_id}/result", headers=alice.headers)
    assert result.status_code == 409


@pytest.mark.usefixtures("needs_standin")
def test_comfyui_down_then_back_the_job_completes_after_retries(
    stack: Stack, client: Client, alice: Account, photo: DegradedPhoto
) -> None:
    assert stack.standin is not None
    stack.standin.stop()
    try:
        job_id = client.upload(alice, photo.png).json()["id"]
        # The worker tries, fails to reach ComfyUI, and says it waits for it.
        deadline = time.monotonic() + 30
        while "waiting for ComfyUI: " not in (client.job(alice, job_id)["error_message"] or ""):
            assert time.monotonic() < deadline, client.job(alice, job_id)
            time.sleep(0.2)
        assert client.job(alice, job_id)["status"] == "PROCESSING"
    finally:
        stack.start_standin()

    job = client.wait_for(alice, job_id, "COMPLETED", "FAILED", timeout=90)
    assert job["status"] == "COMPLETED", job["error_message"]
    assert job["attempts"] >= 2
    assert job["error_message"] is None
    assert_restored(download_result(client, job), photo)


@pytest.mark.usefixtures("needs_standin")
def test_cancel_during_processing_stops_comfyui(
    client: Client, alice: Account, photo: DegradedPhoto
) -> None:
    client.set_fault(kind="hang", node="ImageSharpen")
    job_id = client.upload(alice, photo.png).json()["id"]
    client.wait_for(alice, job_id, "PROCESSING")
    deadline = time.monotonic() + 20
    while client.comfyui.get("/queue").json()["queue_running"] == []:
        assert time.monotonic() < deadline, "the prompt never reached ComfyUI"
        time.sleep(0.1)

    response = client.http.delete(f"/api/v1/restorations/{job_id}", headers=alice.headers)

    assert response.status_code == 202
    assert response.json()["status"] == "CANCELLED"
    # The worker notices at its next heartbeat and interrupts the prompt.
    deadline = time.monotonic() + 20
    while (queue := client.comfyui.get("/queue").json())["queue_running"]:
        assert time.monotonic() < deadline, f"ComfyUI still runs the cancelled prompt: {queue}"
        time.sleep(0.2)
    time.sleep(1)  # the worker's clean-up must not resurrect the job
    job = client.job(alice, job_id)
    assert job["status"] == "CANCELLED"
    assert job["result_url"] is None
    # A cancelled job can then be deleted for good.
    assert (
        client.http.delete(f"/api/v1/restorations/{job_id}", headers=alice.headers).status_code
        == 204
    )


@pytest.mark.usefixtures("needs_standin")
def test_worker_killed_mid_job_the_job_is_not_lost(
    stack: Stack, client: Client, alice: Account, photo: DegradedPhoto
) -> None:
    client.set_fault(kind="slow", node="ImageSharpen", seconds=4, count=1)
    job_id = client.upload(alice, photo.png).json()["id"]
    running = client.wait_for(alice, job_id, "PROCESSING")
    assert running["attempts"] == 1

    stack.worker.stop(signum=signal.SIGKILL)  # a crash: no chance to acknowledge or clean up
    stack.start_worker()

    job = client.wait_for(alice, job_id, "COMPLETED", "FAILED", timeout=90)
    assert job["status"] == "COMPLETED", job["error_message"]
    assert job["attempts"] == 2  # redelivered once the visibility timeout passed, claimed again
    assert_restored(download_result(client, job), photo)
