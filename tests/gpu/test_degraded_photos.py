"""The photo fixtures the gpu tier restores: real, reproducible, damaged, and sized as asked."""

import io

import numpy as np
import pytest
from PIL import Image

from fixtures.photos import (
    DEFAULT_PHOTOS,
    MAX_SIDE_ENV,
    PhotoNotFound,
    available_photos,
    degraded_photo,
    fit,
    load_photo,
)


def test_default_photos_ship_with_scikit_image() -> None:
    assert set(DEFAULT_PHOTOS) <= set(available_photos())
    with pytest.raises(PhotoNotFound, match="no photo 'nope'"):
        load_photo("nope")


@pytest.mark.parametrize("name", DEFAULT_PHOTOS)
def test_degraded_photo_is_reproducible_and_damaged(name: str) -> None:
    first = degraded_photo(name, seed=3, max_side=256)
    again = degraded_photo(name, seed=3, max_side=256)
    other = degraded_photo(name, seed=4, max_side=256)

    assert first.png == again.png
    assert first.png != other.png
    assert first.degradation != other.degradation
    with Image.open(io.BytesIO(first.png)) as image:
        assert image.format == "PNG"
        assert image.mode == "RGB"
        assert image.size == (first.width, first.height)
        assert max(image.size) == 256
        damaged = np.asarray(image, dtype=np.float32)
    clean = np.asarray(fit(load_photo(name), 256), dtype=np.float32)
    assert damaged.shape == clean.shape
    assert np.abs(damaged - clean).mean() > 5  # visibly damaged
    assert np.corrcoef(damaged.mean(axis=2).ravel(), clean.mean(axis=2).ravel())[0, 1] > 0.6


def test_max_side_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_SIDE_ENV, "300")
    photo = degraded_photo("coffee")  # 600x400 originally
    assert (photo.width, photo.height) == (300, 200)
    assert photo.metadata()["original_size"] == [600, 400]
    monkeypatch.setenv(MAX_SIDE_ENV, "8")
    with pytest.raises(ValueError, match="at least 16"):
        degraded_photo("coffee")
