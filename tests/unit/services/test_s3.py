"""S3 storage: keys from ids only, streamed and multipart uploads, presigning, typed errors."""

import io
import uuid
from urllib.parse import parse_qs, urlsplit

import anyio
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from pydantic import SecretStr

from app.core.config import Settings
from app.services import s3
from app.services.s3 import S3Storage

pytestmark = pytest.mark.anyio


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


def test_keys_are_built_from_ids_only() -> None:
    user, job = uuid.uuid4(), uuid.uuid4()

    assert s3.original_key(user, job, "jpg") == f"originals/{user}/{job}.jpg"
    assert s3.result_key(user, job) == f"results/{user}/{job}.png"


async def test_upload_download_and_delete_round_trip(
    storage: S3Storage, s3_client, settings
) -> None:
    data = b"\x89PNG" + bytes(range(256)) * 10

    await storage.upload("originals/u/j.png", io.BytesIO(data), content_type="image/png")
    head = s3_client.head_object(Bucket=settings.s3_bucket, Key="originals/u/j.png")
    downloaded = await storage.download("originals/u/j.png")
    await storage.delete("originals/u/j.png", "", "results/never-existed.png")

    assert downloaded == data
    assert head["ContentType"] == "image/png"
    assert s3_client.list_objects_v2(Bucket=settings.s3_bucket)["KeyCount"] == 0


async def test_large_uploads_go_multipart(settings: Settings, moto_s3_client, s3_client) -> None:
    settings.s3_multipart_threshold_bytes = 5 * 1024 * 1024  # S3's smallest part size
    storage = S3Storage(settings, client=moto_s3_client)
    data = bytes(range(256)) * (12 * 1024 * 1024 // 256)

    await storage.upload("originals/u/big.tiff", io.BytesIO(data), content_type="image/tiff")

    head = s3_client.head_object(Bucket=settings.s3_bucket, Key="originals/u/big.tiff")
    assert head["ContentLength"] == len(data)
    # Multipart uploads get an ETag of the form "<md5>-<number of parts>".
    assert head["ETag"].strip('"').endswith("-3")
    assert await storage.download("originals/u/big.tiff") == data


async def test_a_failed_part_aborts_the_multipart_upload(
    settings: Settings, moto_s3_client, s3_client, monkeypatch
) -> None:
    settings.s3_multipart_threshold_bytes = 5 * 1024 * 1024
    storage = S3Storage(settings, client=moto_s3_client)
    real_upload_part = moto_s3_client.upload_part
    calls = 0

    def failing_second_part(**kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ClientError({"Error": {"Code": "SlowDown"}}, "UploadPart")
        return real_upload_part(**kwargs)

    monkeypatch.setattr(moto_s3_client, "upload_part", failing_second_part)
    data = bytes(12 * 1024 * 1024)

    with pytest.raises(s3.StorageTransientError):
        await storage.upload("originals/u/failed.tiff", io.BytesIO(data), content_type="image/tiff")

    assert s3_client.list_multipart_uploads(Bucket=settings.s3_bucket).get("Uploads", []) == []
    assert s3_client.list_objects_v2(Bucket=settings.s3_bucket)["KeyCount"] == 0


def test_a_file_slice_reads_its_range_only() -> None:
    stream = s3.FileSlice(io.BytesIO(b"0123456789"), 3, 4)

    assert (len(stream), stream.read(2), stream.read(), stream.read()) == (4, b"34", b"56", b"")
    stream.seek(-1, io.SEEK_END)
    assert stream.read(10) == b"6"


async def test_put_bytes_then_presign(storage: S3Storage, settings) -> None:
    await storage.put_bytes("results/u/j.png", b"result", content_type="image/png")

    url = urlsplit(await storage.presign_download("results/u/j.png", expires_in=60))

    assert url.path == f"/{settings.s3_bucket}/results/u/j.png"  # path-style addressing
    query = parse_qs(url.query)
    assert query["X-Amz-Expires"] == ["60"]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]


async def test_presigned_urls_name_the_public_endpoint_when_set(settings: Settings) -> None:
    """The signature covers the host: the URL must be signed for the host clients will use."""
    settings.s3_endpoint_url = "http://minio:9000"
    settings.s3_public_endpoint_url = "http://localhost:9000"
    settings.s3_access_key_id = "key"
    settings.s3_secret_access_key = SecretStr("secret")

    storage = S3Storage(settings)
    url = urlsplit(await storage.presign_download("results/u/j.png", expires_in=60))

    assert (url.scheme, url.netloc) == ("http", "localhost:9000")
    assert parse_qs(url.query)["X-Amz-SignedHeaders"] == ["host"]
    assert storage.client.meta.endpoint_url == "http://minio:9000"  # everything else goes inside


async def test_missing_object_is_a_permanent_not_found(storage: S3Storage) -> None:
    with pytest.raises(s3.ObjectNotFound) as caught:
        await storage.download("originals/nope.png")

    assert caught.value.transient is False
    assert "originals/nope.png" in str(caught.value)


async def test_check_and_ensure_bucket(settings: Settings, moto_s3_client) -> None:
    settings.s3_bucket = "made-on-demand"
    storage = S3Storage(settings, client=moto_s3_client)

    with pytest.raises(s3.StoragePermanentError):
        await storage.check()
    await storage.ensure_bucket()
    await storage.check()
    await storage.ensure_bucket()  # idempotent

    moto_s3_client.delete_bucket(Bucket="made-on-demand")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (EndpointConnectionError(endpoint_url="http://s3.invalid"), s3.StorageTransientError),
        (ConnectTimeoutError(endpoint_url="http://s3.invalid"), s3.StorageTransientError),
        (ReadTimeoutError(endpoint_url="http://s3.invalid"), s3.StorageTransientError),
        (client_error("SlowDown", 503), s3.StorageTransientError),
        (client_error("InternalError", 500), s3.StorageTransientError),
        (client_error("WhateverNew", 502), s3.StorageTransientError),
        (client_error("NoSuchKey", 404), s3.ObjectNotFound),
        (client_error("AccessDenied", 403), s3.StoragePermanentError),
        (client_error("NoSuchBucket", 404), s3.StoragePermanentError),
        (client_error("InvalidAccessKeyId", 403), s3.StoragePermanentError),
        (NoCredentialsError(), s3.StoragePermanentError),
    ],
)
def test_errors_are_typed_transient_or_permanent(
    error: Exception, expected: type[s3.StorageError]
) -> None:
    typed = s3.classify(error, operation="download", key="originals/k.png")

    assert type(typed) is expected
    assert typed.transient is (expected is s3.StorageTransientError)
    assert "download originals/k.png" in str(typed)


async def test_unreachable_endpoint_raises_transient_error() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint_url="http://127.0.0.1:1",
        s3_access_key_id="x",
        s3_secret_access_key="y",  # type: ignore[arg-type]
        s3_max_attempts=1,
        s3_connect_timeout_seconds=0.5,
    )
    storage = S3Storage(settings)

    with pytest.raises(s3.StorageTransientError):
        await storage.put_bytes("k", b"x", content_type="image/png")


async def test_failed_batch_delete_is_reported(storage: S3Storage, monkeypatch) -> None:
    def partial_failure(**kwargs):
        return {"Errors": [{"Key": "k", "Code": "AccessDenied", "Message": "denied"}]}

    monkeypatch.setattr(storage.client, "delete_objects", partial_failure)

    with pytest.raises(s3.StoragePermanentError, match="AccessDenied"):
        await storage.delete("k")


async def test_an_operation_past_its_timeout_is_transient(
    settings: Settings, moto_s3_client
) -> None:
    """A frozen S3 leaves boto3 waiting in its thread for minutes; the caller waits only so long."""
    import threading

    settings.s3_operation_timeout_seconds = 0.1
    storage = S3Storage(settings, client=moto_s3_client)
    frozen = threading.Event()

    def stuck(**_: object) -> None:
        frozen.wait(5)  # bounded, so that without the timeout the test fails, not hangs

    moto_s3_client.meta.events.register_first("before-call.s3.HeadBucket", stuck)
    try:
        with (
            anyio.fail_after(10),
            pytest.raises(
                s3.StorageTransientError, match=r"head_bucket failed: no answer within 0\.1 s"
            ),
        ):
            await storage.check()
        still_blocked = not frozen.is_set()
    finally:
        frozen.set()
        moto_s3_client.meta.events.unregister("before-call.s3.HeadBucket", stuck)
    assert still_blocked
