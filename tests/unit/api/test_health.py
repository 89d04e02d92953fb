"""Liveness and readiness: DB, broker and S3 are required; ComfyUI is only reported."""

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from app.services.comfyui import ComfyUIHealth
from app.services.s3 import StorageTransientError

pytestmark = pytest.mark.anyio


async def test_liveness_needs_nothing(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def test_ready_when_every_dependency_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "broker": True,
        "storage": True,
    }
    assert body["comfyui"] == {"ok": True, "detail": "ComfyUI 0.3.64"}


async def test_comfyui_down_is_reported_but_still_ready(
    client: httpx.AsyncClient, comfyui_health
) -> None:
    comfyui_health.health_answer = ComfyUIHealth(ok=False, error="connection refused")

    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["comfyui"] == {"ok": False, "detail": "connection refused"}


async def test_broker_down_is_not_ready(client: httpx.AsyncClient, broker) -> None:
    broker.error = ConnectionRefusedError("Connection refused")

    response = await client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["broker"] == {
        "ok": False,
        "detail": "ConnectionRefusedError: Connection refused",
    }
    assert body["checks"]["database"]["ok"]
    assert body["checks"]["storage"]["ok"]


async def test_storage_down_is_not_ready(client: httpx.AsyncClient, storage, monkeypatch) -> None:
    async def broken() -> None:
        raise StorageTransientError("S3 head_bucket failed: 503")

    monkeypatch.setattr(storage, "check", broken)

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["ok"] is False


async def test_database_down_is_not_ready(
    client: httpx.AsyncClient, resources, monkeypatch
) -> None:
    class DeadSession:
        async def __aenter__(self):
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

        async def __aexit__(self, *exc):
            return False

    monkeypatch.setattr(resources, "session_factory", lambda: DeadSession())

    response = await client.get("/readyz")

    assert response.status_code == 503
    check = response.json()["checks"]["database"]
    assert check["ok"] is False
    assert "connection refused" in check["detail"]


async def test_a_hanging_dependency_times_out_instead_of_hanging(
    client: httpx.AsyncClient, broker, monkeypatch
) -> None:
    import asyncio

    from app.api import health

    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.05)

    async def hang() -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr(broker, "ping", hang)

    response = await client.get("/readyz")

    assert response.status_code == 503
    assert "no answer within" in response.json()["checks"]["broker"]["detail"]


async def test_readiness_answers_while_checks_that_ignore_cancellation_still_run(
    client: httpx.AsyncClient, storage, resources, broker, monkeypatch
) -> None:
    """A frozen S3 blocks a boto3 thread; psycopg, cancelled on a frozen Postgres, first tries to
    cancel the query on the server (up to 10 s) before it lets go. The answer must wait for
    neither: it comes while they are still stuck, naming each late check."""
    import asyncio
    import threading

    import anyio
    import anyio.to_thread

    from app.api import health

    monkeypatch.setattr(health, "CHECK_TIMEOUT_SECONDS", 0.1)
    frozen = threading.Event()
    database_let_go = threading.Event()

    async def blocked_in_a_thread() -> None:
        await anyio.to_thread.run_sync(frozen.wait, 5)

    class FrozenSession:
        async def __aenter__(self):
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await blocked_in_a_thread()  # psycopg's cancel request to the frozen server
                database_let_go.set()
                raise

        async def __aexit__(self, *exc):
            return False

    monkeypatch.setattr(storage, "check", blocked_in_a_thread)
    monkeypatch.setattr(broker, "ping", blocked_in_a_thread)
    monkeypatch.setattr(resources, "session_factory", lambda: FrozenSession())
    try:
        with anyio.fail_after(10):  # a hang fails instead of stalling the run
            response = await client.get("/readyz")
        answered_first = not database_let_go.is_set() and not frozen.is_set()
    finally:
        frozen.set()

    assert answered_first
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks == {
        name: {"ok": False, "detail": "no answer within 0.1 s"}
        for name in ("database", "broker", "storage")
    }
