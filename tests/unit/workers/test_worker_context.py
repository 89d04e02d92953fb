"""worker_context: what one task run needs, built inside its event loop and closed after it."""

from typing import Any

import pytest
from sqlalchemy import text

from app.core.config import Settings
from app.services.comfyui import ComfyUIService
from app.services.s3 import S3Storage
from app.workers import context as context_module
from app.workers.context import worker_context

pytestmark = pytest.mark.anyio


async def test_builds_the_run_context_from_settings_and_closes_it(
    settings: Settings, closed: list[Any]
) -> None:
    async with worker_context(settings) as ctx:
        assert ctx.settings is settings
        assert isinstance(ctx.restorer, ComfyUIService)
        assert (ctx.restorer.scale, ctx.restorer.upscale_model, ctx.restorer.timeout) == (
            settings.comfyui_scale,
            settings.comfyui_upscale_model,
            settings.comfyui_job_timeout_seconds,
        )
        assert isinstance(ctx.storage, S3Storage)
        assert ctx.storage.bucket == settings.s3_bucket
        async with ctx.session_factory() as session:
            assert await session.scalar(text("SELECT 41 + 1")) == 42
        engine = ctx.session_factory.kw["bind"]
        assert closed == []

    assert closed == [ctx.restorer, engine]


async def test_closes_everything_when_the_run_fails(settings: Settings, closed: list[Any]) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        async with worker_context(settings) as ctx:
            raise RuntimeError("boom")

    assert closed[0] is ctx.restorer
    assert len(closed) == 2


async def test_the_engine_keeps_no_connections_between_runs(settings: Settings) -> None:
    """Each task run has an event loop of its own: pooled connections would outlive it."""
    async with worker_context(settings) as ctx:
        engine = ctx.session_factory.kw["bind"]
        assert engine.pool.__class__.__name__ == "NullPool"


def test_the_task_module_uses_worker_context_by_default() -> None:
    from app.workers.tasks import restoration

    assert restoration.context_factory is context_module.worker_context
