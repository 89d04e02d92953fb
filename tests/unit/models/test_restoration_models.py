"""The models on SQLite: defaults, UTC timestamps, constraints, cascades, and the migrations' schema."""

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import (
    Column,
    Engine,
    MetaData,
    String,
    create_engine,
    delete,
    func,
    inspect,
    select,
)
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiToken, Base, JobStatus, RestorationJob, User
from app.models.base import utcnow
from app.repositories.users import UserRepository
from fixtures import REPO_ROOT
from fixtures.accounts import Account
from fixtures.jobs import new_job

ALEMBIC_INI = REPO_ROOT / "alembic.ini"


async def count(session: AsyncSession, model: type[Base]) -> int:
    return await session.scalar(select(func.count()).select_from(model)) or 0


# --- defaults and timestamps


@pytest.mark.anyio
async def test_job_defaults(session: AsyncSession, alice: Account) -> None:
    before = utcnow()
    job = new_job(alice.user.id)
    del job.id  # let the model choose one
    session.add(job)
    await session.flush()
    await session.refresh(job)

    assert isinstance(job.id, uuid.UUID)
    assert job.status is JobStatus.PENDING
    assert (job.progress, job.attempts) == (0.0, 0)
    assert job.idempotency_key is None
    assert (job.result_key, job.result_width, job.result_height) == (None, None, None)
    assert (job.comfyui_prompt_id, job.error_message) == (None, None)
    assert (job.started_at, job.finished_at, job.heartbeat_at) == (None, None, None)
    assert job.created_at >= before
    assert job.updated_at >= before


@pytest.mark.anyio
async def test_timestamps_come_back_timezone_aware_utc(
    session: AsyncSession, alice: Account
) -> None:
    two_hours_east = timezone(timedelta(hours=2))
    local = datetime(2026, 3, 1, 14, 30, 15, 123456, tzinfo=two_hours_east)
    user_id = alice.user.id
    job = new_job(user_id, started_at=local)
    session.add(job)
    await session.flush()
    job_id = job.id
    session.expire_all()

    loaded = await session.get(RestorationJob, job_id)

    assert loaded is not None
    assert loaded.started_at == datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    for value in (loaded.started_at, loaded.created_at, loaded.updated_at):
        assert value is not None
        assert value.tzinfo is UTC
    user = await session.get(User, user_id)
    assert user is not None
    assert user.created_at.tzinfo is UTC


@pytest.mark.anyio
async def test_naive_datetimes_are_refused(session: AsyncSession, alice: Account) -> None:
    session.add(new_job(alice.user.id, started_at=datetime(2026, 3, 1, 12, 0)))

    with pytest.raises(StatementError, match="naive datetime"):
        await session.flush()


@pytest.mark.anyio
async def test_updated_at_moves_on_every_update(session: AsyncSession, alice: Account) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    job = new_job(alice.user.id, created_at=long_ago, updated_at=long_ago)
    session.add(job)
    await session.flush()

    job.progress = 0.5
    await session.flush()
    await session.refresh(job)

    assert job.created_at == long_ago
    assert job.updated_at > long_ago + timedelta(days=365)


def test_finished_statuses() -> None:
    assert [status for status in JobStatus if status.is_finished] == [
        JobStatus.COMPLETED,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
    ]


# --- constraints


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("fields", "constraint"),
    [
        ({"progress": -0.01}, "progress_range"),
        ({"progress": 1.01}, "progress_range"),
        ({"size_bytes": 0}, "size_positive"),
        ({"size_bytes": -5}, "size_positive"),
        ({"attempts": -1}, "attempts_non_negative"),
    ],
)
async def test_check_constraints(
    session: AsyncSession, alice: Account, fields: dict[str, object], constraint: str
) -> None:
    session.add(new_job(alice.user.id, **fields))

    with pytest.raises(IntegrityError, match=f"ck_restoration_jobs_{constraint}"):
        await session.flush()


@pytest.mark.anyio
@pytest.mark.parametrize("fields", [{"progress": 0.0}, {"progress": 1.0}, {"size_bytes": 1}])
async def test_check_constraint_bounds_are_inclusive(
    session: AsyncSession, alice: Account, fields: dict[str, object]
) -> None:
    session.add(new_job(alice.user.id, **fields))
    await session.flush()

    assert await count(session, RestorationJob) == 1


@pytest.mark.anyio
async def test_unknown_status_is_refused(session: AsyncSession, alice: Account) -> None:
    session.add(new_job(alice.user.id, status="DONE"))

    with pytest.raises(StatementError, match="DONE"):
        await session.flush()


@pytest.mark.anyio
async def test_idempotency_key_is_unique_per_user(
    session: AsyncSession, alice: Account, bob: Account
) -> None:
    session.add_all(
        [new_job(alice.user.id, idempotency_key="k"), new_job(bob.user.id, idempotency_key="k")]
    )
    await session.flush()

    session.add(new_job(alice.user.id, idempotency_key="k"))
    with pytest.raises(IntegrityError, match="idempotency_key"):
        await session.flush()


@pytest.mark.anyio
async def test_jobs_without_idempotency_key_may_repeat(
    session: AsyncSession, alice: Account
) -> None:
    session.add_all([new_job(alice.user.id) for _ in range(3)])
    await session.flush()

    assert await count(session, RestorationJob) == 3


@pytest.mark.anyio
async def test_job_needs_an_existing_user(session: AsyncSession) -> None:
    session.add(new_job(uuid.uuid4()))

    with pytest.raises(IntegrityError, match="FOREIGN KEY"):
        await session.flush()


# --- cascades


@pytest.mark.anyio
async def test_deleting_a_user_deletes_their_tokens_and_jobs(
    session: AsyncSession, alice: Account, bob: Account
) -> None:
    session.add_all([new_job(alice.user.id), new_job(alice.user.id), new_job(bob.user.id)])
    await UserRepository(session).add_token(alice.user, name="second", token_hash="0" * 64)
    await session.flush()
    assert (await count(session, ApiToken), await count(session, RestorationJob)) == (3, 3)

    await session.delete(alice.user)
    await session.flush()

    tokens = await session.scalars(select(ApiToken.user_id))
    jobs = await session.scalars(select(RestorationJob.user_id))
    assert list(tokens) == [bob.user.id]
    assert list(jobs) == [bob.user.id]


@pytest.mark.anyio
async def test_the_database_cascades_without_the_orm(
    session: AsyncSession, alice: Account, bob: Account
) -> None:
    session.add_all([new_job(alice.user.id), new_job(bob.user.id)])
    await session.flush()

    await session.execute(delete(User).where(User.id == alice.user.id))

    assert list(await session.scalars(select(ApiToken.user_id))) == [bob.user.id]
    assert list(await session.scalars(select(RestorationJob.user_id))) == [bob.user.id]


# --- migrations


def alembic_config(url: str) -> Config:
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", url)
    config.attributes["configure_logging"] = False  # leave pytest's logging alone
    return config


@pytest.fixture
def migrated(tmp_path: Path) -> Iterator[tuple[Config, Engine]]:
    path = tmp_path / "schema.sqlite"
    config = alembic_config(f"sqlite+aiosqlite:///{path}")
    command.upgrade(config, "head")
    engine = create_engine(f"sqlite:///{path}")
    yield config, engine
    engine.dispose()


def schema_diff(engine: Engine, metadata: MetaData) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def test_migrations_produce_exactly_the_models_schema(migrated: tuple[Config, Engine]) -> None:
    config, engine = migrated

    assert schema_diff(engine, Base.metadata) == []
    command.check(config)  # what `alembic check` runs: no pending autogenerate operations

    # Alembic does not compare CHECK constraints; compare them by name.
    checks = inspect(engine).get_check_constraints("restoration_jobs")
    expected = {
        f"ck_restoration_jobs_{name}"
        for name in ("progress_range", "attempts_non_negative", "size_positive")
    }
    assert {check["name"] for check in checks} == expected


def test_schema_comparison_notices_a_difference(migrated: tuple[Config, Engine]) -> None:
    """The comparison above can fail: a model column the migrations lack shows up."""
    _, engine = migrated
    metadata = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(metadata)
    metadata.tables["users"].append_column(Column("nickname", String(50)))

    diff = schema_diff(engine, metadata)

    assert [(op[0], op[3].name) for op in diff] == [("add_column", "nickname")]  # type: ignore[index]


def test_downgrade_to_base_removes_every_table(migrated: tuple[Config, Engine]) -> None:
    config, engine = migrated
    assert set(inspect(engine).get_table_names()) >= {"users", "api_tokens", "restoration_jobs"}

    command.downgrade(config, "base")

    assert inspect(engine).get_table_names() == ["alembic_version"]
    command.upgrade(config, "head")  # and back up again
    assert schema_diff(engine, Base.metadata) == []
