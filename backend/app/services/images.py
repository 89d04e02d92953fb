"""Recognising uploaded images from their bytes: a signature check, then Pillow.

The filename and Content-Type a client sends are never trusted. The pixel limit is checked from the
header before any pixel is decoded, so a decompression bomb costs nothing.
"""

import enum
import warnings
from dataclasses import dataclass
from typing import IO

from PIL import Image, UnidentifiedImageError

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType


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

    @property
    def pixels(self) -> int:
        return self.width * self.height


def inspect_image(fileobj: IO[bytes], *, max_pixels: int) -> ImageInfo:
    """Validate an uploaded image fully and return its format and size.

    Raises UnsupportedMediaType (not an accepted format), InvalidImage (empty, truncated, corrupt)
    or ImageTooLarge (more pixels than allowed). Blocking: run it in a worker thread.
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
                # Decoding every pixel is the only way to catch truncated or corrupt data.
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
    finally:
        fileobj.seek(0)
    return ImageInfo(format=image_format, width=width, height=height)
