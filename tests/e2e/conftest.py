"""End to end: the whole stack as real processes, driven only over HTTP, as a client would.

Postgres, Redis and S3 come from `fixtures.services` (docker, native or external); the API runs
under uvicorn, the worker is a real `celery worker` process, ComfyUI is the stand-in process.
Their logs land in reports/e2e/<xdist worker>/ for a failing run to read.
"""

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fixtures.services import WorkerServices
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


@pytest.fixture(scope="session")
def stack(services: WorkerServices, worker_id: str) -> Iterator[Stack]:
    options = StackOptions(
        services_env=services.env(),
        log_dir=REPORTS / worker_id,
        comfyui_url=os.environ.get("E2E_COMFYUI_URL") or None,
        settings_env=E2E_SETTINGS,
        worker_concurrency=2,
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
