"""API shapes of restoration jobs."""

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.models import JobStatus


class RestorationJobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    content_type: str
    size_bytes: int
    width: int
    height: int
    result_width: int | None
    result_height: int | None
    workflow: str
    attempts: int
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    # A short-lived presigned download link, present once the job is COMPLETED.
    result_url: str | None = None
    result_url_expires_at: datetime | None = None


class RestorationJobPage(BaseModel):
    items: list[RestorationJobOut]
    total: int
    limit: int
    offset: int
