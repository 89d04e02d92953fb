"""Liveness and readiness answers."""

from typing import Literal

from pydantic import BaseModel


class Liveness(BaseModel):
    status: Literal["ok"] = "ok"


class CheckResult(BaseModel):
    ok: bool
    detail: str | None = None


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, CheckResult]
    # Reported, never required: jobs wait in the queue while ComfyUI is away.
    comfyui: CheckResult
