"""/readyz against the real dependencies: each one really failed through a TCP proxy (or a closed
port for ComfyUI) is reported by name, with 503 for the required ones."""

import httpx
import pytest

from app.core.config import Settings
from fixtures.net import free_port
from fixtures.netproxy import TcpProxy
from fixtures.services import WorkerServices
from tests.integration.helpers import ApiClient, StartProxy, proxy_dependency, timed

pytestmark = pytest.mark.anyio


async def test_ready_when_every_dependency_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"] == {
        name: {"ok": True, "detail": None} for name in ("database", "broker", "storage")
    }
    assert body["comfyui"] == {"ok": True, "detail": "ComfyUI 0.3.64"}
    assert (await client.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize("name", ["database", "broker", "storage"])
async def test_a_dependency_that_is_cut_makes_the_api_unready(
    name: str,
    settings: Settings,
    services: WorkerServices,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
) -> None:
    proxy, app_settings = proxy_dependency(settings, services, name, tcp_proxy)
    async with api_client(app_settings) as client:
        assert (await client.get("/readyz")).status_code == 200

        proxy.cut()
        response, elapsed = await timed(client.get("/readyz"), f"readyz with {name} cut")

        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "not_ready"
        assert body["checks"][name]["ok"] is False
        assert body["checks"][name]["detail"]
        others = {other for other in body["checks"] if other != name}
        assert all(body["checks"][other]["ok"] for other in others), body
        assert elapsed < 5

        proxy.restore()
        assert (await client.get("/readyz")).status_code == 200


async def test_a_paused_database_makes_the_api_unready(
    settings: Settings, services: WorkerServices, api_client: ApiClient, tcp_proxy: StartProxy
) -> None:
    """The check's own 3 s limit fires and the answer goes out then. psycopg goes on cancelling the
    query on the server that does not answer (up to 10 s) in the background, abandoned."""
    proxy, app_settings = proxy_dependency(settings, services, "database", tcp_proxy)
    async with api_client(app_settings) as client:
        assert (await client.get("/readyz")).status_code == 200

        proxy.blackhole()
        response, elapsed = await timed(
            client.get("/readyz"), "readyz with the database blackholed"
        )

    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {"ok": False, "detail": "no answer within 3 s"}
    assert elapsed < 10  # was about 13 s while the answer waited for psycopg's cancellation


async def test_readiness_answers_within_its_limit_with_every_dependency_paused(
    settings: Settings, services: WorkerServices, api_client: ApiClient, tcp_proxy: StartProxy
) -> None:
    """Postgres, Redis and S3 all accept connections and never answer: /readyz still answers
    after its own limit, naming each of them."""
    names = ("database", "broker", "storage")
    proxies: dict[str, TcpProxy] = {}
    app_settings = settings
    for name in names:
        proxies[name], app_settings = proxy_dependency(app_settings, services, name, tcp_proxy)
    async with api_client(app_settings) as client:
        assert (await client.get("/readyz")).status_code == 200

        for proxy in proxies.values():
            proxy.blackhole()
        response, elapsed = await timed(client.get("/readyz"), "readyz with everything blackholed")
        for proxy in proxies.values():
            proxy.restore()

    assert response.status_code == 503
    assert response.json()["checks"] == {
        name: {"ok": False, "detail": "no answer within 3 s"} for name in names
    }
    assert elapsed < 10


async def test_comfyui_down_is_reported_but_the_api_stays_ready(
    settings: Settings, api_client: ApiClient
) -> None:
    app_settings = settings.model_copy(update={"comfyui_url": f"http://127.0.0.1:{free_port()}"})
    async with api_client(app_settings) as client:
        response = await client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["comfyui"]["ok"] is False
    assert "unreachable" in body["comfyui"]["detail"]
