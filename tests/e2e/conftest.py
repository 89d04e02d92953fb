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
from collections.abc import Iterator

import pytest

from fixtures import REPO_ROOT, project_images
from fixtures.accounts import Account
from fixtures.services import WorkerServices
from fixtures.services.plugin import SHARED
from fixtures.stack import Stack, StackOptions
from tests.e2e.helpers import Client

REPORTS = REPO_ROOT / "reports" / "e2e"

# Quick retries, leases and redelivery, so that failure journeys finish in seconds.
E2E_SETTINGS = {
    "COMFYUI_SCALE": "2",
    "COMFYUI_JOB_TIMEOUT_SECONDS": "30",
    "COMFYUI_POLL_INTERVAL_SECONDS": "0.2",
    "TASK_RETRY_BUDGET_SECONDS": "60",
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


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    client = Client(stack)
    yield client
    if stack.standin is not None and stack.standin.running:
        client.clear_faults()
    client.close()


@pytest.fixture
def alice(client: Client) -> Account:
    return client.new_user("alice")


@pytest.fixture
def bob(client: Client) -> Account:
    return client.new_user("bob")


@pytest.fixture
def needs_standin(stack: Stack) -> None:
    if stack.standin is None:
        pytest.skip("fault injection needs the ComfyUI stand-in, not E2E_COMFYUI_URL")
