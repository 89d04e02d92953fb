"""The external provider, pointed at the services this run got from its own provider."""

from __future__ import annotations

import redis

from fixtures.services import ServiceEndpoints
from fixtures.services.database import run_databases
from fixtures.services.isolation import s3_client


def test_external_provider_serves_and_cleans_up_a_shared_server(
    start_inner, services_endpoints: ServiceEndpoints
) -> None:
    endpoints = services_endpoints
    first_db = endpoints.redis.databases - 2  # two workers, clear of this run's own
    run = start_inner(
        "scenario_basic.py",
        "-n",
        "2",
        env={
            "TEST_SERVICES": "external",
            "TEST_DATABASE_URL": endpoints.postgres.dsn(),
            "TEST_REDIS_URL": endpoints.redis.url(first_db),
            "TEST_S3_ENDPOINT_URL": endpoints.s3.endpoint_url,
            "TEST_S3_ACCESS_KEY_ID": endpoints.s3.access_key_id,
            "TEST_S3_SECRET_ACCESS_KEY": endpoints.s3.secret_access_key,
            "TEST_S3_REGION": endpoints.s3.region,
        },
    )
    assert run.wait() == 0, run.output
    assert "services: external" in run.output
    assert "4 passed" in run.output

    # It used our servers and left nothing on them: databases, buckets, Redis dbs.
    assert run_databases(endpoints.postgres, f"rt_{run.run_id}") == []
    buckets = [b["Name"] for b in s3_client(endpoints.s3).list_buckets()["Buckets"]]
    assert not [name for name in buckets if name.startswith(f"rt-{run.run_id}-")]
    for db in (first_db, first_db + 1):
        client = redis.Redis.from_url(endpoints.redis.url(db))
        assert client.dbsize() == 0
        client.close()
