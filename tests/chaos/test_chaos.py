"""Each test breaks one thing for real during a batch, then checks every job (see Row.check)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
from celery import Celery
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from app.models import User
from app.workers.queue import RESTORE_TASK
from fixtures import chaos
from fixtures.images import make_image
from fixtures.jobs import new_job
from fixtures.services import WorkerServices
from fixtures.services.providers.base import ServiceControl
from fixtures.stack import Stack
from tests.chaos.conftest import LEASE_S, SETTINGS

Record = Callable[[chaos.Row], chaos.Row]

# The stand-in spends this long on each prompt, so that faults land while jobs run.
PROMPT_S = 0.4
# What one job may take once the stack is whole again (the stand-in runs one prompt at a time).
PER_JOB_S = 1.0
# A job of a dead worker runs again within this (the recovery's promise).
RECLAIM_BOUND_S = 2 * LEASE_S
REAPER_PENDING_S = float(SETTINGS["REAPER_PENDING_AFTER_SECONDS"])
OUTAGE_S = 5.0


def slow_prompts(stack: Stack) -> None:
    chaos.set_fault(stack, kind="slow", node="ImageSharpen", seconds=PROMPT_S)


def drain_bound(jobs: int) -> float:
    """After a fault ends: the reaper's rescue of anything it stranded, then the backlog."""
    return REAPER_PENDING_S + RECLAIM_BOUND_S + jobs * PER_JOB_S


def test_pool_child_killed_mid_job(whole: Stack, batch: chaos.Batch, chaos_row: Record) -> None:
    slow_prompts(whole)
    batch.submit(4)
    held = batch.wait_processing(1)
    killed_at = time.monotonic()
    chaos.kill_pool(whole)  # the main process lives on and forks new pool processes
    batch.settle(timeout=RECLAIM_BOUND_S + 30)
    reclaimed = batch.reclaimed_at(held)
    row = chaos_row(
        batch.outcome(
            "pool child SIGKILLed mid-job",
            recovery_s=None if reclaimed is None else reclaimed - killed_at,
            bound_s=RECLAIM_BOUND_S,
        )
    )
    row.check()


def test_worker_killed_twice_in_a_batch_of_50(
    whole: Stack, batch: chaos.Batch, chaos_row: Record
) -> None:
    slow_prompts(whole)
    batch.submit(50)
    kills: list[tuple[float, float, dict[str, int]]] = []  # killed at, replacement's start, held
    for done_before_kill in (5, 20):
        batch.wait_done(done_before_kill, timeout=120)
        held = batch.wait_processing(1)
        killed_at = time.monotonic()
        chaos.kill_worker(whole)
        whole.start_worker()  # a new one, as a supervisor would start
        kills.append((killed_at, time.monotonic() - killed_at, held))
        # Pace the second kill after the first one's repair (waiting no more than twice its bound).
        batch.within(2 * RECLAIM_BOUND_S, lambda: batch.reclaimed_at(held) is not None)  # noqa: B023
    batch.settle(timeout=50 * PER_JOB_S + 30)
    # With no other worker running, a killed worker's jobs also wait for the replacement to start
    # (seconds of imports here): each kill's bound is 2 x lease plus that start.
    repairs = [
        (
            None if (at := batch.reclaimed_at(held)) is None else at - killed_at,
            RECLAIM_BOUND_S + start,
        )
        for killed_at, start, held in kills
    ]
    worst = max(
        repairs, key=lambda repair: float("inf") if repair[0] is None else repair[0] - repair[1]
    )
    row = chaos_row(
        batch.outcome("worker SIGKILLed twice, 50 jobs", recovery_s=worst[0], bound_s=worst[1])
    )
    row.notes = [
        f"kill {number}: {len(held)} job(s) held, replacement up after {start:.1f} s, "
        + ("not all ran again" if repair is None else f"all running again after {repair:.1f} s")
        for number, ((_, start, held), (repair, _)) in enumerate(
            zip(kills, repairs, strict=True), 1
        )
    ]
    row.check()


@pytest.mark.parametrize("how", ["freeze", "stop"])
@pytest.mark.parametrize("service", ["postgres", "redis", "s3"])
def test_service_outage_during_a_batch(
    service: str,
    how: str,
    whole: Stack,
    batch: chaos.Batch,
    chaos_row: Record,
    controls: dict[str, ServiceControl],
    proxies: dict[str, chaos.Proxied],
) -> None:
    """Frozen: SIGSTOP/SIGCONT or docker pause/unpause. Stopped: the server stopped and started
    again, or, where that would lose its data (moto, a container on tmpfs), the TCP proxy in
    front of it cut (connections reset, new ones refused) and restored."""
    jobs = 6
    slow_prompts(whole)
    batch.submit(jobs)
    batch.wait_processing(1)
    target: ServiceControl | chaos.Proxied = controls[service]
    if how == "freeze":
        controls[service].freeze()
        time.sleep(OUTAGE_S)
        controls[service].thaw()
    else:
        target = proxies.get(service, controls[service])
        target.halt()
        time.sleep(OUTAGE_S)
        target.restart()
    back_at = time.monotonic()
    last = batch.settle(timeout=drain_bound(jobs) + 30)
    row = chaos_row(
        batch.outcome(
            f"{service} {'frozen' if how == 'freeze' else 'stopped'} {OUTAGE_S:g} s"
            + (" (proxy)" if how == "stop" and service in proxies else ""),
            recovery_s=max(0.0, last - back_at),  # 0: all done before it was back
            bound_s=drain_bound(jobs),
        )
    )
    row.check()


def test_standin_killed_and_restarted_mid_batch(
    whole: Stack, batch: chaos.Batch, chaos_row: Record
) -> None:
    """ComfyUI's queue and history live in memory: a restart loses every prompt it had."""
    jobs = 6
    slow_prompts(whole)
    batch.submit(jobs)
    batch.wait_processing(1)
    chaos.kill_standin(whole)
    time.sleep(3)
    whole.start_standin()
    back_at = time.monotonic()
    last = batch.settle(timeout=drain_bound(jobs) + 30)
    row = chaos_row(
        batch.outcome(
            "ComfyUI stand-in killed, restarted",
            recovery_s=max(0.0, last - back_at),  # 0: all done before it was back
            bound_s=drain_bound(jobs),
        )
    )
    row.check()


def old_retry_budget_s() -> float:
    """What the old count-sized retries waited in all: TASK_MAX_RETRIES (5) backoffs."""
    base = float(SETTINGS["TASK_RETRY_BACKOFF_SECONDS"])
    cap = float(SETTINGS["TASK_RETRY_BACKOFF_MAX_SECONDS"])
    return sum(min(cap, base * 2**attempt) for attempt in range(5))


def test_comfyui_refusing_longer_than_the_old_retry_budget(
    whole: Stack, batch: chaos.Batch, chaos_row: Record
) -> None:
    refuse_s = 20.0
    assert refuse_s > 2 * old_retry_budget_s()
    jobs = 4
    chaos.set_fault(whole, kind="refuse_connections", seconds=refuse_s)
    started = time.monotonic()
    batch.submit(jobs)
    back_at = started + refuse_s
    last = batch.settle(timeout=refuse_s + drain_bound(jobs) + 30)
    time.sleep(max(0.0, back_at - time.monotonic()))  # jobs that gave up early: the window ends
    bound = float(SETTINGS["TASK_RETRY_BACKOFF_MAX_SECONDS"]) + drain_bound(jobs)
    row = chaos_row(
        batch.outcome(
            f"ComfyUI refusing {refuse_s:g} s (old budget {old_retry_budget_s():g} s)",
            recovery_s=max(0.0, last - back_at),
            bound_s=bound,
        )
    )
    row.check()


def test_silent_websocket(whole: Stack, batch: chaos.Batch, chaos_row: Record) -> None:
    """The socket stays open and says nothing after the first message; the prompt finishes."""
    jobs = 3
    silence_s = float(SETTINGS["COMFYUI_WS_SILENCE_SECONDS"])
    chaos.set_fault(whole, kind="silent_websocket", after=1, count=jobs)
    started = time.monotonic()
    batch.submit(jobs)
    last = batch.settle(timeout=120)
    # Each job: its prompt, then at most the silence and one poll before it is seen finished.
    bound = jobs * (PER_JOB_S + silence_s + 1.0) + 5.0
    row = chaos_row(batch.outcome("silent websocket", recovery_s=last - started, bound_s=bound))
    row.check()


def test_enqueue_race_worker_before_the_commit(
    whole: Stack,
    batch: chaos.Batch,
    chaos_row: Record,
    services: WorkerServices,
    email: str,
) -> None:
    """The task reaches a worker while the job's row is still uncommitted, as when a worker is
    faster than the API's commit; the job must still run once the row lands."""
    jobs = 3
    env = whole.app_env
    s3 = chaos.s3_client(whole)
    engine = create_engine(services.database_url)
    broker = Celery(broker=services.redis_url)
    try:
        with Session(engine) as session:
            user = session.scalars(select(User).where(User.email == email)).one()
            ids = [uuid.uuid4() for _ in range(jobs)]
            for job_id in ids:
                job = new_job(user.id, id=job_id)
                s3.put_object(
                    Bucket=env["S3_BUCKET"], Key=job.original_key, Body=make_image("PNG", (64, 48))
                )
                session.add(job)
            session.flush()  # the rows exist in this transaction only
            for job_id in ids:
                broker.send_task(
                    RESTORE_TASK, args=[str(job_id)], task_id=str(job_id), queue="restoration"
                )
            time.sleep(3)  # the worker takes the tasks and finds no job
            session.commit()
        committed_at = time.monotonic()
        batch.track([str(job_id) for job_id in ids])
        last = batch.settle(timeout=drain_bound(jobs) + 30)
    finally:
        broker.close()
        engine.dispose()
    row = chaos_row(
        batch.outcome(
            "enqueue race: task before commit",
            recovery_s=last - committed_at,
            bound_s=drain_bound(jobs),
        )
    )
    row.check()
