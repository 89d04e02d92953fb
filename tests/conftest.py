"""Applies each tier's marker from the folder a test lives in, so `-m unit` and friends always agree with the layout."""

from pathlib import Path

import pytest

TIERS = ("unit", "integration", "e2e", "gpu")
TESTS_ROOT = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(item.path).relative_to(TESTS_ROOT)
        tier = relative.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
