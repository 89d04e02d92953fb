"""Object storage on S3 (boto3), with errors typed as transient or permanent.

Keys are built only from ids, never from user-supplied filenames. boto3 blocks, so every
operation runs in a worker thread and the event loop stays free.
"""

import uuid
from functools import partial
from typing import IO, Any, TypeVar

import anyio.to_thread
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from app.core.config import Settings

T = TypeVar("T")

# Answers that may succeed when tried again.
TRANSIENT_CODES = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "Throttling",
        "503",
        "500",
    }
)
NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class StorageError(Exception):
    transient: bool = False


class StorageTransientError(StorageError):
    """Unreachable, timed out or overloaded: try again later."""

    transient = True


class StoragePermanentError(StorageError):
    """Rejected (credentials, permissions, missing bucket): retrying will not help."""


class ObjectNotFound(StoragePermanentError):
    pass


def original_key(user_id: uuid.UUID, job_id: uuid.UUID, extension: str) -> str:
    return f"originals/{user_id}/{job_id}.{extension}"


def result_key(user_id: uuid.UUID, job_id: uuid.UUID) -> str:
    return f"results/{user_id}/{job_id}.png"


def classify(error: Exception, *, operation: str, key: str | None = None) -> StorageError:
    """Translate a boto3/botocore failure into a typed storage error."""
    where = f"{operation} {key}" if key else operation
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"S3 {where} failed: {code or status}"
        if code in NOT_FOUND_CODES:
            return ObjectNotFound(message)
        if code in TRANSIENT_CODES or status >= 500:
            return StorageTransientError(message)
        return StoragePermanentError(message)
    if isinstance(error, ConnectionError | HTTPClientError):
        return StorageTransientError(f"S3 {where} failed: {error}")
    return StoragePermanentError(f"S3 {where} failed: {error}")


def _client(settings: Settings, endpoint_url: str | None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=(
            settings.s3_secret_access_key.get_secret_value()
            if settings.s3_secret_access_key
            else None
        ),
        config=Config(
            connect_timeout=settings.s3_connect_timeout_seconds,
            read_timeout=settings.s3_read_timeout_seconds,
            retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
            # Path-style addressing works with every S3-compatible server.
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        ),
    )


class S3Storage:
    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.bucket = settings.s3_bucket
        self._transfer = TransferConfig(
            multipart_threshold=settings.s3_multipart_threshold_bytes,
            multipart_chunksize=settings.s3_multipart_threshold_bytes,
        )
        self.client = client or _client(settings, settings.s3_endpoint_url)
        # Presigned URLs carry the host in their signature: sign them for the public endpoint.
        public = settings.s3_public_endpoint_url
        self._presign_client = (
            _client(settings, public) if public and public != settings.s3_endpoint_url else None
        )

    async def _call(self, operation: str, key: str | None, function: partial[T]) -> T:
        try:
            return await anyio.to_thread.run_sync(function)
        except (BotoCoreError, ClientError) as error:
            raise classify(error, operation=operation, key=key) from error

    async def upload(self, key: str, fileobj: IO[bytes], *, content_type: str) -> None:
        """Streams the file; multipart above the configured threshold."""
        function = partial(
            self.client.upload_fileobj,
            fileobj,
            self.bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=self._transfer,
        )
        await self._call("upload", key, function)

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        function = partial(
            self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
        )
        await self._call("put", key, function)

    async def download(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body: bytes = response["Body"].read()
            return body

        return await self._call("download", key, partial(read))

    async def presign_download(self, key: str, *, expires_in: int) -> str:
        function = partial(
            (self._presign_client or self.client).generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=expires_in,
        )
        url: str = await self._call("presign", key, function)
        return url

    async def delete(self, *keys: str) -> None:
        """Deleting a key that is already gone is not an error (S3 semantics)."""
        present = [key for key in keys if key]
        if not present:
            return

        def remove() -> None:
            response = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": key} for key in present]}
            )
            if response.get("Errors"):
                first = response["Errors"][0]
                code, message = first.get("Code", ""), first.get("Message", "")
                raise ClientError({"Error": {"Code": code, "Message": message}}, "DeleteObjects")

        await self._call("delete", ", ".join(present), partial(remove))

    async def check(self) -> None:
        """Readiness: the bucket exists and our credentials reach it."""
        await self._call("head_bucket", None, partial(self.client.head_bucket, Bucket=self.bucket))

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing (for local stacks and tests; production buckets exist)."""
        try:
            await self.check()
        except StoragePermanentError:
            await self._call(
                "create_bucket", None, partial(self.client.create_bucket, Bucket=self.bucket)
            )
