"""Fixtures of the worker's unit tests."""

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.services.comfyui import ComfyUIService


@pytest.fixture
def closed(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every ComfyUI service closed and every engine disposed, in order."""
    events: list[Any] = []
    real_aclose, real_dispose = ComfyUIService.aclose, AsyncEngine.dispose

    async def aclose(self: ComfyUIService) -> None:
        events.append(self)
        await real_aclose(self)

    async def dispose(self: AsyncEngine, *args: Any, **kwargs: Any) -> None:
        events.append(self)
        await real_dispose(self, *args, **kwargs)

    monkeypatch.setattr(ComfyUIService, "aclose", aclose)
    monkeypatch.setattr(AsyncEngine, "dispose", dispose)
    return events
