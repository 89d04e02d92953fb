"""Receiving one file from a multipart body as it streams in, under a size limit.

Starlette's form parser reads the whole body before the endpoint runs; this reads chunk by chunk and
stops at the first byte over a limit, so an oversized upload is refused without being read. The
limits hold for the raw body, not only the file: its bytes (framing, part headers and other parts
included), its number of parts and the size of each part's headers. A body of a million empty parts
is refused after the first few, instead of being parsed to its end. Parts spill from memory to a
temporary file past one MiB.
"""

import hashlib
from dataclasses import dataclass
from tempfile import SpooledTemporaryFile

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from app.core.errors import PartHeadersTooLarge, PayloadTooLarge, RequestInvalid, TooManyParts

SPOOL_MEMORY_BYTES = 1024 * 1024
# Room for the multipart framing and small form fields around the file itself.
ENVELOPE_BYTES = 64 * 1024
# The upload needs one part; a few more leave room for clients that send a field or two beside it.
MAX_PARTS = 16
# All header lines of one part together; a browser's are a few hundred bytes. Below the one-line
# limit of recent python-multipart releases, so this clear error comes first.
MAX_PART_HEADER_BYTES = 4 * 1024


@dataclass
class ReceivedFile:
    file: SpooledTemporaryFile[bytes]
    size: int
    filename: str | None
    # SHA-256 (hex) of the file's bytes as sent, the request's fingerprint for Idempotency-Key.
    sha256: str

    def close(self) -> None:
        self.file.close()

    def strip_after(self, end: int | None) -> None:
        """Cut off whatever follows the image's own end (trailing data is stripped, not stored)."""
        if end is not None and end < self.size:
            self.file.truncate(end)
            self.size = end
        self.file.seek(0)


class _FilePartCollector:
    """Parser callbacks: keep the bytes of the first part named `field_name`, count the rest."""

    def __init__(self, field_name: str, max_bytes: int) -> None:
        self.field_name = field_name
        self.max_bytes = max_bytes
        # Owned by the caller once returned (ReceivedFile.close), closed here on failure.
        self.file: SpooledTemporaryFile[bytes] = SpooledTemporaryFile(  # noqa: SIM115
            max_size=SPOOL_MEMORY_BYTES
        )
        self.size = 0
        self.digest = hashlib.sha256()
        self.filename: str | None = None
        self.found = False
        self.other_bytes = 0
        self.parts = 0
        self._header_bytes = 0
        self._writing = False
        self._header_field = b""
        self._header_value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise TooManyParts(
                f"The body has more than {MAX_PARTS} parts.", details={"max_parts": MAX_PARTS}
            )
        self._disposition = b""
        self._header_bytes = 0
        self._writing = False

    def _count_header_bytes(self, length: int) -> None:
        self._header_bytes += length
        if self._header_bytes > MAX_PART_HEADER_BYTES:
            raise PartHeadersTooLarge(
                f"A part's headers are larger than {MAX_PART_HEADER_BYTES} bytes.",
                details={"max_part_header_bytes": MAX_PART_HEADER_BYTES},
            )

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_field = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != self.field_name:
            return
        if self.found:
            raise RequestInvalid(f"Send exactly one '{self.field_name}' part.")
        self.found = True
        self._writing = True
        filename = options.get(b"filename")
        self.filename = filename.decode("utf-8", "replace") if filename is not None else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        length = end - start
        if not self._writing:
            self.other_bytes += length
            if self.other_bytes > ENVELOPE_BYTES:
                raise PayloadTooLarge("The form fields besides the file are too large.")
            return
        self.size += length
        if self.size > self.max_bytes:
            raise PayloadTooLarge(
                f"The file is larger than {self.max_bytes} bytes.",
                details={"max_bytes": self.max_bytes},
            )
        self.file.write(data[start:end])
        self.digest.update(data[start:end])

    def _part_end(self) -> None:
        self._writing = False


async def receive_file(request: Request, *, field_name: str, max_bytes: int) -> ReceivedFile:
    """Stream the part `field_name` of a multipart/form-data body into a spooled file.

    Raises PayloadTooLarge as soon as the file passes `max_bytes` or the whole body passes it by more
    than ENVELOPE_BYTES (at once, when the declared Content-Length already does); TooManyParts and
    PartHeadersTooLarge past MAX_PARTS and MAX_PART_HEADER_BYTES; RequestInvalid when the body is
    not multipart or lacks the part.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise RequestInvalid(
            f"Send the image as multipart/form-data with a '{field_name}' part.",
            details=[{"loc": ["body", field_name], "msg": "multipart/form-data expected"}],
        )
    max_body_bytes = max_bytes + ENVELOPE_BYTES
    too_large = PayloadTooLarge(
        f"The request body is larger than {max_body_bytes} bytes.",
        details={"max_bytes": max_bytes, "max_body_bytes": max_body_bytes},
    )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise too_large

    collector = _FilePartCollector(field_name, max_bytes)
    parser = MultipartParser(boundary, collector.callbacks())  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            # Counted on the raw stream: chunked bodies declare no length, and the parser's
            # callbacks see neither the framing nor the part headers.
            received += len(chunk)
            if received > max_body_bytes:
                raise too_large
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as error:
        collector.file.close()
        # The parser's message names its internal state; the client gets a plain sentence.
        raise RequestInvalid(
            "The multipart/form-data body is malformed: check its boundary and part headers."
        ) from error
    except BaseException:
        collector.file.close()
        raise
    if not collector.found:
        collector.file.close()
        raise RequestInvalid(
            f"The multipart field '{field_name}' is required.",
            details=[{"loc": ["body", field_name], "msg": "field required"}],
        )
    collector.file.seek(0)
    return ReceivedFile(
        file=collector.file,
        size=collector.size,
        filename=collector.filename,
        sha256=collector.digest.hexdigest(),
    )
