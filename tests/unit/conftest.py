"""Unit tier: no network, no servers.

SQLite in memory (each test inside a transaction that is rolled back), S3 through moto's in-process
mock, the Celery enqueue replaced by a recorder, ComfyUI replaced at its interface.
"""

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from moto import mock_aws
from sqlalchemy import event
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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings() -> Settings:
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


# --- database: SQLite in memory, one transaction per test, rolled back


@pytest.fixture
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

    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as connection:
        transaction = await connection.begin()
        yield connection
        await transaction.rollback()


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
    """The real storage service on moto; the bucket is created empty for each test."""
    storage = S3Storage(settings, client=moto_s3_client)
    storage.client.create_bucket(Bucket=settings.s3_bucket)
    yield storage
    listing = storage.client.list_objects_v2(Bucket=settings.s3_bucket)
    for item in listing.get("Contents", []):
        storage.client.delete_object(Bucket=settings.s3_bucket, Key=item["Key"])
    storage.client.delete_bucket(Bucket=settings.s3_bucket)


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
