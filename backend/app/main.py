"""The FastAPI application. Run it with `uvicorn --factory app.main:create_app` (or `nox -s serve`)."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.errors import install_error_handlers
from app.api.health import router as health_router
from app.api.resources import ResourcesFactory, build_resources
from app.api.router import api_v1
from app.core.config import Settings, get_settings


def create_app(
    settings: Settings | None = None, *, resources_factory: ResourcesFactory = build_resources
) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.resources = await resources_factory(settings)
        try:
            yield
        finally:
            await app.state.resources.aclose()

    app = FastAPI(
        title=settings.api_title,
        version=__version__,
        summary="Upload old photos; a worker restores them with ComfyUI; fetch the results.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(api_v1)
    logging.getLogger("app").setLevel(logging.INFO)
    return app
