"""API <-> DB: the schema as Alembic builds it on the real Postgres, and what Postgres itself
enforces (not the ORM): CHECK constraints, the unique Idempotency-Key per user, foreign keys and
their cascades."""

import uuid
from collections.abc import Iterator
from typing import Any

import alembic.command
import alembic.config
import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import errors, sql
from sqlalchemy import create_engine, inspect

from app.models import Base
from fixtures import REPO_ROOT
from fixtures.services import WorkerServices
from fixtures.services.database import admin_connection, drop_database


def alembic_config(database_url: str) -> alembic.config.Config:
    config = alembic.config.Config(str(REPO_ROOT / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", database_url)
    config.attributes["configure_logging"] = False
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()
    assert head is not None
    return head


@pytest.fixture
def pg(clean_database: WorkerServices) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection to this worker's (migrated, emptied) database."""
    with psycopg.connect(clean_database.database_dsn, autocommit=True) as connection:
        yield connection


def add_user(pg: psycopg.Connection[Any], email: str = "someone@example.com") -> uuid.UUID:
    user_id = uuid.uuid4()
    pg.execute(
        "INSERT INTO users (id, email, is_active, created_at) VALUES (%s, %s, true, now())",
        [user_id, email],
    )
    return user_id


def add_token(pg: psycopg.Connection[Any], user_id: uuid.UUID) -> None:
    pg.execute(
        "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) "
        "VALUES (%s, %s, 'test', %s, now())",
        [uuid.uuid4(), user_id, uuid.uuid4().hex * 2],
    )


def add_job(pg: psycopg.Connection[Any], user_id: uuid.UUID, **overrides: Any) -> uuid.UUID:
    job_id = overrides.pop("id", uuid.uuid4())
    row: dict[str, Any] = {
        "id": job_id,
        "user_id": user_id,
        "status": "PENDING",
        "idempotency_key": None,
        "original_key": f"originals/{user_id}/{job_id}.png",
        "content_type": "image/png",
        "size_bytes": 1234,
        "width": 64,
        "height": 48,
        "workflow": "restore",
        "progress": 0.0,
        "attempts": 0,
        **overrides,
    }
    columns = sql.SQL(", ").join(sql.Identifier(name) for name in row)
    values = sql.SQL(", ").join(sql.Placeholder(name) for name in row)
    pg.execute(
        sql.SQL(
            "INSERT INTO restoration_jobs ({}, created_at, updated_at) VALUES ({}, now(), now())"
        ).format(columns, values),
        row,
    )
    return job_id


def count(pg: psycopg.Connection[Any], table: str) -> int:
    found = pg.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert found is not None
    return int(found[0])


# --- migrations


def test_the_database_is_migrated_to_alembic_head(pg: psycopg.Connection[Any]) -> None:
    versions = pg.execute("SELECT version_num FROM alembic_version").fetchall()

    assert versions == [(head_revision(),)]


def schema_differences(database_url: str) -> list[Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_autogenerate_finds_no_difference_between_models_and_migrated_schema(
    services: WorkerServices,
) -> None:
    assert schema_differences(services.database_url) == []


def test_the_schema_has_the_constraints_and_indexes_the_models_declare(
    services: WorkerServices,
) -> None:
    engine = create_engine(services.database_url)
    try:
        with engine.connect() as connection:
            schema = inspect(connection)
            checks = {c["name"] for c in schema.get_check_constraints("restoration_jobs")}
            uniques = {
                (c["name"], tuple(c["column_names"]))
                for c in schema.get_unique_constraints("restoration_jobs")
            }
            indexes = {
                (i["name"], tuple(i["column_names"]))
                for i in schema.get_indexes("restoration_jobs")
            }
            foreign_keys = schema.get_foreign_keys("restoration_jobs")
    finally:
        engine.dispose()

    assert checks == {
        "ck_restoration_jobs_progress_range",
        "ck_restoration_jobs_attempts_non_negative",
        "ck_restoration_jobs_size_positive",
    }
    assert uniques == {
        ("uq_restoration_jobs_user_id_idempotency_key", ("user_id", "idempotency_key"))
    }
    assert ("ix_restoration_jobs_user_id_created_at", ("user_id", "created_at")) in indexes
    assert [(fk["referred_table"], fk["options"].get("ondelete")) for fk in foreign_keys] == [
        ("users", "CASCADE")
    ]


@pytest.fixture
def scratch_database(services: WorkerServices) -> Iterator[str]:
    """An empty database of this worker's own, dropped after the test."""
    postgres = services.endpoints.postgres
    name = f"{services.database}_scratch"
    drop_database(postgres, name)
    with admin_connection(postgres) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    drop_database(postgres, name)


def public_tables(database_url: str) -> set[str]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return set(inspect(connection).get_table_names())
    finally:
        engine.dispose()


APP_TABLES = {"users", "api_tokens", "restoration_jobs"}


def test_migrations_go_down_to_nothing_and_up_again(
    services: WorkerServices, scratch_database: str
) -> None:
    url = services.endpoints.postgres.url(scratch_database)
    config = alembic_config(url)

    alembic.command.upgrade(config, "head")
    assert public_tables(url) == {"alembic_version", *APP_TABLES}
    alembic.command.downgrade(config, "base")
    assert public_tables(url) == {"alembic_version"}
    alembic.command.upgrade(config, "head")
    assert public_tables(url) == {"alembic_version", *APP_TABLES}
    assert schema_differences(url) == []


def test_the_comparison_notices_a_schema_that_drifted(
    services: WorkerServices, scratch_database: str
) -> None:
    """The no-difference check is not vacuous: a missing index and a changed type both show."""
    url = services.endpoints.postgres.url(scratch_database)
    alembic.command.upgrade(alembic_config(url), "head")
    with psycopg.connect(services.endpoints.postgres.dsn(scratch_database), autocommit=True) as pg:
        pg.execute("DROP INDEX ix_restoration_jobs_user_id_created_at")
        pg.execute("ALTER TABLE restoration_jobs ALTER COLUMN workflow TYPE varchar(32)")

    differences = schema_differences(url)

    # Column changes come as a list of operations, table-level ones as a single tuple.
    kinds = sorted(
        change[0][0] if isinstance(change, list) else change[0] for change in differences
    )
    assert kinds == ["add_index", "modify_type"]


# --- constraints Postgres enforces


@pytest.mark.parametrize(
    ("column", "value", "constraint"),
    [
        ("progress", -0.01, "ck_restoration_jobs_progress_range"),
        ("progress", 1.01, "ck_restoration_jobs_progress_range"),
        ("attempts", -1, "ck_restoration_jobs_attempts_non_negative"),
        ("size_bytes", 0, "ck_restoration_jobs_size_positive"),
    ],
)
def test_check_constraints_reject_out_of_range_values(
    pg: psycopg.Connection[Any], column: str, value: float, constraint: str
) -> None:
    user_id = add_user(pg)

    with pytest.raises(errors.CheckViolation) as raised:
        add_job(pg, user_id, **{column: value})

    assert raised.value.diag.constraint_name == constraint
    assert count(pg, "restoration_jobs") == 0


@pytest.mark.parametrize(("column", "value"), [("progress", 0.0), ("progress", 1.0)])
def test_check_constraints_accept_the_bounds(
    pg: psycopg.Connection[Any], column: str, value: float
) -> None:
    add_job(pg, add_user(pg), **{column: value})

    assert count(pg, "restoration_jobs") == 1


def test_an_update_cannot_break_a_check_constraint_either(pg: psycopg.Connection[Any]) -> None:
    job_id = add_job(pg, add_user(pg))

    with pytest.raises(errors.CheckViolation):
        pg.execute("UPDATE restoration_jobs SET progress = 2 WHERE id = %s", [job_id])


def test_one_idempotency_key_per_user(pg: psycopg.Connection[Any]) -> None:
    alice, bob = add_user(pg, "alice@example.com"), add_user(pg, "bob@example.com")
    add_job(pg, alice, idempotency_key="key-1")

    with pytest.raises(errors.UniqueViolation) as raised:
        add_job(pg, alice, idempotency_key="key-1")

    assert raised.value.diag.constraint_name == "uq_restoration_jobs_user_id_idempotency_key"
    # Another user may use the same key, and jobs without a key never collide.
    add_job(pg, bob, idempotency_key="key-1")
    add_job(pg, alice)
    add_job(pg, alice)
    assert count(pg, "restoration_jobs") == 4


def test_a_job_needs_an_existing_user(pg: psycopg.Connection[Any]) -> None:
    with pytest.raises(errors.ForeignKeyViolation):
        add_job(pg, uuid.uuid4())


def test_deleting_a_user_deletes_their_tokens_and_jobs_only(pg: psycopg.Connection[Any]) -> None:
    alice, bob = add_user(pg, "alice@example.com"), add_user(pg, "bob@example.com")
    for user in (alice, bob):
        add_token(pg, user)
        add_job(pg, user)
        add_job(pg, user, status="COMPLETED")

    pg.execute("DELETE FROM users WHERE id = %s", [alice])

    remaining_jobs = pg.execute("SELECT DISTINCT user_id FROM restoration_jobs").fetchall()
    remaining_tokens = pg.execute("SELECT DISTINCT user_id FROM api_tokens").fetchall()
    assert remaining_jobs == [(bob,)]
    assert remaining_tokens == [(bob,)]
    assert count(pg, "restoration_jobs") == 2


def test_emails_are_unique(pg: psycopg.Connection[Any]) -> None:
    add_user(pg, "alice@example.com")

    with pytest.raises(errors.UniqueViolation):
        add_user(pg, "alice@example.com")


def test_token_hashes_are_unique(pg: psycopg.Connection[Any]) -> None:
    alice, bob = add_user(pg, "alice@example.com"), add_user(pg, "bob@example.com")
    insert = (
        "INSERT INTO api_tokens (id, user_id, name, token_hash, created_at) "
        "VALUES (%s, %s, 'test', 'same-hash', now())"
    )
    pg.execute(insert, [uuid.uuid4(), alice])

    with pytest.raises(errors.UniqueViolation):
        pg.execute(insert, [uuid.uuid4(), bob])
