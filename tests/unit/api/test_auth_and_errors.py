"""Bearer-token auth on every route, and the one JSON error shape for every failure."""

from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from app.models import ApiToken, User
from fixtures.accounts import Account

pytestmark = pytest.mark.anyio

JOB = "/api/v1/restorations/00000000-0000-4000-8000-000000000000"
ROUTES = [
    ("GET", "/api/v1/restorations"),
    ("POST", "/api/v1/restorations"),
    ("GET", JOB),
    ("GET", f"{JOB}/result"),
    ("DELETE", JOB),
]


def assert_error_shape(body: dict, code: str) -> None:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer rst_not-a-real-token", "Basic dXNlcjpwYXNz"]
)
async def test_every_route_needs_a_valid_bearer_token(
    client: httpx.AsyncClient, alice: Account, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = await client.request(method, path, headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error_shape(response.json(), "unauthorized")


async def test_revoked_token_is_refused(client: httpx.AsyncClient, alice: Account, session) -> None:
    await session.execute(update(ApiToken).values(revoked_at=datetime.now(UTC)))
    await session.commit()

    response = await client.get("/api/v1/restorations", headers=alice.headers)

    assert response.status_code == 401


async def test_inactive_user_is_refused(client: httpx.AsyncClient, alice: Account, session) -> None:
    await session.execute(update(User).where(User.id == alice.user.id).values(is_active=False))
    await session.commit()

    response = await client.get("/api/v1/restorations", headers=alice.headers)

    assert response.status_code == 401


async def test_valid_token_is_accepted(client: httpx.AsyncClient, alice: Account) -> None:
    response = await client.get("/api/v1/restorations", headers=alice.headers)

    assert response.status_code == 200


async def test_unknown_route_and_method_use_the_error_shape(
    client: httpx.AsyncClient, alice: Account
) -> None:
    missing = await client.get("/api/v1/nothing-here", headers=alice.headers)
    wrong_method = await client.put("/api/v1/restorations", headers=alice.headers)

    assert missing.status_code == 404
    assert_error_shape(missing.json(), "not_found")
    assert wrong_method.status_code == 405
    assert_error_shape(wrong_method.json(), "method_not_allowed")


async def test_unexpected_errors_are_500_without_a_traceback(
    client: httpx.AsyncClient, alice: Account, storage, session, monkeypatch
) -> None:
    from app.models import JobStatus
    from tests.unit.api.test_restoration_read import add_job

    job = await add_job(session, alice.user, status=JobStatus.COMPLETED, result_key="results/k.png")

    async def explode(*args, **kwargs):
        raise RuntimeError("secret internal detail at /srv/app/x.py line 3")

    monkeypatch.setattr(storage, "presign_download", explode)

    response = await client.get(f"/api/v1/restorations/{job.id}", headers=alice.headers)

    assert response.status_code == 500
    assert_error_shape(response.json(), "internal_error")
    assert "secret" not in response.text
    assert "Traceback" not in response.text


async def test_database_outage_is_503_not_500(
    client: httpx.AsyncClient, alice: Account, resources, monkeypatch
) -> None:
    class DeadSession:
        async def __aenter__(self):
            raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))

        async def __aexit__(self, *exc):
            return False

    monkeypatch.setattr(resources, "session_factory", lambda: DeadSession())

    response = await client.get("/api/v1/restorations", headers=alice.headers)

    assert response.status_code == 503
    assert_error_shape(response.json(), "database_unavailable")


async def test_openapi_documents_the_upload_and_the_error_shape(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()

    upload = spec["paths"]["/api/v1/restorations"]["post"]
    schema = upload["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["properties"]["file"]["format"] == "binary"
    assert {"401", "413", "415", "422", "503"} <= set(upload["responses"])
    assert "ErrorResponse" in spec["components"]["schemas"]
