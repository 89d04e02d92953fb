"""Doubles and builders for the unit tier's tests; the fixtures that hand them out are in conftest."""

import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import WorkflowName
from app.core.security import generate_token, hash_token
from app.models import RestorationJob
from app.repositories.users import UserRepository
from app.services.comfyui import ComfyUIHealth
from app.workflows import build_workflow
from fixtures.accounts import Account

BUCKET = "unit-bucket"
# Where the ComfyUI package's unit tests find a mocked ComfyUI (the `comfy` fixture).
COMFYUI_BASE = "http://comfy.test:8188"


@dataclass
class RecordingTaskQueue:
    """Stands in for Celery in API tests: records what would have been sent."""

    enqueued: list[uuid.UUID] = field(default_factory=list)
    error: Exception | None = None

    async def enqueue_restoration(self, job_id: uuid.UUID) -> None:
        if self.error is not None:
            raise self.error
        self.enqueued.append(job_id)


@dataclass
class FakeBroker:
    error: Exception | None = None

    async def ping(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass
class FakeComfyUIHealth:
    health_answer: ComfyUIHealth = field(
        default_factory=lambda: ComfyUIHealth(ok=True, version="0.3.64", devices=["cpu"])
    )

    async def health(self) -> ComfyUIHealth:
        return self.health_answer


async def make_account(session: AsyncSession, email: str) -> Account:
    """A user with one token, committed in the test's session (so rolled back with it)."""
    users = UserRepository(session)
    user = await users.create(email)
    token = generate_token()
    await users.add_token(user, name="test", token_hash=hash_token(token))
    await session.commit()
    return Account(email=email, token=token, user=user)


def upload(
    data: bytes, filename: str = "photo.bin", content_type: str = "application/octet-stream"
) -> dict[str, tuple[str, bytes, str]]:
    """`files=` for an upload to POST /api/v1/restorations; only the bytes count, not the names."""
    return {"file": (filename, data, content_type)}


async def count_jobs(session: AsyncSession) -> int:
    return await session.scalar(select(func.count()).select_from(RestorationJob)) or 0


def core_graph() -> dict[str, dict[str, Any]]:
    """The shipped core workflow with a per-job upload, which LoadImage's option list never holds."""
    return build_workflow(
        WorkflowName.CORE,
        image="jobs/abc/input.png",
        output_prefix="restored/abc/a1",
        scale=2.0,
        upscale_model="unused.pth",
    )
