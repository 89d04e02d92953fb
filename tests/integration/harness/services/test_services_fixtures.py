"""The run's own services, through the fixtures: each one serves, each worker has its own
migrated database, Redis db and bucket, and the per-test resets empty them."""

from __future__ import annotations

import urllib.request

import psycopg
import pytest
import redis
import sqlalchemy
from alembic.config import Config
from alembic.script import ScriptDirectory

from app.core.config import Settings
from app.models import Base
from fixtures import REPO_ROOT
from fixtures.services import APP_ENV_VARS, ServiceEndpoints, WorkerServices
from fixtures.services.isolation import (
    Isolation,
    s3_client,
    template_name,
    worker_index,
    worker_services,
)
from fixtures.services.run import RunContext


def head_revision() -> str:
    script = ScriptDirectory.from_config(Config(str(REPO_ROOT / "alembic.ini")))
    head = script.get_current_head()
    assert head is not None
    return head


def test_postgres_serves_the_app_url(services: WorkerServices) -> None:
    assert services.database_url.startswith("postgresql+psycopg://")
    engine = sqlalchemy.create_engine(services.database_url)
    try:
        with engine.connect() as connection:
            assert (
                connection.scalar(sqlalchemy.text("SELECT current_database()")) == services.database
            )
            assert connection.scalar(sqlalchemy.text("SELECT 6 * 7")) == 42
    finally:
        engine.dispose()


def test_worker_database_is_a_migrated_clone_of_a_closed_template(
    services: WorkerServices, services_endpoints: ServiceEndpoints, services_run: RunContext
) -> None:
    assert services.database == f"rt_{services_run.run_id}_{services.worker_id}"
    with psycopg.connect(services.database_dsn) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (head_revision(),)
        ]
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert set(Base.metadata.tables) <= tables
    with psycopg.connect(services_endpoints.postgres.dsn()) as admin:
        template = admin.execute(
            "SELECT datistemplate, datallowconn FROM pg_database WHERE datname = %s",
            [template_name(services_run)],
        ).fetchone()
    assert template == (True, False), "the template must be sealed so it can always be cloned"


def test_redis_serves_the_workers_own_db(services: WorkerServices) -> None:
    assert services.redis_db == services.endpoints.redis.first_db + worker_index(services.worker_id)
    client = redis.Redis.from_url(services.redis_url)
    try:
        assert client.ping()
        client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"
        assert client.connection_pool.connection_kwargs["db"] == services.redis_db
    finally:
        client.close()


def test_s3_put_get_and_presigned_download(services: WorkerServices) -> None:
    s3 = s3_client(services.s3)
    s3.put_object(Bucket=services.bucket, Key="photos/a.png", Body=b"\x89PNG fake")
    assert (
        s3.get_object(Bucket=services.bucket, Key="photos/a.png")["Body"].read() == b"\x89PNG fake"
    )
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": services.bucket, "Key": "photos/a.png"}
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x89PNG fake"


def test_env_is_exactly_what_the_app_reads(
    services_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert set(services_env) == set(APP_ENV_VARS)
    for name, value in services_env.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url == services_env["DATABASE_URL"]
    assert settings.redis_url == services_env["REDIS_URL"]
    assert settings.s3_endpoint_url == services_env["S3_ENDPOINT_URL"]
    assert settings.s3_bucket == services_env["S3_BUCKET"]
    assert settings.s3_region == services_env["S3_REGION"]
    assert settings.s3_access_key_id == services_env["S3_ACCESS_KEY_ID"]
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == services_env["S3_SECRET_ACCESS_KEY"]


def test_workers_get_distinct_resources(
    services_endpoints: ServiceEndpoints, services_run: RunContext
) -> None:
    shares = [worker_services(services_run, services_endpoints, f"gw{n}") for n in range(3)]
    for attribute in ("database", "redis_db", "bucket"):
        assert len({getattr(share, attribute) for share in shares}) == 3, attribute


def test_truncate_empties_app_tables_and_keeps_alembic_version(
    services: WorkerServices, services_isolation: Isolation
) -> None:
    with psycopg.connect(services.database_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO users VALUES (gen_random_uuid(), 'a@example.com', true, now())"
        )
        connection.execute("CREATE TABLE IF NOT EXISTS scratch (id serial PRIMARY KEY, note text)")
        connection.execute("INSERT INTO scratch (note) VALUES ('x')")
        emptied = services_isolation.truncate_tables()
        assert {"public.users", "public.scratch"} <= set(emptied)
        assert "public.alembic_version" not in emptied
        assert connection.execute("SELECT count(*) FROM users").fetchone() == (0,)
        assert connection.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        connection.execute("INSERT INTO scratch (note) VALUES ('y') RETURNING id")
        assert connection.execute("SELECT max(id) FROM scratch").fetchone() == (1,), (
            "identities restart"
        )
        connection.execute("DROP TABLE scratch")


def test_empty_bucket_and_flush_redis(
    clean_bucket: WorkerServices, clean_redis: WorkerServices, services_isolation: Isolation
) -> None:
    services = clean_bucket
    s3 = s3_client(services.s3)
    for n in range(3):
        s3.put_object(Bucket=services.bucket, Key=f"k{n}", Body=b"x")
    client = redis.Redis.from_url(services.redis_url)
    client.set("left", "over")
    assert services_isolation.empty_bucket() == 3
    services_isolation.flush_redis()
    assert s3.list_objects_v2(Bucket=services.bucket)["KeyCount"] == 0
    assert client.dbsize() == 0
    client.close()


def test_clean_services_fixture_resets_all_three(
    services: WorkerServices, request: pytest.FixtureRequest
) -> None:
    with psycopg.connect(services.database_dsn, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO users VALUES (gen_random_uuid(), 'b@example.com', true, now())"
        )
    s3_client(services.s3).put_object(Bucket=services.bucket, Key="k", Body=b"x")
    client = redis.Redis.from_url(services.redis_url)
    client.set("left", "over")

    assert request.getfixturevalue("clean_services") is services

    with psycopg.connect(services.database_dsn) as connection:
        assert connection.execute("SELECT count(*) FROM users").fetchone() == (0,)
    assert s3_client(services.s3).list_objects_v2(Bucket=services.bucket)["KeyCount"] == 0
    assert client.dbsize() == 0
    client.close()
