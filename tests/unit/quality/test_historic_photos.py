"""The real historic photos are the files their README records, source and licence included."""

import hashlib
import io
import re

import pytest
from PIL import Image

from fixtures.photos import HISTORIC_DIR, HISTORIC_PHOTOS, PhotoNotFound, historic_photo


@pytest.mark.parametrize("name", HISTORIC_PHOTOS)
def test_each_historic_photo_matches_its_readme_entry(name: str) -> None:
    readme = (HISTORIC_DIR / "README.md").read_text(encoding="utf-8")
    [row] = [line for line in readme.splitlines() if line.startswith(f"| `{name}.jpg` |")]
    data = historic_photo(name)

    assert row.rstrip(" |").endswith(f"`{hashlib.sha256(data).hexdigest()}`")
    assert re.search(r"public domain|CC0|CC BY", row)  # a licence that lets us ship it
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "JPEG"
        assert max(image.size) <= 512  # small: the repository carries it


def test_an_unknown_historic_photo_is_refused() -> None:
    with pytest.raises(PhotoNotFound, match="no historic photo 'nope'"):
        historic_photo("nope")
