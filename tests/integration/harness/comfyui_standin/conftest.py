"""Each test gets its own stand-in on a real socket (own port, own temporary folders).

``comfy`` is an async client (``fixtures.comfyui.testing.Comfy``) for that server;
``start_comfy(**options)`` starts one with other options.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fixtures.comfyui import StandinConfig, StandinServer
from fixtures.comfyui.testing import Comfy


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


StartComfy = Callable[..., AbstractAsyncContextManager[Comfy]]


@pytest.fixture
def start_comfy(tmp_path: Path) -> StartComfy:
    """``async with start_comfy(cache=False, ...) as comfy`` for a server with options."""

    @asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[Comfy]:
        root = tmp_path / uuid.uuid4().hex[:8]
        config = StandinConfig(
            port=0,
            input_dir=root / "input",
            output_dir=root / "output",
            temp_dir=root / "temp",
            **options,
        )
        server = StandinServer(config)
        # verify=False: plain HTTP, so skip loading CA certificates (about 50 ms per client).
        async with server as url, httpx.AsyncClient(base_url=url, timeout=10, verify=False) as http:
            yield Comfy(http, server)

    return start


@pytest.fixture
async def comfy(start_comfy: StartComfy) -> AsyncIterator[Comfy]:
    async with start_comfy() as client:
        yield client
