"""Database engine and sessions (SQLAlchemy 2, async).

PostgreSQL in production through psycopg 3; the unit tier uses SQLite in memory, so models keep to
portable types. Alembic migrations are the only way the schema reaches a real database.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.core.config import Settings


def engine_options(settings: Settings) -> dict[str, Any]:
    """Connection options that keep a dead database from hanging requests."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "postgresql":
        return {}
    return {
        "pool_pre_ping": True,
        "pool_timeout": settings.database_connect_timeout_seconds,
        "connect_args": {
            "connect_timeout": max(1, round(settings.database_connect_timeout_seconds)),
            "options": f"-c statement_timeout={settings.database_statement_timeout_ms}",
            # Notice a peer that went away without closing the connection.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        },
    }


def create_engine(settings: Settings, *, pooled: bool = True) -> AsyncEngine:
    """`pooled=False` for processes that run each job in its own event loop (the worker):
    pooled connections belong to the loop that opened them."""
    options = engine_options(settings)
    if not pooled:
        options.pop("pool_timeout", None)
        options["poolclass"] = NullPool
    return create_async_engine(settings.database_url, **options)


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Objects stay readable after commit: endpoints answer with the row they just committed.
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def session_scope(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """A session for one unit of work outside a request; the caller commits."""
    async with factory() as session:
        try:
            yield session
        except BaseException:
            await session.rollback()
            raise
