"""Cross-layer failures at the API, produced by really failing a service: a TCP proxy in front of
the real Postgres, Redis or S3 (`fixtures.netproxy`), cut (connections reset, as from a crashed
server) or blackholed (connections accepted, never answered, as by a paused one). The shared
services themselves are never stopped: other xdist workers use them."""

import anyio
import pytest

from app.core.config import Settings
from fixtures import images
from fixtures.accounts import Account
from fixtures.services import WorkerServices
from tests.integration.helpers import (
    HANG_SECONDS,
    ApiClient,
    JobsTable,
    StartProxy,
    object_keys,
    proxy_dependency,
    queued_messages,
    timed,
)

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"
# Generous: the point is "answers, and soon", not a benchmark; the figures are printed (-s).
QUICK_SECONDS = 10.0


def upload() -> dict:
    return {"file": ("photo.png", images.make_image(), "image/png")}


@pytest.mark.parametrize("failure", ["cut", "blackhole"])
async def test_database_loss_answers_503_quickly(
    failure: str,
    settings: Settings,
    services: WorkerServices,
    alice: Account,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
) -> None:
    """A pooled connection to a server that stopped answering: the app's per-operation deadline
    (`DATABASE_OPERATION_TIMEOUT_SECONDS`) ends the pre-ping, the reconnect ends at
    `connect_timeout`; a reset connection fails at once."""
    proxy, app_settings = proxy_dependency(settings, services, "database", tcp_proxy)
    async with api_client(app_settings) as client:
        assert (await client.get(URL, headers=alice.headers)).status_code == 200  # pooled now

        getattr(proxy, failure)()
        response, elapsed = await timed(
            client.get(URL, headers=alice.headers), f"database {failure}"
        )

        assert response.status_code == 503, response.text
        assert response.json()["error"] == {
            "code": "database_unavailable",
            "message": "The database is unavailable; try again later.",
            "details": None,
        }
        assert elapsed < QUICK_SECONDS

        proxy.restore()
        recovered = await client.get(URL, headers=alice.headers)
        assert recovered.status_code == 200, recovered.text


@pytest.mark.parametrize("failure", ["cut", "blackhole"])
async def test_database_loss_during_an_upload_leaves_no_original_behind(
    failure: str,
    settings: Settings,
    services: WorkerServices,
    alice: Account,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
    jobs_table: JobsTable,
) -> None:
    """The token is checked, then the database goes: the original already in S3 is removed."""
    proxy, app_settings = proxy_dependency(settings, services, "database", tcp_proxy)
    async with api_client(app_settings) as client:
        assert (await client.get(URL, headers=alice.headers)).status_code == 200

        # Between the user look-up and the insert: fail the service as the upload reaches S3.
        from app.services.s3 import S3Storage

        original_upload = S3Storage.upload

        async def upload_then_fail(self: S3Storage, *args: object, **kwargs: object) -> None:
            await original_upload(self, *args, **kwargs)  # type: ignore[arg-type]
            getattr(proxy, failure)()

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(S3Storage, "upload", upload_then_fail)
            response, elapsed = await timed(
                client.post(URL, files=upload(), headers=alice.headers),
                f"database {failure} during upload",
            )

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert elapsed < QUICK_SECONDS
    assert jobs_table.count() == 0
    assert object_keys(settings) == set()
    assert queued_messages(settings) == []


async def test_storage_failure_at_upload_answers_503_and_leaves_no_job(
    settings: Settings,
    services: WorkerServices,
    alice: Account,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
    jobs_table: JobsTable,
) -> None:
    proxy, app_settings = proxy_dependency(settings, services, "storage", tcp_proxy)
    async with api_client(app_settings) as client:
        proxy.cut()
        response, elapsed = await timed(
            client.post(URL, files=upload(), headers=alice.headers), "storage cut at upload"
        )

        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert elapsed < QUICK_SECONDS
        assert jobs_table.count() == 0
        assert queued_messages(settings) == []

        proxy.restore()
        again = await client.post(URL, files=upload(), headers=alice.headers)
        assert again.status_code == 202, again.text
        assert jobs_table.count() == 1


async def test_paused_storage_at_upload_answers_503_within_the_operation_timeout(
    settings: Settings,
    services: WorkerServices,
    alice: Account,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
    jobs_table: JobsTable,
) -> None:
    """S3 accepts the connection and never answers (a frozen server): botocore alone would wait
    its read timeout on each of its attempts (about two minutes); S3_OPERATION_TIMEOUT_SECONDS
    bounds the whole operation."""
    proxy, app_settings = proxy_dependency(
        settings.model_copy(update={"s3_operation_timeout_seconds": 2}),
        services,
        "storage",
        tcp_proxy,
    )
    async with api_client(app_settings) as client:
        proxy.blackhole()
        response, elapsed = await timed(
            client.post(URL, files=upload(), headers=alice.headers), "storage paused at upload"
        )
        proxy.restore()

    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert elapsed < QUICK_SECONDS
    assert jobs_table.count() == 0
    assert queued_messages(settings) == []


async def test_storage_failure_while_deleting_keeps_the_job(
    settings: Settings,
    services: WorkerServices,
    alice: Account,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
    jobs_table: JobsTable,
) -> None:
    """The row is deleted only if its objects are: otherwise nothing would name them any more."""
    proxy, app_settings = proxy_dependency(settings, services, "storage", tcp_proxy)
    async with api_client(app_settings) as client:
        job_id = (await client.post(URL, files=upload(), headers=alice.headers)).json()["id"]
        jobs_table.connection.execute(
            "UPDATE restoration_jobs SET status = 'FAILED', finished_at = now() WHERE id = %s",
            [job_id],
        )

        with proxy.down():
            with anyio.fail_after(HANG_SECONDS):
                response = await client.delete(f"{URL}/{job_id}", headers=alice.headers)

        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert jobs_table.row(job_id) is not None
        assert len(object_keys(settings)) == 1

        assert (await client.delete(f"{URL}/{job_id}", headers=alice.headers)).status_code == 204
        assert jobs_table.row(job_id) is None
        assert object_keys(settings) == set()


async def test_broker_down_at_enqueue_fails_the_job_and_answers_503(
    settings: Settings,
    services: WorkerServices,
    alice: Account,
    api_client: ApiClient,
    tcp_proxy: StartProxy,
    jobs_table: JobsTable,
) -> None:
    proxy, app_settings = proxy_dependency(settings, services, "broker", tcp_proxy)
    async with api_client(app_settings) as client:
        proxy.cut()
        response, elapsed = await timed(
            client.post(URL, files=upload(), headers=alice.headers), "broker cut at enqueue"
        )

        assert response.status_code == 503, response.text
        error = response.json()["error"]
        assert error["code"] == "queue_unavailable"
        assert elapsed < QUICK_SECONDS
        job_id = error["details"]["job_id"]
        row = jobs_table.one(job_id)
        assert row["status"] == "FAILED"
        assert row["error_message"].startswith(
            "Could not queue the job: The broker did not accept the task:"
        )
        assert row["finished_at"] is not None
        # The client can see why, and retry with a new upload once the broker is back.
        shown = (await client.get(f"{URL}/{job_id}", headers=alice.headers)).json()
        assert shown["status"] == "FAILED"
        assert shown["error_message"] == row["error_message"]
        assert queued_messages(settings) == []

        proxy.restore()
        again = await client.post(URL, files=upload(), headers=alice.headers)
        assert again.status_code == 202, again.text
        assert [m["headers"]["id"] for m in queued_messages(settings)] == [again.json()["id"]]
