"""Recognising images from their bytes alone."""

import io

import pytest

from app.core.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from app.services.images import ImageFormat, inspect_image, sniff_format
from fixtures import images


@pytest.mark.parametrize("fmt", list(ImageFormat))
def test_each_accepted_format_is_recognised(fmt: ImageFormat) -> None:
    data = images.make_image(fmt.pillow_name, (30, 20))

    info = inspect_image(io.BytesIO(data), max_pixels=10_000)

    assert (info.format, info.width, info.height, info.pixels) == (fmt, 30, 20, 600)
    assert sniff_format(data[:12]) is fmt


def test_big_endian_tiff_is_recognised() -> None:
    assert sniff_format(b"MM\x00*" + b"\x00" * 8) is ImageFormat.TIFF


@pytest.mark.parametrize("data", [images.gif_image(), b"BM" + b"\x00" * 40, b"<svg xmlns=...>"])
def test_other_formats_are_unsupported(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        inspect_image(io.BytesIO(data), max_pixels=10_000)


def test_signature_that_lies_about_the_format_is_invalid() -> None:
    # WebP's RIFF signature glued onto a PNG body.
    data = b"RIFF\x00\x00\x00\x00WEBP" + images.make_image("PNG")

    with pytest.raises(InvalidImage):
        inspect_image(io.BytesIO(data), max_pixels=10_000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        images.truncated(images.make_image("JPEG", (200, 200))),
        images.truncated(images.make_image("WEBP", (200, 200))),
        images.corrupt_png(),
        images.png_header_then_garbage(),
    ],
)
def test_empty_truncated_or_corrupt_images_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        inspect_image(io.BytesIO(data), max_pixels=100_000)


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageTooLarge) as caught:
        inspect_image(io.BytesIO(images.png_bomb(3000, 3000)), max_pixels=1_000_000)

    assert caught.value.details == {"width": 3000, "height": 3000, "max_pixels": 1_000_000}


def test_stream_is_rewound_for_the_upload_that_follows() -> None:
    stream = io.BytesIO(images.make_image("PNG"))

    inspect_image(stream, max_pixels=10_000)

    assert stream.tell() == 0
