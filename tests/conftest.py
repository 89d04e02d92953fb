"""Applies each tier's marker from the folder a test lives in, so `-m unit` and friends always agree with the layout."""

from pathlib import Path

import pytest

# Postgres, Redis and S3 for the tiers that ask for them; loaded here so the xdist controller
# has it too. It starts nothing until a test requests one of its fixtures.
pytest_plugins = ["fixtures.services.plugin"]

TIERS = ("unit", "integration", "e2e", "chaos", "gpu", "fuzz")
TESTS_ROOT = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        relative = Path(item.path).relative_to(TESTS_ROOT)
        tier = relative.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
