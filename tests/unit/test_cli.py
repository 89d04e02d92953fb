"""The command line on a temporary SQLite file: migrate, create-user, create-token, serve, worker."""

import asyncio
import logging
import runpy
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session

from app import cli
from app.core.config import get_settings
from app.core.db import create_engine as create_async_engine
from app.core.db import create_session_factory
from app.core.security import hash_token
from app.models import ApiToken, User
from app.repositories.users import UserRepository


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """`migrate` lets Alembic configure logging from alembic.ini; undo that for the next tests."""
    names = [None, "alembic", "sqlalchemy.engine"]
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.handlers[:], logger.propagate, logger.disabled))
    yield
    for logger, level, handlers, propagate, disabled in saved:
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate, logger.disabled = propagate, disabled


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "cli.sqlite"
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{path}")
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


@pytest.fixture
def migrated(db_path: Path) -> Path:
    assert cli.main(["migrate"]) == 0
    return db_path


def rows(path: Path, model: type[Any]) -> list[Any]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with Session(engine) as session:
            return list(session.scalars(select(model)))
    finally:
        engine.dispose()


def user_for_token(token: str) -> User | None:
    """What the API does with a bearer token: look up its hash."""

    async def lookup() -> User | None:
        engine = create_async_engine(get_settings(), pooled=False)
        try:
            async with create_session_factory(engine)() as session:
                return await UserRepository(session).get_active_user_by_token_hash(
                    hash_token(token)
                )
        finally:
            await engine.dispose()

    return asyncio.run(lookup())


def test_migrate_creates_the_schema_at_head(db_path: Path) -> None:
    assert cli.main(["migrate"]) == 0

    engine = create_engine(f"sqlite:///{db_path}")
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert tables == {"alembic_version", "users", "api_tokens", "restoration_jobs"}
    assert alembic_version(db_path) == "0002"  # the newest migration
    assert cli.main(["migrate"]) == 0  # again: nothing to do, no error


def alembic_version(path: Path) -> str | None:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def test_migrate_to_a_named_revision(db_path: Path) -> None:
    assert cli.main(["migrate", "0001"]) == 0

    assert alembic_version(db_path) == "0001"
    assert rows(db_path, User) == []


def test_migrate_without_alembic_ini(
    db_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(cli, "ALEMBIC_INI", tmp_path / "missing.ini")

    assert cli.main(["migrate"]) == 1
    assert "alembic.ini not found" in capsys.readouterr().err
    assert not db_path.exists()


def test_create_user(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create-user", "carol@example.com"]) == 0

    printed = capsys.readouterr().out.strip()
    [user] = rows(migrated, User)
    assert uuid.UUID(printed) == user.id
    assert (user.email, user.is_active) == ("carol@example.com", True)


def test_duplicate_user_is_refused(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create-user", "carol@example.com"]) == 0
    capsys.readouterr()

    assert cli.main(["create-user", "carol@example.com"]) == 1

    captured = capsys.readouterr()
    assert captured.err == "error: a user with email carol@example.com exists already\n"
    assert captured.out == ""
    assert len(rows(migrated, User)) == 1


def test_create_token_prints_a_token_that_works_and_stores_only_its_hash(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["create-user", "carol@example.com"]) == 0
    capsys.readouterr()

    assert cli.main(["create-token", "carol@example.com", "--name", "laptop"]) == 0

    token = capsys.readouterr().out.strip()
    assert token.startswith("rst_")
    [stored] = rows(migrated, ApiToken)
    assert stored.token_hash == hash_token(token)
    assert stored.name == "laptop"
    assert token not in migrated.read_bytes().decode("latin-1")  # never stored in clear
    user = user_for_token(token)
    assert user is not None
    assert user.email == "carol@example.com"


def test_each_token_is_new(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create-token", "carol@example.com", "--create-user"]) == 0
    assert cli.main(["create-token", "carol@example.com"]) == 0

    first, second = capsys.readouterr().out.split()
    assert first != second
    assert {token.name for token in rows(migrated, ApiToken)} == {"cli"}
    assert user_for_token(first) is not None
    assert user_for_token(second) is not None


def test_create_token_for_a_missing_user(
    migrated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["create-token", "nobody@example.com"]) == 1

    captured = capsys.readouterr()
    assert captured.err == "error: no user with email nobody@example.com; add --create-user\n"
    assert captured.out == ""
    assert rows(migrated, User) == []
    assert rows(migrated, ApiToken) == []


def test_create_token_with_create_user(migrated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["create-token", "dave@example.com", "--create-user"]) == 0

    token = capsys.readouterr().out.strip()
    [user] = rows(migrated, User)
    assert user.email == "dave@example.com"
    found = user_for_token(token)
    assert found is not None
    assert found.id == user.id


def test_serve_runs_the_app_factory_under_uvicorn(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: calls.append((args, kwargs)))

    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "9000"]) == 0

    assert calls == [(("app.main:create_app",), {"factory": True, "host": "0.0.0.0", "port": 9000})]


def test_worker_passes_extra_arguments_to_celery(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.workers.celery_app import celery_app

    argv: list[list[str]] = []

    def worker_main(args: list[str]) -> None:
        argv.append(args)
        raise SystemExit(0)

    monkeypatch.setattr(celery_app, "worker_main", worker_main)

    with pytest.raises(SystemExit) as exited:
        cli.main(["worker", "--concurrency", "2", "--loglevel", "INFO"])

    assert exited.value.code == 0
    queue = get_settings().celery_queue
    assert argv == [["worker", "--queues", queue, "--concurrency", "2", "--loglevel", "INFO"]]


@pytest.mark.parametrize("argv", [[], ["unknown"], ["create-user"]])
def test_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)

    assert exited.value.code == 2
    assert "usage: restoration" in capsys.readouterr().err


def test_python_dash_m_app(
    migrated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m app", "create-user", "erin@example.com"])

    with pytest.raises(SystemExit) as exited:
        runpy.run_module("app", run_name="__main__")

    assert exited.value.code == 0
    assert uuid.UUID(capsys.readouterr().out.strip()) == rows(migrated, User)[0].id


def test_ensure_bucket_creates_the_configured_bucket_once(
    db_path: Path, moto_s3_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_BUCKET", "cli-made-bucket")
    monkeypatch.setenv("S3_REGION", "us-east-1")
    get_settings.cache_clear()

    assert cli.main(["ensure-bucket"]) == 0
    assert cli.main(["ensure-bucket"]) == 0  # a bucket that exists is fine

    names = [bucket["Name"] for bucket in moto_s3_client.list_buckets()["Buckets"]]
    assert names.count("cli-made-bucket") == 1
    moto_s3_client.delete_bucket(Bucket="cli-made-bucket")
