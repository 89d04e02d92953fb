"""Object storage on S3 (boto3), with errors typed as transient or permanent.

Keys are built only from ids, never from user-supplied filenames. boto3 blocks, so every
operation runs in a worker thread and the event loop stays free.
"""

import io
import logging
import os
import uuid
from functools import partial
from typing import IO, Any, TypeVar

import anyio.to_thread
import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

from app.core import timing
from app.core.config import Settings

T = TypeVar("T")

logger = logging.getLogger(__name__)

# S3 refuses parts under 5 MiB, except the last.
MIN_PART_BYTES = 5 * 1024 * 1024

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


class FileSlice(io.RawIOBase):
    """`length` bytes of `fileobj` from `start`, as a seekable stream of its own.

    botocore reads a request body in small blocks (and seeks back to hash or resend it), so a part
    sent from a slice never sits in memory whole, as it would with s3transfer's readahead.
    """

    def __init__(self, fileobj: IO[bytes], start: int, length: int) -> None:
        super().__init__()
        self._file, self._start, self._length = fileobj, start, length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = min(max(base + offset, 0), self._length)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        size = left if size is None or size < 0 else min(size, left)
        if size <= 0:
            return b""
        self._file.seek(self._start + self._pos)
        data = self._file.read(size)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def __len__(self) -> int:
        return self._length


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
        self._part_bytes = max(settings.s3_multipart_threshold_bytes, MIN_PART_BYTES)
        self.operation_timeout = settings.s3_operation_timeout_seconds
        self.client = client or _client(settings, settings.s3_endpoint_url)
        # Presigned URLs carry the host in their signature: sign them for the public endpoint.
        public = settings.s3_public_endpoint_url
        self._presign_client = (
            _client(settings, public) if public and public != settings.s3_endpoint_url else None
        )

    async def _call(self, operation: str, key: str | None, function: partial[T]) -> T:
        """Run one boto3 call in a thread, within the operation timeout.

        botocore's own timeouts apply per attempt and per socket read, so a frozen server costs
        attempts x (connect + read) timeouts: minutes. Past `operation_timeout` the thread is
        abandoned (it ends when botocore gives up) and the operation fails as transient.
        """
        try:
            with anyio.fail_after(self.operation_timeout):
                return await anyio.to_thread.run_sync(function, abandon_on_cancel=True)
        except TimeoutError as error:
            where = f"{operation} {key}" if key else operation
            raise StorageTransientError(
                f"S3 {where} failed: no answer within {self.operation_timeout:g} s"
            ) from error
        except (BotoCoreError, ClientError) as error:
            raise classify(error, operation=operation, key=key) from error

    async def upload(self, key: str, fileobj: IO[bytes], *, content_type: str) -> None:
        """Streams a seekable file from its start: one PUT up to the multipart threshold, parts of
        that size above it, one part at a time. Memory stays at botocore's read blocks whatever
        the file's size."""
        await self._call("upload", key, partial(self._upload, key, fileobj, content_type))

    def _upload(self, key: str, fileobj: IO[bytes], content_type: str) -> None:
        size = fileobj.seek(0, os.SEEK_END)
        if size <= self._part_bytes:
            self.client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=FileSlice(fileobj, 0, size),
                ContentLength=size,
                ContentType=content_type,
            )
            return
        upload_id = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type
        )["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, self._part_bytes), start=1):
                length = min(self._part_bytes, size - start)
                answer = self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=FileSlice(fileobj, start, length),
                    ContentLength=length,
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # Parts of an unfinished upload are kept (and billed) until aborted.
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (BotoCoreError, ClientError) as error:
                logger.warning("could not abort multipart upload of %s: %s", key, error)
            raise

    async def put_bytes(self, key: str, data: bytes, *, content_type: str) -> None:
        function = partial(
            self.client.put_object, Bucket=self.bucket, Key=key, Body=data, ContentType=content_type
        )
        with timing.stage(timing.S3_UPLOAD):
            await self._call("put", key, function)

    async def download(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body: bytes = response["Body"].read()
            return body

        with timing.stage(timing.S3_DOWNLOAD):
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
