"""Helpers for the integration tier's tests: the job row as Postgres has it, the stand-in's
controls, the worker's settings, proxies in front of the real services, apps with other settings.
The fixtures that hand them out are in conftest.py."""

import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import urlsplit

import anyio
import boto3
import botocore.config
import httpx
import psycopg
import pytest
import redis
from psycopg.rows import dict_row
from sqlalchemy.engine import make_url

from app.core.config import Settings
from fixtures.accounts import Account
from fixtures.images import make_image
from fixtures.netproxy import TcpProxy
from fixtures.services import WorkerServices

TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


async def upload_png(client: httpx.AsyncClient, account: Account, data: bytes | None = None) -> str:
    """POST a PNG (a small generated one unless `data`) as `account`; the id of the 202's job."""
    image = make_image("PNG", (24, 16)) if data is None else data
    response = await client.post(
        "/api/v1/restorations",
        files={"file": ("photo.png", image, "image/png")},
        headers=account.headers,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def wait_until(
    condition: Callable[[], object], *, timeout: float = 10.0, what: str = "the condition"
) -> None:
    """Poll `condition()` until it is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        await anyio.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], bool]:
    """A condition for `wait_until`: a log record (from any thread, the worker's too) has `text`."""
    return lambda: any(text in record.getMessage() for record in caplog.records)


class JobsTable:
    """`restoration_jobs` read straight from this worker's Postgres database (autocommit)."""

    def __init__(self, dsn: str) -> None:
        self.connection = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)

    def row(self, job_id: str) -> dict[str, Any] | None:
        return self.connection.execute(
            "SELECT * FROM restoration_jobs WHERE id = %s", [job_id]
        ).fetchone()

    def one(self, job_id: str) -> dict[str, Any]:
        row = self.row(job_id)
        assert row is not None, f"job {job_id} has no row"
        return row

    def count(self) -> int:
        found = self.connection.execute("SELECT count(*) AS n FROM restoration_jobs").fetchone()
        assert found is not None
        return int(found["n"])

    async def wait_for(
        self,
        job_id: str,
        until: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 20.0,
        what: str = "the expected state",
    ) -> dict[str, Any]:
        """Poll the row until `until(row)` holds; fail with the last row seen after `timeout`."""
        deadline = time.monotonic() + timeout
        row = None
        while time.monotonic() < deadline:
            row = self.row(job_id)
            if row is not None and until(row):
                return row
            await anyio.sleep(0.02)
        raise AssertionError(f"job {job_id} did not reach {what} within {timeout} s: {row}")

    async def wait_for_status(
        self, job_id: str, *statuses: str, timeout: float = 20.0
    ) -> dict[str, Any]:
        return await self.wait_for(
            job_id, lambda row: row["status"] in statuses, timeout=timeout, what=str(statuses)
        )

    async def wait_until_finished(self, job_id: str, *, timeout: float = 20.0) -> dict[str, Any]:
        return await self.wait_for_status(job_id, *TERMINAL_STATUSES, timeout=timeout)

    def close(self) -> None:
        self.connection.close()


STATUS_LOG_SQL = """
CREATE TABLE IF NOT EXISTS test_job_status_log (
    seq bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    status varchar(16) NOT NULL,
    attempts integer NOT NULL,
    error_message text,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE OR REPLACE FUNCTION test_log_job_status() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status
            OR NEW.attempts IS DISTINCT FROM OLD.attempts THEN
        INSERT INTO test_job_status_log (job_id, status, attempts, error_message)
        VALUES (NEW.id, NEW.status, NEW.attempts, NEW.error_message);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE OR REPLACE TRIGGER test_job_status_log
    AFTER INSERT OR UPDATE ON restoration_jobs FOR EACH ROW EXECUTE FUNCTION test_log_job_status();
"""
STATUS_LOG_DROP_SQL = """
DROP TRIGGER IF EXISTS test_job_status_log ON restoration_jobs;
DROP FUNCTION IF EXISTS test_log_job_status();
DROP TABLE IF EXISTS test_job_status_log;
"""


class StatusLog:
    """Every status (and attempt) a job's row took, recorded by a trigger inside Postgres, so even
    a transition that lasts microseconds is seen, in commit order."""

    def __init__(self, connection: psycopg.Connection[dict[str, Any]]) -> None:
        self.connection = connection

    def history(self, job_id: str) -> list[tuple[str, int]]:
        rows = self.connection.execute(
            "SELECT status, attempts FROM test_job_status_log WHERE job_id = %s ORDER BY seq",
            [job_id],
        ).fetchall()
        return [(row["status"], row["attempts"]) for row in rows]

    def statuses(self, job_id: str) -> list[str]:
        return [status for status, _ in self.history(job_id)]


class StandIn:
    """Controls of this worker's ComfyUI stand-in: faults, queue, history, files."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def fault(self, kind: str, **fields: Any) -> None:
        response = self.http.post("/_standin/faults", json={"kind": kind, **fields})
        response.raise_for_status()

    def queue(self) -> dict[str, list[Any]]:
        body: dict[str, list[Any]] = self.http.get("/queue").raise_for_status().json()
        return body

    def queued_ids(self) -> set[str]:
        body = self.queue()
        return {item[1] for item in body["queue_running"] + body["queue_pending"]}

    def history(self, prompt_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.http.get(f"/history/{prompt_id}").raise_for_status().json()
        return body.get(prompt_id, {})

    def view(self, filename: str, subfolder: str, kind: str = "input") -> bytes:
        params = {"filename": filename, "subfolder": subfolder, "type": kind}
        return self.http.get("/view", params=params).raise_for_status().content

    async def wait_until_idle(self, timeout: float = 10.0) -> None:
        await wait_until(
            lambda: not self.queued_ids(), timeout=timeout, what="the stand-in's queue emptying"
        )

    def reset(self, timeout: float = 15.0) -> None:
        """Remove every fault and stop whatever runs; waits out a `refuse_connections` window."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.http.delete("/_standin/faults").raise_for_status()
                self.http.post("/queue", json={"clear": True}).raise_for_status()
                self.http.post("/interrupt", json={}).raise_for_status()
                while self.queued_ids():
                    if time.monotonic() > deadline:
                        raise AssertionError(f"the stand-in did not go idle: {self.queue()}")
                    time.sleep(0.02)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self.http.close()


# --- a dependency of the app (database, broker, storage) behind a TCP proxy

StartProxy = Callable[[str, int], TcpProxy]
# Nothing that goes through a failed proxy may take long: a hang fails the test, not the run.
HANG_SECONDS = 60.0


def dependency_endpoint(settings: Settings, name: str) -> tuple[str, int]:
    """(host, port) of the app's "database", "broker" or "storage"."""
    url = {
        "database": settings.database_url,
        "broker": settings.redis_url,
        "storage": settings.s3_endpoint_url or "",
    }[name]
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


def proxy_dependency(
    settings: Settings, services: WorkerServices, name: str, start_proxy: StartProxy
) -> tuple[TcpProxy, Settings]:
    """A started proxy in front of the app's `name`, and `settings` that reach it through it."""
    proxy = start_proxy(*dependency_endpoint(settings, name))
    local = f"127.0.0.1:{proxy.port}"
    update = {
        "database": {
            "database_url": make_url(settings.database_url)
            .set(host="127.0.0.1", port=proxy.port)
            .render_as_string(hide_password=False)
        },
        "broker": {"redis_url": f"redis://{local}/{services.redis_db}"},
        "storage": {"s3_endpoint_url": f"http://{local}"},
    }[name]
    return proxy, settings.model_copy(update=update)


async def timed(request: Awaitable[httpx.Response], what: str) -> tuple[httpx.Response, float]:
    """The answer and how long it took; a hang fails the test after HANG_SECONDS (shown with -s)."""
    started = time.monotonic()
    with anyio.fail_after(HANG_SECONDS):
        response = await request
    elapsed = time.monotonic() - started
    print(f"\n{what}: {response.status_code} after {elapsed:.2f} s")
    return response, elapsed


ApiClient = Callable[[Settings], AbstractAsyncContextManager[httpx.AsyncClient]]


def s3_client(settings: Settings) -> Any:
    """A plain boto3 client on the worker's S3, to look at what the app stored."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=(
            settings.s3_secret_access_key.get_secret_value()
            if settings.s3_secret_access_key
            else None
        ),
        region_name=settings.s3_region,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


def object_keys(settings: Settings) -> set[str]:
    listed = s3_client(settings).list_objects_v2(Bucket=settings.s3_bucket)
    return {item["Key"] for item in listed.get("Contents", [])}


def queued_messages(settings: Settings) -> list[dict[str, Any]]:
    """The Celery messages waiting in this worker's queue on the real Redis broker."""
    broker = redis.Redis.from_url(settings.redis_url)
    try:
        raw = broker.lrange(settings.celery_queue, 0, -1)
    finally:
        broker.close()
    return [json.loads(item) for item in raw]
