"""Request dependencies, as `Annotated` aliases the endpoints declare."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.resources import Resources
from app.core.config import Settings
from app.core.errors import Unauthorized
from app.core.security import hash_token
from app.models import User
from app.repositories.users import UserRepository
from app.services.restoration import RestorationService
from app.workers.queue import TaskQueue


def get_resources(request: Request) -> Resources:
    resources: Resources = request.app.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


def get_app_settings(resources: ResourcesDep) -> Settings:
    """The settings the app was built with (`create_app`), not a fresh read of the environment."""
    return resources.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    """One session per request. Endpoints commit; whatever they did not commit is rolled back."""
    async with resources.session_factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]

bearer_scheme = HTTPBearer(auto_error=False, description="A per-user API token.")


async def get_current_user(
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> User:
    if credentials is None or not credentials.credentials:
        raise Unauthorized()
    user = await UserRepository(session).get_active_user_by_token_hash(
        hash_token(credentials.credentials)
    )
    if user is None:
        raise Unauthorized()
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def get_restoration_service(session: SessionDep, resources: ResourcesDep) -> RestorationService:
    return RestorationService(session, resources.storage, resources.settings)


RestorationServiceDep = Annotated[RestorationService, Depends(get_restoration_service)]


def get_task_queue(resources: ResourcesDep) -> TaskQueue:
    return resources.task_queue


TaskQueueDep = Annotated[TaskQueue, Depends(get_task_queue)]
