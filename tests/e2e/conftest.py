"""End to end: the whole stack as real processes, driven only over HTTP, as a client would.

Postgres, Redis and S3 come from `fixtures.services` (docker, native or external); the API runs
under uvicorn, ComfyUI is the stand-in process. The worker is a container of this project's image
through pytest-celery's worker container (`fixtures.worker_container`) when the services come
from Docker, else a real `celery worker` process; `E2E_WORKER=container|process` forces either,
`E2E_WORKER_IMAGE` names a built image (otherwise it is built from the Dockerfile); an image named
by a variable must match the checkout (`fixtures.project_images`), and the header shows each one.
Their logs land in reports/e2e/<xdist worker>/ for a failing run to read.
"""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fixtures import project_images
from fixtures.services import WorkerServices
from fixtures.services.plugin import SHARED
from fixtures.stack import Stack, StackOptions

REPORTS = Path(__file__).resolve().parents[2] / "reports" / "e2e"

# Quick retries, leases and redelivery, so that failure journeys finish in seconds.
E2E_SETTINGS = {
    "COMFYUI_SCALE": "2",
    "COMFYUI_JOB_TIMEOUT_SECONDS": "30",
    "COMFYUI_POLL_INTERVAL_SECONDS": "0.2",
    "TASK_MAX_RETRIES": "8",
    "TASK_RETRY_BACKOFF_SECONDS": "0.5",
    "TASK_RETRY_BACKOFF_MAX_SECONDS": "2",
    "TASK_HEARTBEAT_SECONDS": "0.5",
    "TASK_LEASE_SECONDS": "4",
    # A worker killed mid-job leaves its task unacknowledged; Redis hands it out again after this.
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": "8",
    "BROKER_RESTORE_INTERVAL_SECONDS": "1",
}


WORKER_MODES = ("auto", "container", "process")


def worker_mode(config: pytest.Config) -> str:
    """`container` or `process`: E2E_WORKER, or for `auto` a container where Docker provides."""
    mode = os.environ.get("E2E_WORKER", "auto")
    if mode not in WORKER_MODES:
        raise pytest.UsageError(f"E2E_WORKER={mode!r}: choose from {', '.join(WORKER_MODES)}")
    if mode == "auto":
        return "container" if config.stash[SHARED].get_choice().provider == "docker" else "process"
    return mode


def pytest_report_header(config: pytest.Config) -> list[str]:
    mode = worker_mode(config)
    image = os.environ.get("E2E_WORKER_IMAGE") or "built from the Dockerfile"
    worker = f"e2e worker: {mode}" + (f" ({image})" if mode == "container" else "")
    return [worker, *(f"image {line}" for line in project_images.report_lines())]


@pytest.fixture(scope="session")
def worker_image(request: pytest.FixtureRequest) -> str | None:
    """The image the worker runs from, or None for a worker process."""
    if worker_mode(request.config) == "process":
        return None
    if image := project_images.fresh_images("E2E_WORKER_IMAGE").get("E2E_WORKER_IMAGE"):
        return image
    from fixtures.worker_container import build_image  # docker and pytest-celery

    return build_image()


# The worker's image first: a stale one fails the tests before any service starts.
@pytest.fixture(scope="session")
def stack(worker_image: str | None, services: WorkerServices, worker_id: str) -> Iterator[Stack]:
    options = StackOptions(
        services_env=services.env(),
        log_dir=REPORTS / worker_id,
        comfyui_url=os.environ.get("E2E_COMFYUI_URL") or None,
        settings_env=E2E_SETTINGS,
        worker_concurrency=2,
        worker_image=worker_image,
    )
    with Stack(options) as stack:
        yield stack


@dataclass
class User:
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Client:
    """What a user of the API does, over real HTTP."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.http = httpx.Client(base_url=stack.api_url, timeout=30)
        self.comfyui = httpx.Client(base_url=stack.comfyui_url, timeout=10)

    def new_user(self, name: str) -> User:
        email = f"{name}-{time.monotonic_ns()}@example.com"
        return User(email, self.stack.create_token(email))

    def upload(self, user: User, data: bytes, filename: str = "photo.png") -> httpx.Response:
        return self.http.post(
            "/api/v1/restorations",
            files={"file": (filename, data, "application/octet-stream")},
            headers=user.headers,
        )

    def job(self, user: User, job_id: str) -> dict:
        response = self.http.get(f"/api/v1/restorations/{job_id}", headers=user.headers)
        response.raise_for_status()
        return response.json()

    def wait_for(self, user: User, job_id: str, *statuses: str, timeout: float = 60) -> dict:
        """Poll until the job reaches one of `statuses`; fail with its last state otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(user, job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} did not reach {statuses} in {timeout} s; last state: {job}\n"
                    f"worker log:\n{self.stack.worker.log_tail(30)}"
                )
            time.sleep(0.2)

    def set_fault(self, **fault: object) -> None:
        self.comfyui.post("/_standin/faults", json=fault).raise_for_status()

    def clear_faults(self) -> None:
        self.comfyui.delete("/_standin/faults").raise_for_status()

    def close(self) -> None:
        self.http.close()
        self.comfyui.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    client = Client(stack)
    yield client
    if stack.standin is not None and stack.standin.running:
        client.clear_faults()
    client.close()


@pytest.fixture
def alice(client: Client) -> User:
    return client.new_user("alice")


@pytest.fixture
def bob(client: Client) -> User:
    return client.new_user("bob")


@pytest.fixture
def needs_standin(stack: Stack) -> None:
    if stack.standin is None:
        pytest.skip("fault injection needs the ComfyUI stand-in, not E2E_COMFYUI_URL")
