"""Inner run: each service really serves, through the fixtures, in every worker."""

import boto3
import psycopg
import pytest
import redis

from fixtures.services import WorkerServices


@pytest.mark.parametrize("n", range(4))
def test_services_serve(clean_services: WorkerServices, n: int) -> None:
    with psycopg.connect(clean_services.database_dsn) as connection:
        connection.execute(
            "INSERT INTO users VALUES (gen_random_uuid(), %s, true, now())", [f"{n}@x"]
        )
        assert connection.execute("SELECT count(*) FROM users").fetchone() == (1,)
    client = redis.Redis.from_url(clean_services.redis_url)
    assert client.incr("counter") == 1
    client.close()
    s3 = boto3.client(
        "s3",
        endpoint_url=clean_services.s3.endpoint_url,
        aws_access_key_id=clean_services.s3.access_key_id,
        aws_secret_access_key=clean_services.s3.secret_access_key,
        region_name=clean_services.s3.region,
    )
    s3.put_object(Bucket=clean_services.bucket, Key=f"k{n}", Body=b"x")
    assert s3.list_objects_v2(Bucket=clean_services.bucket)["KeyCount"] == 1
