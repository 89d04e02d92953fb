"""Integration tier: the app against real Postgres, Redis and S3 (from `fixtures.services`), a real
Celery worker on the real broker, and the ComfyUI stand-in as a real process.

Each xdist worker has its own database, Redis database and bucket; tests that touch them start
from empty ones (`clean_services`).
"""

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from celery.contrib.testing.worker import start_worker
from fastapi import FastAPI

from app.cli import create_token
from app.core.config import Settings, get_settings
from app.main import create_app
from app.workers.celery_app import celery_app, configure
from fixtures.accounts import Account
from fixtures.comfyui.process import run_standin
from fixtures.netproxy import TcpProxy
from fixtures.services import WorkerServices
from tests.integration.helpers import (
    STATUS_LOG_DROP_SQL,
    STATUS_LOG_SQL,
    ApiClient,
    JobsTable,
    StandIn,
    StatusLog,
)

# Quick retries and leases, so failure paths finish in seconds.
FAST_WORKER_SETTINGS = {
    "TASK_RETRY_BUDGET_SECONDS": "3",
    "TASK_RETRY_BACKOFF_SECONDS": "0.2",
    "TASK_RETRY_BACKOFF_MAX_SECONDS": "0.5",
    "TASK_HEARTBEAT_SECONDS": "0.2",
    "TASK_LEASE_SECONDS": "5",
    "REAPER_INTERVAL_SECONDS": "0.5",
    "COMFYUI_JOB_TIMEOUT_SECONDS": "20",
    "COMFYUI_REQUEST_TIMEOUT_SECONDS": "5",
    "COMFYUI_POLL_INTERVAL_SECONDS": "0.2",
    "COMFYUI_WS_SILENCE_SECONDS": "0.5",
}


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def standin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One ComfyUI stand-in process per xdist worker, started as `nox -s serve` starts it; the
    app, the worker and the contract suite all use it."""
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


@pytest.fixture
def jobs_table(clean_services: WorkerServices) -> Iterator[JobsTable]:
    table = JobsTable(clean_services.database_dsn)
    yield table
    table.close()


@pytest.fixture
def status_log(jobs_table: JobsTable) -> Iterator[StatusLog]:
    """Installs the trigger for one test and removes it after (the schema test must not see it)."""
    jobs_table.connection.execute(STATUS_LOG_SQL)
    yield StatusLog(jobs_table.connection)
    jobs_table.connection.execute(STATUS_LOG_DROP_SQL)


@pytest.fixture
def standin(standin_url: str) -> Iterator[StandIn]:
    """The stand-in, without faults and idle before and after the test."""
    control = StandIn(standin_url)
    control.reset()
    yield control
    control.reset()
    control.close()


@pytest.fixture
def worker_env(settings: Settings) -> Iterator[Callable[..., Settings]]:
    """`worker_env(COMFYUI_URL=..., ...)` changes what the Celery task's `get_settings()` reads.

    Request it before `celery_worker`, so that the worker stops before the env is put back.
    """
    saved: dict[str, str | None] = {}

    def apply(**overrides: str) -> Settings:
        for name, value in overrides.items():
            saved.setdefault(name, os.environ.get(name))
            os.environ[name] = value
        get_settings.cache_clear()
        return get_settings()

    yield apply
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    get_settings.cache_clear()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], TcpProxy]]:
    """`tcp_proxy(host, port)`: a started `TcpProxy` in front of a real service, stopped after."""
    proxies: list[TcpProxy] = []

    def start(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def api_client(clean_services: WorkerServices) -> ApiClient:
    """`async with api_client(other_settings) as client`: the real app built with other settings."""

    @asynccontextmanager
    async def start(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(app_settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                yield client

    return start
