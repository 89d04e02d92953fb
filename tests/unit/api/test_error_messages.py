"""Every error path that carries a message says it for people: no object reprs, tracebacks or
module paths (fixtures.leaks), whatever the cause was inside."""

import uuid
from typing import Any

import httpx
import pytest

from app.services.s3 import StorageTransientError
from fixtures import images
from fixtures.accounts import Account
from fixtures.leaks import leaks
from tests.unit.helpers import RecordingTaskQueue

pytestmark = pytest.mark.anyio

URL = "/api/v1/restorations"
JOB = f"{URL}/{uuid.uuid4()}"
MULTIPART = "multipart/form-data; boundary=b"


def upload(data: bytes) -> dict[str, Any]:
    return {"files": {"file": ("photo.bin", data, "application/octet-stream")}}


# (id, method, path, request kwargs, authenticated, expected status, expected code)
STATELESS = [
    ("no-token", "GET", URL, {}, False, 401, "unauthorized"),
    ("no-route", "GET", "/api/v1/nothing-here", {}, True, 404, "not_found"),
    ("wrong-method", "PUT", URL, {}, True, 405, "method_not_allowed"),
    ("unknown-job", "GET", JOB, {}, True, 404, "job_not_found"),
    ("job-id-not-uuid", "GET", f"{URL}/not-a-uuid", {}, True, 422, "validation_error"),
    (
        "offset-past-bigint",
        "GET",
        URL,
        {"params": {"offset": 2**63}},
        True,
        422,
        "validation_error",
    ),
    ("limit-text", "GET", URL, {"params": {"limit": "many"}}, True, 422, "validation_error"),
    (
        "empty-idempotency-key",
        "POST",
        URL,
        {"headers": {"Idempotency-Key": ""}, **upload(images.make_image())},
        True,
        422,
        "validation_error",
    ),
    ("not-multipart", "POST", URL, {"content": b"raw"}, True, 422, "validation_error"),
    (
        "malformed-multipart",
        "POST",
        URL,
        {"content": b"--b\r\ngarbage", "headers": {"Content-Type": MULTIPART}},
        True,
        422,
        "validation_error",
    ),
    ("no-file-part", "POST", URL, {"files": {"note": (None, "x")}}, True, 422, "validation_error"),
    ("empty-file", "POST", URL, upload(b""), True, 422, "invalid_image"),
    ("gif", "POST", URL, upload(images.gif_image()), True, 415, "unsupported_media_type"),
    # The row: Pillow said `cannot identify image file <tempfile.SpooledTemporaryFile ...>`.
    (
        "png-header-then-garbage",
        "POST",
        URL,
        upload(images.png_header_then_garbage()),
        True,
        422,
        "invalid_image",
    ),
    ("corrupt-png", "POST", URL, upload(images.corrupt_png()), True, 422, "invalid_image"),
    (
        "truncated-jpeg",
        "POST",
        URL,
        upload(images.truncated(images.make_image("JPEG", (300, 200)))),
        True,
        422,
        "invalid_image",
    ),
    (
        "truncated-webp",
        "POST",
        URL,
        upload(images.truncated(images.make_image("WEBP", (300, 200)))),
        True,
        422,
        "invalid_image",
    ),
    (
        "decompression-bomb",
        "POST",
        URL,
        upload(images.png_bomb(20_000, 20_000)),
        True,
        422,
        "image_too_large",
    ),
    ("too-large", "POST", URL, upload(b"\xff\xd8\xff" + b"\x00" * 300_000), True, 413, None),
]


def assert_readable(response: httpx.Response, status: int, code: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if code is not None:
        assert error["code"] == code
    assert error["message"]
    assert leaks(response.json()) == [], response.text
    assert leaks(dict(response.headers)) == []


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "authenticated", "status", "code"),
    [pytest.param(*row[1:], id=row[0]) for row in STATELESS],
)
async def test_error_messages_are_for_people(
    client: httpx.AsyncClient,
    alice: Account,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    authenticated: bool,
    status: int,
    code: str | None,
) -> None:
    headers = {**(alice.headers if authenticated else {}), **kwargs.pop("headers", {})}
    if "content" in kwargs and "Content-Type" not in headers:
        headers["Content-Type"] = "application/octet-stream"

    response = await client.request(method, path, headers=headers, **kwargs)

    assert_readable(response, status, code)


async def test_pending_job_result_message(client: httpx.AsyncClient, alice: Account) -> None:
    created = await client.post(URL, headers=alice.headers, **upload(images.make_image()))

    response = await client.get(f"{URL}/{created.json()['id']}/result", headers=alice.headers)

    assert_readable(response, 409, "job_not_completed")


async def test_storage_failure_message(
    client: httpx.AsyncClient, alice: Account, storage, monkeypatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise StorageTransientError(f"S3 upload failed: {object()!r}")

    monkeypatch.setattr(storage, "upload", broken)
    response = await client.post(URL, headers=alice.headers, **upload(images.make_image()))

    assert_readable(response, 503, "storage_unavailable")


async def test_queue_failure_message(
    client: httpx.AsyncClient, alice: Account, queue_down: RecordingTaskQueue
) -> None:
    response = await client.post(URL, headers=alice.headers, **upload(images.make_image()))

    assert_readable(response, 503, "queue_unavailable")


async def test_unexpected_error_message(
    client: httpx.AsyncClient, alice: Account, storage, monkeypatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"boom in {object()!r}")

    monkeypatch.setattr(storage, "upload", broken)
    response = await client.post(URL, headers=alice.headers, **upload(images.make_image()))

    assert_readable(response, 500, "internal_error")
