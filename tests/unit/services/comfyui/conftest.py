"""Fixtures of the ComfyUI package's unit tests."""

from collections.abc import Iterator

import pytest
import respx

from tests.unit.helpers import COMFYUI_BASE


@pytest.fixture
def comfy() -> Iterator[respx.MockRouter]:
    """ComfyUI's HTTP routes at COMFYUI_BASE, mocked; a test adds the answers it needs."""
    with respx.mock(base_url=COMFYUI_BASE, assert_all_called=False) as router:
        yield router
