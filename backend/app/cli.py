"""Command line: `python -m app ...` or `restoration ...`.

migrate                         apply Alembic migrations
ensure-bucket                   create the S3 bucket if it is missing (local stacks)
create-user EMAIL               add a user
create-token EMAIL [--name N]   issue an API token (printed once, stored hashed)
serve [--host H] [--port P]     run the API under uvicorn
worker [CELERY ARGS...]         run a Celery worker for the restoration queue
"""

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from app.core.config import Settings, get_settings
from app.core.db import create_engine, create_session_factory
from app.core.security import generate_token, hash_token
from app.repositories.users import UserRepository
from app.services.s3 import S3Storage

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


class CliError(Exception):
    pass


def migrate(settings: Settings, revision: str = "head") -> None:
    from alembic import command
    from alembic.config import Config

    if not ALEMBIC_INI.is_file():
        raise CliError(f"alembic.ini not found at {ALEMBIC_INI}; run from a source checkout")
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("sqlalchemy.url", settings.database_url)
    command.upgrade(config, revision)


async def create_user(settings: Settings, email: str) -> str:
    engine = create_engine(settings, pooled=False)
    try:
        async with create_session_factory(engine)() as session:
            users = UserRepository(session)
            if await users.get_by_email(email) is not None:
                raise CliError(f"a user with email {email} exists already")
            user = await users.create(email)
            await session.commit()
            return str(user.id)
    finally:
        await engine.dispose()


async def create_token(settings: Settings, email: str, name: str, create_missing: bool) -> str:
    engine = create_engine(settings, pooled=False)
    try:
        async with create_session_factory(engine)() as session:
            users = UserRepository(session)
            user = await users.get_by_email(email)
            if user is None:
                if not create_missing:
                    raise CliError(f"no user with email {email}; add --create-user")
                user = await users.create(email)
            token = generate_token()
            await users.add_token(user, name=name, token_hash=hash_token(token))
            await session.commit()
            return token
    finally:
        await engine.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restoration", description="Photo-restoration backend.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("migrate", help="apply database migrations")
    up.add_argument("revision", nargs="?", default="head")

    user = commands.add_parser("create-user", help="add a user")
    user.add_argument("email")

    token = commands.add_parser("create-token", help="issue an API token for a user")
    token.add_argument("email")
    token.add_argument("--name", default="cli", help="a label for the token")
    token.add_argument("--create-user", action="store_true", help="add the user if missing")

    serve = commands.add_parser("serve", help="run the API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)

    commands.add_parser("ensure-bucket", help="create the S3 bucket if it is missing")

    commands.add_parser("worker", help="run a Celery worker (extra arguments go to Celery)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["worker"]:
        run_worker(argv[1:])
    args = parser.parse_args(argv)
    settings = get_settings()
    try:
        if args.command == "migrate":
            migrate(settings, args.revision)
        elif args.command == "ensure-bucket":
            asyncio.run(S3Storage(settings).ensure_bucket())
        elif args.command == "create-user":
            print(asyncio.run(create_user(settings, args.email)))
        elif args.command == "create-token":
            print(asyncio.run(create_token(settings, args.email, args.name, args.create_user)))
        elif args.command == "serve":
            import uvicorn

            uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def run_worker(extra: list[str]) -> NoReturn:
    from app.workers.celery_app import celery_app

    settings = get_settings()
    celery_app.worker_main(["worker", "--queues", settings.celery_queue, *extra])
