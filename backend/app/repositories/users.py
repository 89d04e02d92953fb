"""Users and API tokens."""

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import ApiToken, User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, email: str) -> User:
        user = User(email=email)
        self.session.add(user)
        await self.session.flush()
        return user

    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()

    async def add_token(self, user: User, *, name: str, token_hash: str) -> ApiToken:
        token = ApiToken(user_id=user.id, name=name, token_hash=token_hash)
        self.session.add(token)
        await self.session.flush()
        return token

    async def get_active_user_by_token_hash(self, token_hash: str) -> User | None:
        query = (
            select(User)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(
                ApiToken.token_hash == token_hash,
                ApiToken.revoked_at.is_(None),
                User.is_active.is_(True),
            )
        )
        result = await self.session.execute(query)
        return result.scalar_one_or_none()
