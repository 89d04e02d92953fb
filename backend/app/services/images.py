"""Recognising uploaded images from their bytes: a signature check, then Pillow.

The filename and Content-Type a client sends are never trusted. The pixel limit is checked from the
header before any pixel is decoded, so a decompression bomb costs nothing. JPEGs are decoded at an
eighth of their size (`draft`): every byte of the scan is still read, so truncation and corruption
are caught, without holding the full bitmap.

Where a format marks its end (JPEG's EOI, PNG's IEND, WebP's RIFF length), `image_end` finds it, so
that bytes appended after the image (a ZIP glued to a JPEG, say) can be cut off before storage.
"""

import enum
import struct
import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError

from app.core.errors import ImageTooLarge, ImageTooSmall, InvalidImage, UnsupportedMediaType


class ImageFormat(enum.Enum):
    # (Pillow's format name, content type, file extension)
    JPEG = ("JPEG", "image/jpeg", "jpg")
    PNG = ("PNG", "image/png", "png")
    WEBP = ("WEBP", "image/webp", "webp")
    TIFF = ("TIFF", "image/tiff", "tiff")

    @property
    def pillow_name(self) -> str:
        return self.value[0]

    @property
    def content_type(self) -> str:
        return self.value[1]

    @property
    def extension(self) -> str:
        return self.value[2]


SIGNATURE_BYTES = 12


def sniff_format(head: bytes) -> ImageFormat | None:
    """The format announced by the file's first bytes, if it is one we accept."""
    if head.startswith(b"\xff\xd8\xff"):
        return ImageFormat.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ImageFormat.PNG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return ImageFormat.WEBP
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return ImageFormat.TIFF
    return None


@dataclass(frozen=True)
class ImageInfo:
    format: ImageFormat
    width: int
    height: int
    # Where the image's own bytes end; anything after it is trailing data. None: the format has
    # no end marker (TIFF), the whole file is the image.
    end: int | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height


def inspect_image(fileobj: IO[bytes], *, max_pixels: int, min_side: int = 1) -> ImageInfo:
    """Validate an uploaded image fully and return its format, size and where it ends.

    Raises UnsupportedMediaType (not an accepted format), InvalidImage (empty, truncated, corrupt),
    ImageTooLarge (more pixels than allowed) or ImageTooSmall (a side under `min_side`). Blocking:
    run it in a worker thread.
    """
    fileobj.seek(0)
    head = fileobj.read(SIGNATURE_BYTES)
    if not head:
        raise InvalidImage("The uploaded file is empty.")
    image_format = sniff_format(head)
    if image_format is None:
        raise UnsupportedMediaType()

    fileobj.seek(0)
    try:
        with warnings.catch_warnings():
            # We enforce our own, lower limit below; Pillow's bomb warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(fileobj) as image:
                if image.format != image_format.pillow_name:
                    raise InvalidImage(
                        f"The file starts like {image_format.pillow_name} but is {image.format}."
                    )
                width, height = image.size
                if width <= 0 or height <= 0:
                    raise InvalidImage("The image has no pixels.")
                if width * height > max_pixels:
                    raise ImageTooLarge(
                        f"The image has {width * height} pixels; at most {max_pixels} are allowed.",
                        details={"width": width, "height": height, "max_pixels": max_pixels},
                    )
                if width < min_side or height < min_side:
                    raise ImageTooSmall(
                        f"The image is {width}x{height} pixels; each side must be at least "
                        f"{min_side} pixels.",
                        details={"width": width, "height": height, "min_side_pixels": min_side},
                    )
                # Decoding every pixel is the only way to catch truncated or corrupt data; a
                # JPEG decodes at 1/8 scale, which still reads its whole scan.
                if image_format is ImageFormat.JPEG:
                    image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))
                image.load()
    # Pillow's own messages name internal objects (`<tempfile.SpooledTemporaryFile object at ...>`)
    # and decoder states: the client gets a sentence written for people; the cause stays chained.
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(
            f"The image has more pixels than allowed (at most {max_pixels})."
        ) from error
    except UnidentifiedImageError as error:
        raise InvalidImage(
            f"The file is not a readable {image_format.pillow_name} image."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImage(
            f"The {image_format.pillow_name} image is truncated or corrupt and cannot be decoded."
        ) from error
    try:
        end = image_end(fileobj, image_format)
    finally:
        fileobj.seek(0)
    return ImageInfo(format=image_format, width=width, height=height, end=end)


class _Reader:
    """Forward reads over a file in blocks, with the absolute offset of every byte."""

    BLOCK = 64 * 1024

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.file = fileobj
        self.file.seek(0)
        self.buffer = b""
        self.start = 0  # file offset of buffer[0]
        self.pos = 0  # file offset of the next byte to read

    def _fill(self, need: int) -> bool:
        """Make `need` bytes from `pos` available; False at the end of the file."""
        offset = self.pos - self.start
        while len(self.buffer) - offset < need:
            block = self.file.read(self.BLOCK)
            if not block:
                return False
            self.buffer = self.buffer[offset:] + block
            self.start, offset = self.pos, 0
        return True

    def read(self, n: int) -> bytes:
        if not self._fill(n):
            raise InvalidImage("The image is truncated.")
        offset = self.pos - self.start
        self.pos += n
        return self.buffer[offset : offset + n]

    def skip(self, n: int) -> None:
        self.pos += n
        if self.pos - self.start > len(self.buffer):
            self.file.seek(self.pos)
            self.buffer, self.start = b"", self.pos

    def find(self, byte: bytes) -> None:
        """Move `pos` to the next occurrence of `byte`."""
        while True:
            if not self._fill(1):
                raise InvalidImage("The image is truncated.")
            offset = self.pos - self.start
            found = self.buffer.find(byte, offset)
            if found >= 0:
                self.pos = self.start + found
                return
            self.pos = self.start + len(self.buffer)


def image_end(fileobj: IO[bytes], image_format: ImageFormat) -> int | None:
    """The offset just past the image's last byte, from its structure alone (blocking)."""
    if image_format is ImageFormat.JPEG:
        return _jpeg_end(_Reader(fileobj))
    if image_format is ImageFormat.PNG:
        return _png_end(_Reader(fileobj))
    if image_format is ImageFormat.WEBP:
        fileobj.seek(4)
        riff_size: int = struct.unpack("<I", fileobj.read(4))[0]
        return 8 + riff_size + (riff_size & 1)  # RIFF pads odd chunks with one byte
    return None


def _jpeg_end(reader: _Reader) -> int:
    """Walk the markers (and the entropy-coded scans between them) to EOI.

    An EOI inside a segment (an EXIF thumbnail ends with one) is skipped with its segment.
    """
    reader.skip(2)  # SOI
    marker: bytes | None = None
    while True:
        if marker is None:
            if reader.read(1) != b"\xff":
                raise InvalidImage("The JPEG has data where a marker should be.")
            marker = reader.read(1)
        while marker == b"\xff":  # fill bytes
            marker = reader.read(1)
        if marker == b"\xd9":  # EOI
            return reader.pos
        current, marker = marker, None
        if current == b"\x01" or b"\xd0" <= current <= b"\xd7":  # no length: TEM, RSTn
            continue
        (length,) = struct.unpack(">H", reader.read(2))
        reader.skip(length - 2)
        if current == b"\xda":  # SOS: entropy-coded data up to the next real marker
            while marker is None:
                reader.find(b"\xff")
                reader.skip(1)
                following = reader.read(1)
                while following == b"\xff":
                    following = reader.read(1)
                # 0xFF00 is a stuffed data byte, 0xFFD0-D7 a restart marker inside the scan.
                if following != b"\x00" and not b"\xd0" <= following <= b"\xd7":
                    marker = following


def _png_end(reader: _Reader) -> int:
    """Walk the chunks to IEND."""
    reader.skip(8)  # signature
    while True:
        length, kind = struct.unpack(">I4s", reader.read(8))
        reader.skip(length + 4)  # data and CRC
        if kind == b"IEND":
            return reader.pos
