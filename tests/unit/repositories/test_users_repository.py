"""UserRepository: users, their tokens, and the token lookup behind every request."""

import uuid

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.security import generate_token, hash_token
from app.models import User
from app.models.base import utcnow
from app.repositories.users import UserRepository

pytestmark = pytest.mark.anyio


@pytest.fixture
def users(session: AsyncSession) -> UserRepository:
    return UserRepository(session)


async def test_create_and_find_a_user(users: UserRepository) -> None:
    user = await users.create("carol@example.com")

    assert isinstance(user.id, uuid.UUID)
    assert user.is_active is True
    assert await users.get_by_email("carol@example.com") is user
    assert await users.get_by_email("dave@example.com") is None


async def test_email_is_unique(users: UserRepository, session: AsyncSession) -> None:
    await users.create("carol@example.com")
    await session.commit()

    with pytest.raises(IntegrityError):
        await users.create("carol@example.com")


async def test_token_lookup_finds_the_tokens_owner(users: UserRepository) -> None:
    carol = await users.create("carol@example.com")
    dave = await users.create("dave@example.com")
    first, second = generate_token(), generate_token()
    token = await users.add_token(carol, name="laptop", token_hash=hash_token(first))
    await users.add_token(carol, name="ci", token_hash=hash_token(second))
    await users.add_token(dave, name="dave", token_hash=hash_token(generate_token()))

    assert (token.user_id, token.name, token.revoked_at) == (carol.id, "laptop", None)
    assert await users.get_active_user_by_token_hash(hash_token(first)) is carol
    assert await users.get_active_user_by_token_hash(hash_token(second)) is carol
    assert await users.get_active_user_by_token_hash(hash_token(generate_token())) is None
    # The token itself is not its hash.
    assert await users.get_active_user_by_token_hash(first) is None


async def test_token_lookup_ignores_revoked_tokens(users: UserRepository) -> None:
    carol = await users.create("carol@example.com")
    revoked, live = generate_token(), generate_token()
    token = await users.add_token(carol, name="old", token_hash=hash_token(revoked))
    await users.add_token(carol, name="new", token_hash=hash_token(live))
    token.revoked_at = utcnow()
    await users.session.flush()

    assert await users.get_active_user_by_token_hash(hash_token(revoked)) is None
    assert await users.get_active_user_by_token_hash(hash_token(live)) is carol


async def test_token_lookup_ignores_inactive_users(users: UserRepository) -> None:
    carol = await users.create("carol@example.com")
    secret = generate_token()
    await users.add_token(carol, name="laptop", token_hash=hash_token(secret))
    assert await users.get_active_user_by_token_hash(hash_token(secret)) is carol

    carol.is_active = False
    await users.session.flush()

    assert await users.get_active_user_by_token_hash(hash_token(secret)) is None


async def test_token_hashes_are_unique(users: UserRepository) -> None:
    carol = await users.create("carol@example.com")
    dave = await users.create("dave@example.com")
    digest = hash_token(generate_token())
    await users.add_token(carol, name="a", token_hash=digest)

    with pytest.raises(IntegrityError):
        await users.add_token(dave, name="b", token_hash=digest)


async def test_user_defaults(users: UserRepository) -> None:
    before = utcnow()
    user: User = await users.create("erin@example.com")

    assert user.created_at >= before
    assert user.is_active is True
