"""RestorationJobRepository: every status change is a compare-and-set, fenced by the attempt."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import JobStatus, RestorationJob
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from fixtures.accounts import Account
from fixtures.jobs import new_job

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=60)
FINISHED = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture
def jobs(session: AsyncSession) -> RestorationJobRepository:
    return RestorationJobRepository(session)


async def add_job(jobs: RestorationJobRepository, account: Account, **fields: object) -> uuid.UUID:
    job = await jobs.add(new_job(account.user.id, **fields))
    return job.id


def live_lease_cutoff() -> datetime:
    """`lease_expired_before` as the worker computes it: leases renewed within LEASE are live."""
    return utcnow() - LEASE


async def claim(
    jobs: RestorationJobRepository, job_id: uuid.UUID, *, held_attempt: int | None = None
) -> RestorationJob | None:
    return await jobs.claim(
        job_id, lease_expired_before=live_lease_cutoff(), held_attempt=held_attempt
    )


async def reload(jobs: RestorationJobRepository, job_id: uuid.UUID) -> RestorationJob:
    job = await jobs.get(job_id)
    assert job is not None
    return job


# --- claim


async def test_claim_takes_a_pending_job(jobs: RestorationJobRepository, alice: Account) -> None:
    job_id = await add_job(jobs, alice, updated_at=LONG_AGO)
    before = utcnow()

    job = await claim(jobs, job_id)

    assert job is not None
    assert job.status is JobStatus.PROCESSING
    assert job.attempts == 1
    assert job.started_at is not None
    assert job.started_at >= before
    assert job.heartbeat_at is not None
    assert job.heartbeat_at >= before
    assert job.updated_at >= before  # onupdate applies to the compare-and-set UPDATE too
    assert job.started_at.tzinfo is UTC
    assert job.heartbeat_at.tzinfo is UTC


async def test_no_second_claim_while_the_lease_is_live(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    first = await claim(jobs, job_id)
    assert first is not None

    assert await claim(jobs, job_id) is None
    assert await claim(jobs, job_id, held_attempt=7) is None  # someone else's attempt
    job = await reload(jobs, job_id)
    assert (job.status, job.attempts) == (JobStatus.PROCESSING, 1)


async def test_claim_after_the_lease_ran_out(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    first = await claim(jobs, job_id)
    assert first is not None
    started_at, heartbeat_at = first.started_at, first.heartbeat_at

    # The worker died: its last heartbeat is older than the cutoff.
    job = await jobs.claim(job_id, lease_expired_before=utcnow() + timedelta(seconds=1))

    assert job is not None
    assert job.attempts == 2
    assert job.started_at == started_at  # the first start is kept
    assert job.heartbeat_at is not None
    assert heartbeat_at is not None
    assert job.heartbeat_at >= heartbeat_at


async def test_claim_of_a_released_lease(jobs: RestorationJobRepository, alice: Account) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None

    assert await jobs.release_for_retry(job_id, 1, "Attempt 1 failed: busy") is True
    released = await reload(jobs, job_id)
    assert released.status is JobStatus.PROCESSING
    assert released.heartbeat_at is None
    assert released.error_message == "Attempt 1 failed: busy"

    job = await claim(jobs, job_id)
    assert job is not None
    assert (job.status, job.attempts) == (JobStatus.PROCESSING, 2)
    assert job.heartbeat_at is not None


async def test_held_attempt_reclaims_its_own_live_lease_once(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None

    job = await claim(jobs, job_id, held_attempt=1)
    assert job is not None
    assert job.attempts == 2

    # A second copy of the same retry message holds a stale attempt number now.
    assert await claim(jobs, job_id, held_attempt=1) is None
    assert (await reload(jobs, job_id)).attempts == 2


@pytest.mark.parametrize("status", FINISHED)
async def test_claim_never_takes_a_finished_job(
    jobs: RestorationJobRepository, alice: Account, status: JobStatus
) -> None:
    job_id = await add_job(jobs, alice, status=status, attempts=1, heartbeat_at=None)

    claimed = await jobs.claim(
        job_id, lease_expired_before=utcnow() + timedelta(days=1), held_attempt=1
    )

    assert claimed is None
    job = await reload(jobs, job_id)
    assert (job.status, job.attempts, job.started_at) == (status, 1, None)


async def test_claim_of_an_unknown_job(jobs: RestorationJobRepository) -> None:
    assert await claim(jobs, uuid.uuid4()) is None


# --- heartbeat


async def test_heartbeat_renews_the_lease_and_stores_clamped_progress(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(
        jobs, alice, status=JobStatus.PROCESSING, attempts=1, heartbeat_at=LONG_AGO
    )

    assert await jobs.heartbeat(job_id, 1, progress=0.25) is True
    job = await reload(jobs, job_id)
    assert job.progress == 0.25
    assert job.heartbeat_at is not None
    assert job.heartbeat_at > LONG_AGO + timedelta(days=365)

    assert await jobs.heartbeat(job_id, 1, progress=1.5) is True
    assert (await reload(jobs, job_id)).progress == 1.0
    assert await jobs.heartbeat(job_id, 1, progress=-0.5) is True
    assert (await reload(jobs, job_id)).progress == 0.0


async def test_heartbeat_is_refused_after_cancel(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None
    assert await jobs.cancel(job_id, alice.user.id) is not None

    assert await jobs.heartbeat(job_id, 1, progress=0.5) is False
    job = await reload(jobs, job_id)
    assert (job.status, job.progress, job.heartbeat_at) == (JobStatus.CANCELLED, 0.0, None)


async def test_heartbeat_is_refused_after_takeover(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None
    assert await jobs.claim(job_id, lease_expired_before=utcnow() + timedelta(seconds=1))

    assert await jobs.heartbeat(job_id, 1, progress=0.9) is False
    assert (await reload(jobs, job_id)).progress == 0.0
    assert await jobs.heartbeat(job_id, 2, progress=0.4) is True
    assert (await reload(jobs, job_id)).progress == 0.4


async def test_release_for_retry_is_refused_after_cancel(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None
    assert await jobs.cancel(job_id, alice.user.id) is not None

    assert await jobs.release_for_retry(job_id, 1, "busy") is False
    job = await reload(jobs, job_id)
    assert (job.status, job.error_message) == (JobStatus.CANCELLED, None)


# --- complete and fail, fenced by the attempt


async def test_complete_records_the_result(jobs: RestorationJobRepository, alice: Account) -> None:
    job_id = await add_job(jobs, alice, error_message="Attempt 1 failed: busy")
    assert await claim(jobs, job_id) is not None
    await jobs.heartbeat(job_id, 1, progress=0.5)

    job = await jobs.complete(
        job_id, 1, result_key="results/x.png", width=128, height=96, prompt_id="p-1"
    )

    assert job is not None
    assert job.status is JobStatus.COMPLETED
    assert (job.result_key, job.result_width, job.result_height) == ("results/x.png", 128, 96)
    assert job.comfyui_prompt_id == "p-1"
    assert (job.progress, job.error_message, job.heartbeat_at) == (1.0, None, None)
    assert job.finished_at is not None
    assert job.finished_at.tzinfo is UTC
    assert job.started_at is not None
    assert job.finished_at >= job.started_at


async def test_complete_by_a_stale_attempt_changes_nothing(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None
    assert await claim(jobs, job_id, held_attempt=1) is not None  # attempt 2 holds it now

    stale = await jobs.complete(job_id, 1, result_key="r", width=1, height=1, prompt_id="old")

    assert stale is None
    job = await reload(jobs, job_id)
    assert (job.status, job.result_key, job.comfyui_prompt_id) == (JobStatus.PROCESSING, None, None)
    assert await jobs.complete(job_id, 2, result_key="r", width=1, height=1, prompt_id="new")


async def test_complete_after_cancel_changes_nothing(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None
    assert await jobs.cancel(job_id, alice.user.id) is not None

    assert await jobs.complete(job_id, 1, result_key="r", width=1, height=1, prompt_id="p") is None
    job = await reload(jobs, job_id)
    assert (job.status, job.result_key) == (JobStatus.CANCELLED, None)


async def test_fail_is_fenced_by_the_attempt(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    assert await claim(jobs, job_id) is not None

    assert await jobs.fail(job_id, 2, "not mine") is None
    assert (await reload(jobs, job_id)).status is JobStatus.PROCESSING

    job = await jobs.fail(job_id, 1, "Workflow rejected")
    assert job is not None
    assert (job.status, job.error_message, job.heartbeat_at) == (
        JobStatus.FAILED,
        "Workflow rejected",
        None,
    )
    assert job.finished_at is not None
    # Finished: neither a second fail nor a claim moves it.
    assert await jobs.fail(job_id, 1, "again") is None
    assert await claim(jobs, job_id, held_attempt=1) is None
    assert (await reload(jobs, job_id)).error_message == "Workflow rejected"


# --- cancel and fail_pending, from the API


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.PROCESSING])
async def test_cancel_an_active_job(
    jobs: RestorationJobRepository, alice: Account, status: JobStatus
) -> None:
    job_id = await add_job(jobs, alice, status=status, heartbeat_at=utcnow())

    job = await jobs.cancel(job_id, alice.user.id)

    assert job is not None
    assert (job.status, job.heartbeat_at) == (JobStatus.CANCELLED, None)
    assert job.finished_at is not None
    assert job.finished_at.tzinfo is UTC


@pytest.mark.parametrize("status", FINISHED)
async def test_cancel_leaves_a_finished_job_alone(
    jobs: RestorationJobRepository, alice: Account, status: JobStatus
) -> None:
    job_id = await add_job(jobs, alice, status=status, finished_at=LONG_AGO)

    assert await jobs.cancel(job_id, alice.user.id) is None
    job = await reload(jobs, job_id)
    assert (job.status, job.finished_at) == (status, LONG_AGO)


async def test_cancel_only_the_owners_job(
    jobs: RestorationJobRepository, alice: Account, bob: Account
) -> None:
    job_id = await add_job(jobs, alice)

    assert await jobs.cancel(job_id, bob.user.id) is None
    assert (await reload(jobs, job_id)).status is JobStatus.PENDING


async def test_fail_pending_fails_a_pending_job(
    jobs: RestorationJobRepository, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)

    job = await jobs.fail_pending(job_id, "The task queue is unavailable.")

    assert job is not None
    assert (job.status, job.error_message) == (JobStatus.FAILED, "The task queue is unavailable.")
    assert job.finished_at is not None


@pytest.mark.parametrize("status", [JobStatus.PROCESSING, *FINISHED])
async def test_fail_pending_only_touches_pending_jobs(
    jobs: RestorationJobRepository, alice: Account, status: JobStatus
) -> None:
    job_id = await add_job(jobs, alice, status=status)

    assert await jobs.fail_pending(job_id, "queue down") is None
    job = await reload(jobs, job_id)
    assert (job.status, job.error_message) == (status, None)


# --- reads


async def test_list_for_user_newest_first_with_pagination_and_total(
    jobs: RestorationJobRepository, alice: Account, bob: Account
) -> None:
    base = datetime(2026, 1, 1, tzinfo=UTC)
    # Inserted out of order, so the order can only come from created_at.
    ids = {}
    for minute in (3, 0, 4, 1, 2):
        ids[minute] = await add_job(jobs, alice, created_at=base + timedelta(minutes=minute))
    await add_job(jobs, bob, created_at=base + timedelta(minutes=10))
    newest_first = [ids[m] for m in (4, 3, 2, 1, 0)]

    page, total = await jobs.list_for_user(alice.user.id, limit=2, offset=0)
    assert ([job.id for job in page], total) == (newest_first[:2], 5)

    page, total = await jobs.list_for_user(alice.user.id, limit=2, offset=2)
    assert ([job.id for job in page], total) == (newest_first[2:4], 5)

    page, total = await jobs.list_for_user(alice.user.id, limit=2, offset=4)
    assert ([job.id for job in page], total) == (newest_first[4:], 5)

    page, total = await jobs.list_for_user(alice.user.id, limit=10, offset=10)
    assert (list(page), total) == ([], 5)


async def test_list_for_a_user_without_jobs(
    jobs: RestorationJobRepository, alice: Account, bob: Account
) -> None:
    await add_job(jobs, alice)

    page, total = await jobs.list_for_user(bob.user.id, limit=10, offset=0)

    assert (list(page), total) == ([], 0)


async def test_idempotency_lookup_is_per_user(
    jobs: RestorationJobRepository, alice: Account, bob: Account
) -> None:
    alices = await add_job(jobs, alice, idempotency_key="key-1")
    bobs = await add_job(jobs, bob, idempotency_key="key-1")
    await add_job(jobs, alice)  # no key

    found = await jobs.get_by_idempotency_key(alice.user.id, "key-1")
    assert found is not None
    assert found.id == alices
    found = await jobs.get_by_idempotency_key(bob.user.id, "key-1")
    assert found is not None
    assert found.id == bobs
    assert await jobs.get_by_idempotency_key(alice.user.id, "key-2") is None


async def test_get_for_user_hides_other_users_jobs(
    jobs: RestorationJobRepository, alice: Account, bob: Account
) -> None:
    job_id = await add_job(jobs, alice)

    mine = await jobs.get_for_user(job_id, alice.user.id)
    assert mine is not None
    assert mine.id == job_id
    assert await jobs.get_for_user(job_id, bob.user.id) is None
    assert await jobs.get_for_user(uuid.uuid4(), alice.user.id) is None


async def test_get_sees_changes_made_by_other_sessions(
    jobs: RestorationJobRepository, session_factory, alice: Account
) -> None:
    job_id = await add_job(jobs, alice)
    await jobs.session.commit()
    loaded = await reload(jobs, job_id)
    assert loaded.status is JobStatus.PENDING

    async with session_factory() as other:
        assert await RestorationJobRepository(other).cancel(job_id, alice.user.id) is not None
        await other.commit()

    assert (await reload(jobs, job_id)).status is JobStatus.CANCELLED
    again = await jobs.get_for_user(job_id, alice.user.id)
    assert again is not None
    assert again.status is JobStatus.CANCELLED


async def test_delete_removes_only_that_job(
    jobs: RestorationJobRepository, session: AsyncSession, alice: Account
) -> None:
    gone = await add_job(jobs, alice, status=JobStatus.COMPLETED)
    kept = await add_job(jobs, alice)
    job = await reload(jobs, gone)

    await jobs.delete(job)

    remaining = await session.scalars(select(RestorationJob.id))
    assert list(remaining) == [kept]
    assert await session.scalar(select(func.count()).select_from(RestorationJob)) == 1
