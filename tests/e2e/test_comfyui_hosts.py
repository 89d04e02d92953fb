"""Several ComfyUI hosts end to end: a stack with two stand-in processes behind COMFYUI_URLS and a
worker pool of two; one stand-in is killed mid-batch and every job still completes.

The stack has a queue of its own, so the tier's other stack and its worker never see these jobs.
"""

import io
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from fixtures.images import make_image
from fixtures.services import WorkerServices
from fixtures.stack import Stack, StackOptions
from tests.e2e.conftest import E2E_SETTINGS, REPORTS
from tests.e2e.helpers import Client

SIZE = (48, 32)


@pytest.fixture(scope="module")
def two_host_stack(
    worker_image: str | None, services: WorkerServices, worker_id: str
) -> Iterator[Stack]:
    options = StackOptions(
        services_env=services.env(),
        log_dir=REPORTS / worker_id / "two-hosts",
        standins=2,
        settings_env={
            **E2E_SETTINGS,
            "CELERY_QUEUE": "restoration-two-hosts",
            "COMFYUI_HOST_RETRY_SECONDS": "120",
        },
        worker_concurrency=2,
        worker_image=worker_image,
    )
    with Stack(options) as stack:
        yield stack


def test_a_host_killed_mid_batch_loses_no_job(two_host_stack: Stack) -> None:
    stack = two_host_stack
    client = Client(stack)
    survivor_url, doomed_url = stack.comfyui_urls
    alice = client.new_user("alice")
    with httpx.Client(base_url=doomed_url, timeout=10) as doomed:
        # Slow on the host to kill, so that it dies with a job running.
        fault = {"kind": "slow", "node": "ImageSharpen", "seconds": 60}
        doomed.post("/_standin/faults", json=fault).raise_for_status()
        ids = [
            client.upload(alice, make_image("PNG", SIZE, seed=seed)).json()["id"]
            for seed in range(8)
        ]
        deadline = time.monotonic() + 30
        while not doomed.get("/queue").json()["queue_running"]:
            assert time.monotonic() < deadline, "no job ever ran on the host to kill"
            time.sleep(0.05)
    stack.standins[1].kill()

    jobs = [client.wait_for(alice, job_id, "COMPLETED", "FAILED", timeout=90) for job_id in ids]

    assert [job["status"] for job in jobs] == ["COMPLETED"] * len(ids), [
        job["error_message"] for job in jobs
    ]
    for job in jobs:
        with httpx.Client() as browser:
            result = browser.get(job["result_url"])
        assert Image.open(io.BytesIO(result.content)).size == (SIZE[0] * 2, SIZE[1] * 2)
    # The survivor ran them all, the one that was running on the killed host included.
    with httpx.Client(base_url=survivor_url, timeout=10) as survivor:
        history = survivor.get("/history", params={"max_items": 100}).json()
    assert len(history) >= len(ids)
    client.close()
