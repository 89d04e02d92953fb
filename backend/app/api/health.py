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
from app.services.comfyui import ComfyUIHealth

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 3.0

# Checks past the limit are left to finish on their own (a thread blocked in boto3, psycopg
# cancelling a query on a frozen server can take 10 s): kept here until then, never awaited.
_abandoned: set[asyncio.Future[object]] = set()


def _abandon(task: asyncio.Future[object]) -> None:
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_forget)


def _forget(task: asyncio.Future[object]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception was never retrieved"


async def run_checks(
    checks: dict[str, Callable[[], Awaitable[object]]], limit: float | None = None
) -> dict[str, object]:
    """Run the checks side by side and answer after `limit` seconds at most (default
    CHECK_TIMEOUT_SECONDS): each check's value, its exception, or a `TimeoutError` for those still
    running, which are abandoned."""
    limit = CHECK_TIMEOUT_SECONDS if limit is None else limit
    tasks: dict[str, asyncio.Future[object]] = {
        name: asyncio.ensure_future(check()) for name, check in checks.items()
    }
    _, late = await asyncio.wait(tasks.values(), timeout=limit)
    results: dict[str, object] = {}
    for name, task in tasks.items():
        if task in late:
            _abandon(task)
            results[name] = TimeoutError(f"no answer within {limit:g} s")
        elif (error := task.exception()) is not None:
            results[name] = error
        else:
            results[name] = task.result()
    return results


def _result(outcome: object) -> CheckResult:
    if isinstance(outcome, TimeoutError):
        return CheckResult(ok=False, detail=str(outcome))
    if isinstance(outcome, BaseException):
        return CheckResult(ok=False, detail=f"{type(outcome).__name__}: {outcome}")
    return CheckResult(ok=True)


async def _check_database(resources: Resources) -> None:
    async with resources.session_factory() as session:
        await session.execute(text("SELECT 1"))


@router.get("/healthz", response_model=Liveness)
async def liveness() -> Liveness:
    return Liveness()


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readiness(resources: ResourcesDep) -> JSONResponse:
    """Answers within CHECK_TIMEOUT_SECONDS whatever the dependencies do; late ones are named."""
    outcomes = await run_checks(
        {
            "database": lambda: _check_database(resources),
            "broker": resources.broker.ping,
            "storage": resources.storage.check,
            "comfyui": resources.comfyui.health,
        }
    )
    comfyui = outcomes.pop("comfyui")
    checks = {name: _result(outcome) for name, outcome in outcomes.items()}
    if isinstance(comfyui, ComfyUIHealth):
        detail = f"ComfyUI {comfyui.version}" if comfyui.ok else comfyui.error
        comfyui_result = CheckResult(ok=comfyui.ok, detail=detail)
    else:
        comfyui_result = _result(comfyui)
    ready = all(check.ok for check in checks.values())
    body = Readiness(
        status="ready" if ready else "not_ready", checks=checks, comfyui=comfyui_result
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
