"""Every model, imported here so `Base.metadata` is complete for Alembic and tests."""

from app.models.base import Base
from app.models.restoration import ApiToken, JobStatus, RestorationJob, User

__all__ = ["ApiToken", "Base", "JobStatus", "RestorationJob", "User"]
