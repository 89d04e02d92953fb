"""Liveness (`/healthz`) and readiness (`/readyz`).

Readiness needs the database, the broker and S3. ComfyUI is reported but never makes the API unready:
jobs simply wait in the queue until it is back.
"""

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.deps import ResourcesDep
from app.api.resources import Resources
from app.schemas.health import CheckResult, Liveness, Readiness

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 3.0


async def _run_check(check: Callable[[], Awaitable[object]]) -> CheckResult:
    try:
        await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT_SECONDS)
    except TimeoutError:
        return CheckResult(ok=False, detail=f"no answer within {CHECK_TIMEOUT_SECONDS:g} s")
    except Exception as error:
        return CheckResult(ok=False, detail=f"{type(error).__name__}: {error}")
    return CheckResult(ok=True)


async def _check_database(resources: Resources) -> None:
    async with resources.session_factory() as session:
        await session.execute(text("SELECT 1"))


@router.get("/healthz", response_model=Liveness)
async def liveness() -> Liveness:
    return Liveness()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readiness(resources: ResourcesDep) -> JSONResponse:
    database, broker, storage, comfyui = await asyncio.gather(
        _run_check(lambda: _check_database(resources)),
        _run_check(resources.broker.ping),
        _run_check(resources.storage.check),
        asyncio.wait_for(resources.comfyui.health(), timeout=CHECK_TIMEOUT_SECONDS),
        return_exceptions=True,
    )
    checks = {"database": database, "broker": broker, "storage": storage}
    if isinstance(comfyui, BaseException):
        comfyui_result = CheckResult(ok=False, detail=f"{type(comfyui).__name__}: {comfyui}")
    else:
        detail = f"ComfyUI {comfyui.version}" if comfyui.ok else comfyui.error
        comfyui_result = CheckResult(ok=comfyui.ok, detail=detail)
    ready = all(isinstance(c, CheckResult) and c.ok for c in checks.values())
    body = Readiness(
        status="ready" if ready else "not_ready",
        checks={k: v for k, v in checks.items() if isinstance(v, CheckResult)},
        comfyui=comfyui_result,
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
