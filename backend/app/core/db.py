"""Database engine and sessions (SQLAlchemy 2, async).

PostgreSQL in production through psycopg 3; the unit tier uses SQLite in memory, so models keep to
portable types. Alembic migrations are the only way the schema reaches a real database.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.abc import PQGen
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from app.core import timing
from app.core.config import Settings

RV = TypeVar("RV")


class BoundedAsyncConnection(psycopg.AsyncConnection[Any]):
    """A psycopg connection that waits for the server's answers only so long.

    A server that is paused, or wedged behind a live TCP peer (a proxy or load balancer during a
    failover), still has its kernel or the middlebox acknowledge our bytes and keepalive probes:
    keepalives and `tcp_user_timeout` notice nothing, `statement_timeout` is enforced by the very
    server that does not answer, and `connect_timeout` covers only new connections. A query on a
    connection already open would wait forever (psycopg issue #1371), and an asyncio timeout
    around it costs another 10 s, spent in psycopg's cancellation of the query. So every wait
    has a deadline, `operation_timeout`; past it the connection is closed (SQLAlchemy's pool then
    discards it) and the operation fails with `OperationalError`: 503 at the API, a retry in the
    worker.
    """

    operation_timeout: float | None = None

    async def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        if timeout is not None or self.operation_timeout is None:  # the caller's own deadline
            return await super().wait(gen, interval, timeout)
        try:
            return await super().wait(gen, interval, self.operation_timeout)
        except pg_errors._WaitTimeout as error:
            self.pgconn.finish()  # mid-protocol: the connection can't be used again
            raise psycopg.OperationalError(
                f"the database did not answer within {self.operation_timeout:g} s"
            ) from error


def _bounded_connector(
    url: URL, connect_args: dict[str, Any], operation_timeout: float | None
) -> Any:
    """`async_creator` for SQLAlchemy: psycopg connections with a deadline on every wait."""
    params = {
        **url.translate_connect_args(database="dbname", username="user"),
        **url.query,
        **connect_args,
    }

    async def connect() -> BoundedAsyncConnection:
        connection = await BoundedAsyncConnection.connect(**params)
        connection.operation_timeout = operation_timeout
        return connection

    return connect


def engine_options(settings: Settings) -> dict[str, Any]:
    """Connection options that keep a dead database from hanging requests."""
    url = make_url(settings.database_url)
    if url.get_backend_name() != "postgresql":
        return {}
    connect_args = {
        "connect_timeout": max(1, round(settings.database_connect_timeout_seconds)),
        "options": f"-c statement_timeout={settings.database_statement_timeout_ms}",
        # Notice a peer that went away without closing the connection.
        "keepalives": 1,
        "keepalives_idle": 5,
        "keepalives_interval": 2,
        "keepalives_count": 2,
    }
    return {
        "pool_pre_ping": True,
        "pool_timeout": settings.database_connect_timeout_seconds,
        "async_creator": _bounded_connector(
            url, connect_args, settings.database_operation_timeout_seconds
        ),
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
    """A session for one unit of work outside a request; the caller commits.

    Its time counts as the current job's database stage (see `app.core.timing`)."""
    with timing.stage(timing.DATABASE):
        async with factory() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
