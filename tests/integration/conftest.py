"""Integration tier: the app against real Postgres, Redis and S3 (from `fixtures.services`), a real
Celery worker on the real broker, and the ComfyUI stand-in as a real process.

Each xdist worker has its own database, Redis database and bucket; tests that touch them start
from empty ones (`clean_services`).
"""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest
from celery.contrib.testing.worker import start_worker
from fastapi import FastAPI

from app.cli import create_token
from app.core.config import Settings, get_settings
from app.main import create_app
from app.workers.celery_app import celery_app, configure
from fixtures.comfyui.process import run_standin
from fixtures.services import WorkerServices

# Quick retries and leases, so failure paths finish in seconds.
FAST_WORKER_SETTINGS = {
    "TASK_MAX_RETRIES": "2",
    "TASK_RETRY_BACKOFF_SECONDS": "0.2",
    "TASK_RETRY_BACKOFF_MAX_SECONDS": "0.5",
    "TASK_HEARTBEAT_SECONDS": "0.2",
    "TASK_LEASE_SECONDS": "5",
    "COMFYUI_JOB_TIMEOUT_SECONDS": "20",
    "COMFYUI_REQUEST_TIMEOUT_SECONDS": "5",
    "COMFYUI_POLL_INTERVAL_SECONDS": "0.2",
}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def standin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ComfyUI stand-in process per xdist worker, started as `nox -s serve` starts it."""
    root = tmp_path_factory.mktemp("comfyui-standin")
    with run_standin(
        input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp"
    ) as url:
        yield url


@pytest.fixture(scope="session")
def app_env(services: WorkerServices, standin_url: str) -> dict[str, str]:
    """This worker's settings as env vars: its services, the stand-in, quick retries."""
    return {**services.env(), "COMFYUI_URL": standin_url, **FAST_WORKER_SETTINGS}


@pytest.fixture(scope="session")
def settings(app_env: dict[str, str]) -> Iterator[Settings]:
    """The settings every in-process component reads, the Celery task's `get_settings()` too."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in app_env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        settings = get_settings()
        configure(celery_app, settings)
        yield settings
    get_settings.cache_clear()


@pytest.fixture
async def app(settings: Settings, clean_services: WorkerServices) -> AsyncIterator[FastAPI]:
    """The real app: psycopg to Postgres, boto3 to S3, Celery to Redis, httpx to the stand-in."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


@dataclass
class Account:
    email: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
async def alice(settings: Settings, clean_services: WorkerServices) -> Account:
    email = "alice@example.com"
    return Account(email, await create_token(settings, email, "test", create_missing=True))


@pytest.fixture
async def bob(settings: Settings, clean_services: WorkerServices) -> Account:
    email = "bob@example.com"
    return Account(email, await create_token(settings, email, "test", create_missing=True))


@pytest.fixture
def celery_worker(settings: Settings, clean_services: WorkerServices) -> Iterator[object]:
    """A real Celery worker consuming the real broker, in a thread of this process."""
    with start_worker(
        celery_app,
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        queues=[settings.celery_queue],
        shutdown_timeout=30,
    ) as worker:
        yield worker
