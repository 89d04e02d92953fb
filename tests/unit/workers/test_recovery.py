"""The reaper's sweep on the unit tier's SQLite (its `SKIP LOCKED` is tested on Postgres in the
integration tier): which jobs it sends again, and that it leaves them a while afterwards."""

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.models import JobStatus, RestorationJob
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from app.workers.celery_app import create_celery_app
from app.workers.recovery import (
    REAP_TASK,
    RecoveryStep,
    celery_sender,
    reap_once,
    recovery_queue,
    request_sweep,
)
from fixtures.jobs import new_job
from tests.unit.conftest import Account

pytestmark = pytest.mark.anyio


@pytest.fixture
def sweep_settings(settings: Settings) -> Settings:
    settings.task_lease_seconds = 20
    settings.task_retry_backoff_max_seconds = 30
    settings.reaper_pending_after_seconds = 120
    return settings


async def add(
    factory: async_sessionmaker[AsyncSession], account: Account, *, updated: datetime, **fields: Any
) -> uuid.UUID:
    job = new_job(account.user.id, **fields)
    async with factory() as session:
        session.add(job)
        await session.flush()
        # updated_at follows every UPDATE: set it last, by hand.
        await session.execute(
            update(RestorationJob).where(RestorationJob.id == job.id).values(updated_at=updated)
        )
        await session.commit()
    return job.id


async def test_the_sweep_sends_stranded_jobs_and_only_those(
    sweep_settings: Settings, session_factory: async_sessionmaker[AsyncSession], alice: Account
) -> None:
    now = utcnow()
    ago = lambda seconds: now - timedelta(seconds=seconds)  # noqa: E731
    processing = JobStatus.PROCESSING
    stranded = {
        "lease expired": await add(
            session_factory, alice, updated=ago(21), status=processing, heartbeat_at=ago(21)
        ),
        "released, retry lost": await add(
            session_factory, alice, updated=ago(51), status=processing, heartbeat_at=None
        ),
        "pending too long": await add(session_factory, alice, updated=ago(121)),
    }
    fine = {
        "live lease": await add(
            session_factory, alice, updated=ago(1), status=processing, heartbeat_at=ago(5)
        ),
        "released, retry due": await add(
            session_factory, alice, updated=ago(40), status=processing, heartbeat_at=None
        ),
        "pending": await add(session_factory, alice, updated=ago(60)),
        "finished": await add(session_factory, alice, updated=ago(500), status=JobStatus.COMPLETED),
    }
    sent: list[uuid.UUID] = []

    reaped = await reap_once(sweep_settings, session_factory, sent.append)

    assert sorted(reaped) == sorted(stranded.values())
    assert sent == reaped
    async with session_factory() as session:
        jobs = RestorationJobRepository(session)
        for job_id in stranded.values():
            job = await jobs.get(job_id)
            assert job is not None
            assert job.heartbeat_at is None  # claimable at once by the new message
            assert job.status is not JobStatus.FAILED
        live = await jobs.get(fine["live lease"])
        assert live is not None
        assert live.heartbeat_at is not None  # untouched
    # Marked: the next sweep leaves them to their new messages.
    assert await reap_once(sweep_settings, session_factory, sent.append) == []


async def test_pending_jobs_go_back_to_their_queue_not_ahead_of_a_dead_workers(
    sweep_settings: Settings, session_factory: async_sessionmaker[AsyncSession], alice: Account
) -> None:
    """A PENDING job may only be waiting its turn: in the recovery queue, a batch of them would
    stand before the jobs of a worker that died (seen in the chaos tier)."""
    ago = lambda seconds: utcnow() - timedelta(seconds=seconds)  # noqa: E731
    dead = await add(
        session_factory,
        alice,
        updated=ago(21),
        status=JobStatus.PROCESSING,
        heartbeat_at=ago(21),
    )
    waiting = await add(session_factory, alice, updated=ago(121))
    recovery: list[uuid.UUID] = []
    queue: list[uuid.UUID] = []

    await reap_once(sweep_settings, session_factory, recovery.append, queue.append)

    assert (recovery, queue) == ([dead], [waiting])


async def test_a_failed_send_leaves_the_job_to_the_next_sweep(
    sweep_settings: Settings, session_factory: async_sessionmaker[AsyncSession], alice: Account
) -> None:
    job_id = await add(session_factory, alice, updated=utcnow() - timedelta(seconds=300))

    def broker_down(_: uuid.UUID) -> None:
        raise ConnectionError("broker unreachable")

    with pytest.raises(ConnectionError):
        await reap_once(sweep_settings, session_factory, broker_down)

    sent: list[uuid.UUID] = []
    assert await reap_once(sweep_settings, session_factory, sent.append) == [job_id]


def test_the_worker_consumes_the_recovery_queue_and_asks_for_sweeps(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's app carries the step; a worker started with `--queues X` consumes X.recovery,
    and its timer sends a sweep request there that expires after one interval."""
    from app.workers import celery_app as module

    celery = create_celery_app(settings)
    module.add_worker_steps(celery)
    assert RecoveryStep in celery.steps["consumer"]
    assert recovery_queue(settings) == f"{settings.celery_queue}.recovery"

    scheduled: list[tuple[float, Any, tuple[Any, ...]]] = []

    class FakeTimer:
        def call_repeatedly(self, interval: float, function: Any, args: tuple[Any, ...]) -> Any:
            scheduled.append((interval, function, args))
            return type("Entry", (), {"cancel": lambda self: None})()

    class FakeConsumer:
        app = celery
        timer = FakeTimer()

    monkeypatch.setattr("app.workers.recovery.get_settings", lambda: settings)
    celery.amqp.queues.select([settings.celery_queue])
    step = RecoveryStep(FakeConsumer())
    assert set(celery.amqp.queues.consume_from) == {
        settings.celery_queue,
        recovery_queue(settings),
    }

    step.start(FakeConsumer())
    [(interval, function, args)] = scheduled
    assert interval == settings.reaper_interval_seconds
    sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(celery, "send_task", lambda *a, **k: sent.append((a, k)))
    function(*args)
    assert sent == [
        (
            (REAP_TASK,),
            {
                "queue": recovery_queue(settings),
                "expires": settings.reaper_interval_seconds,
                "retry": False,
            },
        )
    ]
    step.stop(FakeConsumer())
    assert step.timer_entry is None


def test_a_sweep_request_the_broker_refuses_is_only_logged(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    celery = create_celery_app(settings)

    def refused(*_: Any, **__: Any) -> None:
        raise ConnectionRefusedError("broker down")

    celery.send_task = refused  # type: ignore[method-assign]
    request_sweep(celery, settings)
    assert "could not request a sweep: ConnectionRefusedError: broker down" in caplog.text


def test_recovery_messages_expire_so_copies_never_pile_up(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery = create_celery_app(settings)
    sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    monkeypatch.setattr(celery, "send_task", lambda *a, **k: sent.append((a, k)))
    job_id = uuid.uuid4()

    celery_sender(celery, settings)(job_id)

    [(args, kwargs)] = sent
    assert args == ("restoration.restore_image",)
    assert kwargs["args"] == [str(job_id)]
    assert kwargs["queue"] == recovery_queue(settings)
    assert kwargs["expires"] == settings.reaper_pending_after_seconds
    # Its own id, the job's as a prefix: an expired copy is remembered as revoked by its id.
    assert kwargs["task_id"].startswith(f"{job_id}.recovery.")
    celery_sender(celery, settings)(job_id)
    assert sent[1][1]["task_id"] != kwargs["task_id"]
