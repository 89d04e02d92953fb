"""The gpu tier's quality measures on images whose answers are known."""

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from fixtures.photos import fit, historic_photo, load_photo
from fixtures.quality import metrics
from fixtures.quality.report import busiest_box, crop_data_uri


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    return metrics.rgb_array(fit(load_photo("astronaut"), 128))


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()


def test_identical_images_score_the_maximum(clean: np.ndarray) -> None:
    assert metrics.full_reference(clean, clean) == {
        "psnr_y": metrics.PSNR_CAP_DB,
        "ssim_y": 1.0,
        "psnr_rgb": metrics.PSNR_CAP_DB,
        "ssim_rgb": 1.0,
    }


def test_psnr_of_a_known_error_and_ssim_falls_with_noise(clean: np.ndarray) -> None:
    # Every pixel off by 10 levels: MSE 100, PSNR = 10 log10(255^2 / 100) = 28.13 dB.
    assert metrics.psnr(clean, clean + 10) == pytest.approx(28.13, abs=0.01)
    rng = np.random.default_rng(1)
    light = clean + rng.normal(0, 5, clean.shape)
    heavy = clean + rng.normal(0, 25, clean.shape)
    assert metrics.ssim(clean, light) > metrics.ssim(clean, heavy)
    # A brightness shift keeps the structure: SSIM stays high where PSNR would not.
    assert metrics.ssim(clean, clean + 10) > 0.9 > metrics.ssim(clean, heavy)


def test_luminance_is_bt601_and_rgb_sees_what_y_does_not(clean: np.ndarray) -> None:
    assert metrics.luminance(np.array([[[255.0, 0.0, 0.0]]]))[0, 0] == pytest.approx(76.245)
    # Swap red and blue: the luminance barely moves, the colours are wrong.
    swapped = clean[..., ::-1]
    figures = metrics.full_reference(clean, swapped)
    assert figures["psnr_rgb"] < figures["psnr_y"] - 5


def test_noise_estimate_recovers_added_grain() -> None:
    flat = np.full((128, 128, 3), 120.0)
    grain = np.random.default_rng(2).normal(0, 10, (128, 128))[..., None]  # same in R, G, B
    assert metrics.noise_sigma(flat) == pytest.approx(0, abs=0.01)
    assert metrics.noise_sigma(flat + grain) == pytest.approx(10, rel=0.1)


def test_sharpness_falls_with_blur_and_contrast_with_fading(clean: np.ndarray) -> None:
    image = Image.fromarray(clean.astype(np.uint8), "RGB")
    blurred = metrics.rgb_array(image.filter(ImageFilter.GaussianBlur(2)))
    faded = 128 + (clean - 128) * 0.5
    assert metrics.sharpness(blurred) < metrics.sharpness(clean) / 4
    assert metrics.contrast(faded) == pytest.approx(metrics.contrast(clean) / 2, rel=0.01)


def test_colour_cast_is_zero_for_grey_and_grows_with_yellowing() -> None:
    grey = np.full((32, 32, 3), 128.0)
    yellowed = grey * np.array([1.1, 1.0, 0.7])
    assert metrics.colour_cast(grey) == pytest.approx(0, abs=0.01)
    assert metrics.colour_cast(yellowed) > 15


def test_photo_quality_compares_both_images_at_the_output_size(clean: np.ndarray) -> None:
    original = load_photo("astronaut")  # 512x512: resized to the output size like any input
    degraded = png(clean + np.random.default_rng(3).normal(0, 20, clean.shape))
    restored = png(metrics.resized(original, (256, 256)))

    quality = metrics.photo_quality(
        clean=original, degraded=degraded, restored=restored, size=(256, 256)
    )

    assert quality["restored"]["psnr_y"] > 45  # only 8-bit rounding left
    assert quality["degraded"]["psnr_y"] < 25
    assert quality["improvement"]["psnr_y"] == pytest.approx(
        quality["restored"]["psnr_y"] - quality["degraded"]["psnr_y"], abs=1e-3
    )
    assert set(quality["no_reference"]) == {"clean", "degraded", "restored"}
    with pytest.raises(ValueError, match="expected"):
        metrics.photo_quality(clean=original, degraded=degraded, restored=restored, size=(64, 64))


def test_a_historic_photo_gets_no_reference_figures_only() -> None:
    data = historic_photo("grace_hopper_1984")
    with Image.open(io.BytesIO(data)) as image:
        size = image.size

    quality = metrics.photo_quality(
        clean=None, degraded=data, restored=png(metrics.rgb_array(data)), size=size
    )

    assert set(quality) == {"size", "no_reference"}
    assert set(quality["no_reference"]) == {"degraded", "restored"}
    assert quality["no_reference"]["degraded"]["noise_sigma"] > 0


def test_fingerprints_follow_pixels_not_encodings(clean: np.ndarray) -> None:
    one = png(clean)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(one)).save(buffer, "PNG", compress_level=0)
    assert buffer.getvalue() != one
    assert metrics.pixel_fingerprint(buffer.getvalue()) == metrics.pixel_fingerprint(one)
    assert metrics.pixel_fingerprint(png(clean + 1)) != metrics.pixel_fingerprint(one)


def test_the_zoomed_crop_sits_on_detail() -> None:
    flat = np.full((128, 128, 3), 100.0)
    flat[80:112, 16:48] = np.random.default_rng(4).integers(0, 255, (32, 32, 3))
    left, top, right, bottom = busiest_box(flat, 32)
    assert (right - left, bottom - top) == (32, 32)
    assert left <= 16 <= right
    assert top <= 80 <= bottom
    uri = crop_data_uri(flat, (left, top, right, bottom))
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as crop:
        assert crop.size == (96, 96)  # zoomed x3
