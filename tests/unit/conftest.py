"""Unit tier: no network, no servers.

SQLite in memory (each test inside a transaction that is rolled back), S3 through moto's in-process
mock, the Celery enqueue replaced by a recorder, ComfyUI replaced at its interface.

What costs time is built once per xdist worker (the event loop, the schema, the settings, moto's
client) and reset per test the cheap way: the transaction rolls back, and the bucket is made
and dropped in moto's own store. Building them per test cost more than the tests themselves (issue 10).
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from moto import mock_aws
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from app.api.resources import Resources
from app.core.config import Settings
from app.main import create_app
from app.models import Base
from app.services.s3 import S3Storage
from app.workers.queue import QueueError
from fixtures.accounts import Account
from tests.unit.helpers import (
    BUCKET,
    FakeBroker,
    FakeComfyUIHealth,
    RecordingTaskQueue,
    make_account,
)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Session-wide, so that the engine below lives on one event loop for the whole worker."""
    return "asyncio"


async def cancel_tasks_started_since(before: set[asyncio.Task[Any]]) -> None:
    """One event loop serves the whole worker (for the engine below). What a test that uses the
    database leaves running (a readiness check past its deadline, say) would reach the next
    test's connection: it is cancelled at the test's end, as when each test had its own loop."""
    leftover = {
        task
        for task in asyncio.all_tasks() - before
        # anyio's plugin wraps each fixture step in a task of its own: this one, among them.
        if task.get_coro().__qualname__ != "TestRunner._call_in_runner_task"  # type: ignore[union-attr]
    }
    for task in leftover:
        task.cancel()
    if leftover:
        await asyncio.wait(leftover, timeout=5)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url="sqlite+aiosqlite://",
        redis_url="redis://127.0.0.1:1/0",
        s3_bucket=BUCKET,
        s3_region="us-east-1",
        s3_access_key_id="unit",
        s3_secret_access_key="unit",  # type: ignore[arg-type]
        comfyui_url="http://comfyui.invalid:8188",
        max_upload_bytes=256 * 1024,
        max_image_pixels=1_000_000,
        task_heartbeat_seconds=3600,  # tests that need the heartbeat lower it
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """A copy per test: tests set fields on it. Validating them again costs ~1.5 ms a test."""
    return base_settings.model_copy()


# --- database: SQLite in memory, one transaction per test, rolled back


@pytest.fixture(scope="session")
async def engine() -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(
        "sqlite+aiosqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )

    # pysqlite's own transaction handling breaks SAVEPOINT; let SQLAlchemy emit BEGIN itself.
    @event.listens_for(engine.sync_engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection):  # type: ignore[no-untyped-def]
        connection.exec_driver_sql("BEGIN")

    yield engine
    await engine.dispose()


# What aiosqlite says about a connection that a cancelled query closed.
CLOSED_CONNECTION_ERRORS = ("closed database", "no active connection")


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    before = asyncio.all_tasks()
    async with engine.connect() as connection:
        # `info` belongs to the SQLite connection underneath: the schema is built once per
        # in-memory database, and again only if that database was lost (see below).
        if not connection.info.get("has_schema"):
            await connection.run_sync(Base.metadata.create_all)
            await connection.commit()
            connection.info["has_schema"] = True
        transaction = await connection.begin()
        yield connection
        # Before the rollback: those tasks may still be using the connection.
        await cancel_tasks_started_since(before)
        try:
            await transaction.rollback()
        except DBAPIError as exc:
            # A query cancelled mid-flight (a test's timeout) closes the SQLite connection, and
            # the in-memory database goes with it; the next test gets a new one.
            if not any(closed in str(exc) for closed in CLOSED_CONNECTION_ERRORS):
                raise
            await connection.invalidate()


@pytest.fixture
def session_factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """Sessions whose commits only release a savepoint: the test's transaction still rolls back."""
    return async_sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


@pytest.fixture
async def session(
    session_factory: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


# --- S3 through moto


@pytest.fixture(scope="session")
def moto_s3_client() -> Iterator[Any]:
    """moto's in-process S3 for the whole run; building a boto3 client costs ~0.1 s, so share one."""
    with mock_aws():
        yield S3Storage(Settings(_env_file=None, s3_region="us-east-1")).client  # type: ignore[call-arg]


@pytest.fixture
def storage(settings: Settings, moto_s3_client: Any) -> Iterator[S3Storage]:
    """The real storage service on moto, with a new, empty bucket for each test.

    The bucket is made and dropped in moto's store, not over its API: three S3 calls through
    botocore and moto per test cost ~9 ms, more than most tests."""
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(settings.s3_bucket, settings.s3_region)
    yield S3Storage(settings, client=moto_s3_client)
    backend.reset()  # what mock_aws does on exit: drops the buckets, closes the objects' files


@pytest.fixture
def s3_client(storage: S3Storage) -> Any:
    return storage.client


# --- doubles for the broker and ComfyUI


@pytest.fixture
def task_queue() -> RecordingTaskQueue:
    return RecordingTaskQueue()


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def comfyui_health() -> FakeComfyUIHealth:
    return FakeComfyUIHealth()


@pytest.fixture
def queue_down(task_queue: RecordingTaskQueue) -> RecordingTaskQueue:
    task_queue.error = QueueError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
    return task_queue


# --- the API in process


@pytest.fixture
def resources(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    storage: S3Storage,
    task_queue: RecordingTaskQueue,
    broker: FakeBroker,
    comfyui_health: FakeComfyUIHealth,
) -> Resources:
    return Resources(
        settings=settings,
        session_factory=session_factory,
        storage=storage,
        task_queue=task_queue,
        broker=broker,
        comfyui=comfyui_health,
    )


@pytest.fixture
def app(settings: Settings, resources: Resources) -> FastAPI:
    async def factory(_: Settings) -> Resources:
        return resources

    return create_app(settings, resources_factory=factory)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


# --- users and tokens


@pytest.fixture
async def alice(session: AsyncSession) -> Account:
    return await make_account(session, "alice@example.com")


@pytest.fixture
async def bob(session: AsyncSession) -> Account:
    return await make_account(session, "bob@example.com")
