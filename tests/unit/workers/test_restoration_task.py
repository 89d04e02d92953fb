"""The restoration task with ComfyUI replaced at its interface (a fake `Restorer`).

The database is the unit tier's SQLite session factory, S3 is moto. Failures of S3 itself are made by
answering the boto3 call with an error before it is sent, so the real `S3Storage` classifies them.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import anyio
import pytest
from botocore.exceptions import EndpointConnectionError
from celery.exceptions import Retry, SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, WorkflowName
from app.models import JobStatus, RestorationJob
from app.models.base import utcnow
from app.repositories.restoration import RestorationJobRepository
from app.services import s3
from app.services.comfyui import (
    ComfyUITimeout,
    ComfyUIUnavailable,
    ExecutionCancelled,
    ExecutionFailed,
    RestoredImage,
    WorkflowRejected,
)
from app.workers.context import WorkerContext
from app.workers.tasks import restoration as task_module
from app.workers.tasks.restoration import Outcome, Result, backoff_seconds, process_job
from fixtures import images
from fixtures.accounts import Account
from fixtures.jobs import new_job
from tests.unit.helpers import BUCKET

pytestmark = pytest.mark.anyio

RESULT_SIZE = (96, 72)


# --- doubles


Hook = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class FakeRestorer:
    """Stands in for `ComfyUIService`: records each call, raises the queued errors, then succeeds."""

    errors: list[BaseException] = field(default_factory=list)
    hook: Hook | None = None
    data: bytes = field(default_factory=lambda: images.make_image("PNG", RESULT_SIZE, seed=9))
    calls: list[dict[str, Any]] = field(default_factory=list)

    async def restore(self, **kwargs: Any) -> RestoredImage:
        self.calls.append(kwargs)
        if self.hook is not None:
            await self.hook(kwargs)
        if self.errors:
            raise self.errors.pop(0)
        return RestoredImage(
            data=self.data,
            width=RESULT_SIZE[0],
            height=RESULT_SIZE[1],
            prompt_id=f"prompt-{len(self.calls)}",
        )


class SerializedSessions:
    """The session factory, one session at a time.

    All unit-tier sessions share one SQLite connection, and the task's heartbeat runs beside its main
    flow; interleaved savepoints on one connection would trip over each other.
    """

    def __init__(self, factory: async_sessionmaker[AsyncSession]) -> None:
        self.factory = factory
        self.lock = asyncio.Lock()

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[AsyncSession]:
        async with self.lock, self.factory() as session:
            yield session


FailS3 = Callable[[str, "Exception | tuple[int, str]"], None]


@pytest.fixture
def fail_s3(s3_client: Any) -> Iterator[FailS3]:
    """Answer every call of an S3 operation with an error: raised, or an (HTTP status, code) answer.

    The handler runs before the request is sent, so the real `S3Storage` classifies the error. It is
    unregistered afterwards: botocore clients may share their event handlers.
    """
    registered: list[tuple[str, Callable[..., Any]]] = []

    def fail(operation: str, error: Exception | tuple[int, str]) -> None:
        def answer(**_: Any) -> tuple[Any, dict[str, Any]]:
            if isinstance(error, Exception):
                raise error
            status, code = error
            http = type("Response", (), {"status_code": status})()
            return http, {
                "Error": {"Code": code, "Message": code},
                "ResponseMetadata": {"HTTPStatusCode": status},
            }

        event = f"before-call.s3.{operation}"
        s3_client.meta.events.register_first(event, answer)
        registered.append((event, answer))

    yield fail
    for event, handler in registered:
        s3_client.meta.events.unregister(event, handler)


UNREACHABLE = EndpointConnectionError(endpoint_url="http://s3.invalid")


# --- fixtures


@pytest.fixture
def restorer() -> FakeRestorer:
    return FakeRestorer()


@pytest.fixture
def ctx(
    settings: Settings,
    session_factory: async_sessionmaker[AsyncSession],
    storage: s3.S3Storage,
    restorer: FakeRestorer,
) -> WorkerContext:
    settings.task_retry_budget_seconds = 600.0
    settings.task_retry_backoff_seconds = 2.0
    settings.task_retry_backoff_max_seconds = 30.0
    return WorkerContext(
        settings=settings,
        session_factory=SerializedSessions(session_factory),  # type: ignore[arg-type]
        storage=storage,
        restorer=restorer,
    )


async def add_job(
    ctx: WorkerContext,
    account: Account,
    *,
    fmt: str = "PNG",
    upload: bool = True,
    **fields: Any,
) -> RestorationJob:
    """A committed job whose original is in S3 (unless `upload` is False)."""
    job_id = uuid.uuid4()
    extension = images.FORMATS[fmt]
    job = new_job(
        account.user.id,
        id=job_id,
        original_key=s3.original_key(account.user.id, job_id, extension),
        content_type=images.CONTENT_TYPES[fmt],
        **fields,
    )
    if upload:
        data = images.make_image(fmt, (job.width, job.height))
        await ctx.storage.put_bytes(job.original_key, data, content_type=job.content_type)
    async with ctx.session_factory() as session:
        session.add(job)
        await session.commit()
    return job


@pytest.fixture
async def job(ctx: WorkerContext, alice: Account) -> RestorationJob:
    return await add_job(ctx, alice)


async def load(ctx: WorkerContext, job_id: uuid.UUID) -> RestorationJob:
    async with ctx.session_factory() as session:
        job = await RestorationJobRepository(session).get(job_id)
    assert job is not None
    return job


async def cancel(ctx: WorkerContext, job: RestorationJob) -> None:
    async with ctx.session_factory() as session:
        assert await RestorationJobRepository(session).cancel(job.id, job.user_id) is not None
        await session.commit()


def keys(s3_client: Any, prefix: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [entry["Key"] for entry in listing.get("Contents", [])]


# --- success


@pytest.mark.parametrize("fmt", list(images.FORMATS))
async def test_success_stores_the_result_and_completes_the_job(
    ctx: WorkerContext, alice: Account, restorer: FakeRestorer, s3_client: Any, fmt: str
) -> None:
    job = await add_job(ctx, alice, fmt=fmt)
    original = await ctx.storage.download(job.original_key)

    outcome = await process_job(ctx, job.id)

    assert outcome == Outcome(Result.COMPLETED, attempt=1)
    done = await load(ctx, job.id)
    assert done.status is JobStatus.COMPLETED
    assert done.result_key == s3.result_key(alice.user.id, job.id)
    assert (done.result_width, done.result_height) == RESULT_SIZE
    assert (done.comfyui_prompt_id, done.progress, done.attempts) == ("prompt-1", 1.0, 1)
    assert (done.error_message, done.heartbeat_at) == (None, None)
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.finished_at >= done.started_at

    stored = s3_client.get_object(Bucket=BUCKET, Key=done.result_key)
    assert stored["Body"].read() == restorer.data
    assert stored["ContentType"] == "image/png"

    [call] = restorer.calls
    assert call["job_id"] == job.id
    assert call["attempt"] == 1
    assert call["image"] == original
    assert call["extension"] == images.FORMATS[fmt]
    assert call["workflow"] is WorkflowName.CORE
    # Scale, model and time limit are the restorer's own, from settings (see test_worker_context).
    assert set(call) == {
        "job_id",
        "attempt",
        "image",
        "extension",
        "workflow",
        "on_progress",
        "cancel",
    }
    assert isinstance(call["cancel"], asyncio.Event)
    assert not call["cancel"].is_set()
    assert callable(call["on_progress"])


async def test_the_jobs_own_workflow_is_run(
    ctx: WorkerContext, alice: Account, restorer: FakeRestorer
) -> None:
    job = await add_job(ctx, alice, workflow=WorkflowName.MODEL_UPSCALE.value)

    assert (await process_job(ctx, job.id)).result is Result.COMPLETED
    assert restorer.calls[0]["workflow"] is WorkflowName.MODEL_UPSCALE


async def test_progress_reaches_the_database_while_the_restorer_works(
    ctx: WorkerContext,
    job: RestorationJob,
    restorer: FakeRestorer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ctx.settings.task_heartbeat_seconds = 0.01
    real_heartbeat = RestorationJobRepository.heartbeat
    beats: list[float] = []

    async def flaky_heartbeat(self: RestorationJobRepository, *args: Any, **kwargs: Any) -> bool:
        beats.append(kwargs["progress"])
        if len(beats) == 1:  # a database blip must not end the run
            raise OperationalError("UPDATE", {}, Exception("database is locked"))
        return await real_heartbeat(self, *args, **kwargs)

    monkeypatch.setattr(RestorationJobRepository, "heartbeat", flaky_heartbeat)
    seen: list[float] = []

    async def report(call: dict[str, Any]) -> None:
        for value in (0.25, 0.6, 0.3):  # stale, lower reports never move progress back
            call["on_progress"](value)
        with anyio.fail_after(2):
            while not seen or seen[-1] < 0.6:
                await asyncio.sleep(0.01)
                seen.append((await load(ctx, job.id)).progress)
        assert not call["cancel"].is_set()

    restorer.hook = report
    restorer.errors = [ExecutionFailed("node 7 (ImageScaleBy) failed: OOM")]

    outcome = await process_job(ctx, job.id)

    assert outcome.result is Result.FAILED
    assert len(beats) >= 2
    assert seen[-1] == 0.6
    # The attempt failed: the progress it reached stays for the client to see.
    assert (await load(ctx, job.id)).progress == 0.6


# --- errors that are worth retrying


TRANSIENT = {
    "comfyui-unavailable": ComfyUIUnavailable("ComfyUI at http://comfyui:8188 is unreachable"),
    "comfyui-timeout": ComfyUITimeout("prompt p-1 did not finish within 600 s"),
}


@pytest.mark.parametrize("error", TRANSIENT.values(), ids=TRANSIENT.keys())
async def test_transient_comfyui_error_releases_the_lease_for_a_retry(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer, error: Exception
) -> None:
    restorer.errors = [error]

    outcome = await process_job(ctx, job.id)

    assert outcome.result is Result.RETRY
    assert outcome.attempt == 1
    assert outcome.retry_in is not None
    assert 1.0 <= outcome.retry_in <= 2.0  # attempt 1: between half the base delay and the base
    after = await load(ctx, job.id)
    assert (after.status, after.heartbeat_at, after.attempts) == (JobStatus.PROCESSING, None, 1)
    assert after.error_message == outcome.message
    assert after.error_message is not None
    # Readable while it waits: what it waits for, why, and when it tries again.
    assert after.error_message.startswith(
        f"waiting for ComfyUI: {error} (attempt 1; trying again in "
    )
    assert outcome.retrying_since is not None

    # The retried message claims the released job and finishes it.
    assert await process_job(ctx, job.id, held_attempt=1) == Outcome(Result.COMPLETED, attempt=2)
    done = await load(ctx, job.id)
    assert (done.status, done.error_message, done.attempts) == (JobStatus.COMPLETED, None, 2)


@pytest.mark.parametrize(
    ("operation", "s3_error"),
    [
        ("GetObject", UNREACHABLE),
        ("GetObject", (503, "SlowDown")),
        ("PutObject", UNREACHABLE),
        ("PutObject", (500, "InternalError")),
    ],
    ids=["download-unreachable", "download-slowdown", "upload-unreachable", "upload-500"],
)
async def test_transient_s3_error_releases_the_lease_for_a_retry(
    ctx: WorkerContext,
    job: RestorationJob,
    restorer: FakeRestorer,
    s3_client: Any,
    fail_s3: FailS3,
    operation: str,
    s3_error: Exception | tuple[int, str],
) -> None:
    fail_s3(operation, s3_error)

    outcome = await process_job(ctx, job.id)

    assert outcome.result is Result.RETRY
    after = await load(ctx, job.id)
    assert (after.status, after.heartbeat_at) == (JobStatus.PROCESSING, None)
    assert after.error_message is not None
    assert after.error_message.startswith("waiting for storage: S3 ")
    assert len(restorer.calls) == (0 if operation == "GetObject" else 1)
    assert keys(s3_client, "results/") == []


async def test_retries_within_the_time_budget_then_gives_up(
    ctx: WorkerContext,
    job: RestorationJob,
    restorer: FakeRestorer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The budget is time since the first transient failure, however many attempts fit in it."""
    monkeypatch.setattr(task_module.random, "uniform", lambda low, high: high)
    ctx.settings.task_retry_budget_seconds = 300.0
    clock = [1_000_000.0]
    monkeypatch.setattr(task_module.time, "time", lambda: clock[0])
    restorer.errors = [ComfyUIUnavailable("ComfyUI is unreachable")] * 100

    outcomes = [await process_job(ctx, job.id)]
    while outcomes[-1].result is Result.RETRY:
        assert outcomes[-1].retrying_since == 1_000_000.0  # carried from the first failure
        clock[0] += outcomes[-1].retry_in or 0.0
        outcomes.append(
            await process_job(
                ctx, job.id, held_attempt=outcomes[-1].attempt, retrying_since=1_000_000.0
            )
        )

    *retried, last = outcomes
    # Backoff 2, 4, 8, 16, 30, 30, ... (capped): the retries' waits fit in the budget.
    waits = [outcome.retry_in or 0.0 for outcome in retried]
    assert waits[:6] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert sum(waits) <= 300.0 < sum(waits) + 30.0
    assert len(retried) > 5  # more than the old count of 5 retries
    assert last.result is Result.FAILED
    failed = await load(ctx, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == (
        f"Gave up after {len(outcomes)} attempts in {sum(waits):.0f} s: ComfyUI is unreachable"
    )
    assert (failed.attempts, failed.heartbeat_at) == (len(outcomes), None)
    assert failed.finished_at is not None
    assert last.message == failed.error_message
    # Finished: a further message changes nothing.
    assert await process_job(ctx, job.id) == Outcome(Result.SKIPPED)


# --- errors that retrying will not fix


PERMANENT = {
    "workflow-rejected": WorkflowRejected(
        "ComfyUI rejected the workflow: node 3 (ImageScaleBy): scale_by 99 is above the maximum 8",
        node_errors={"3": {"errors": [{"type": "value_bigger_than_max"}]}},
    ),
    "execution-failed": ExecutionFailed(
        "ComfyUI node 5 (ImageSharpen) failed: RuntimeError: CUDA out of memory",
        node_id="5",
        node_type="ImageSharpen",
    ),
}


@pytest.mark.parametrize("error", PERMANENT.values(), ids=PERMANENT.keys())
async def test_permanent_comfyui_error_fails_at_once(
    ctx: WorkerContext,
    job: RestorationJob,
    restorer: FakeRestorer,
    s3_client: Any,
    error: Exception,
) -> None:
    restorer.errors = [error]

    outcome = await process_job(ctx, job.id)

    assert outcome == Outcome(Result.FAILED, attempt=1, message=str(error))
    failed = await load(ctx, job.id)
    assert (failed.status, failed.error_message) == (JobStatus.FAILED, str(error))
    assert (failed.attempts, failed.heartbeat_at, failed.result_key) == (1, None, None)
    assert failed.finished_at is not None
    assert keys(s3_client, "results/") == []


async def test_missing_original_fails_at_once(
    ctx: WorkerContext, alice: Account, restorer: FakeRestorer
) -> None:
    job = await add_job(ctx, alice, upload=False)

    outcome = await process_job(ctx, job.id)

    assert outcome.result is Result.FAILED
    failed = await load(ctx, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == f"S3 download {job.original_key} failed: NoSuchKey"
    assert restorer.calls == []


async def test_result_upload_refused_fails_at_once(
    ctx: WorkerContext, job: RestorationJob, fail_s3: FailS3
) -> None:
    fail_s3("PutObject", (403, "AccessDenied"))

    assert (await process_job(ctx, job.id)).result is Result.FAILED
    failed = await load(ctx, job.id)
    key = s3.result_key(job.user_id, job.id)
    assert (failed.status, failed.result_key) == (JobStatus.FAILED, None)
    assert failed.error_message == f"S3 put {key} failed: AccessDenied"


async def test_unexpected_exception_fails_as_internal_error(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer
) -> None:
    restorer.errors = [KeyError("outputs")]

    outcome = await process_job(ctx, job.id)

    assert outcome.result is Result.FAILED
    failed = await load(ctx, job.id)
    assert failed.status is JobStatus.FAILED
    # Users read this message: it names the kind of failure, never internal details.
    assert failed.error_message == "Internal error (KeyError); see the worker log."


async def test_soft_time_limit_fails_the_job(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer
) -> None:
    restorer.errors = [SoftTimeLimitExceeded()]

    assert (await process_job(ctx, job.id)).result is Result.FAILED
    failed = await load(ctx, job.id)
    limit = ctx.settings.task_soft_time_limit_seconds
    assert failed.error_message == f"The job took longer than {limit:g} s."


async def test_interruption_we_did_not_ask_for_fails_the_job(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer
) -> None:
    """Someone interrupted ComfyUI behind our back: the job must not stay PROCESSING."""
    restorer.errors = [
        ExecutionCancelled("ComfyUI interrupted prompt p-1 at node 5 (ImageSharpen)")
    ]

    outcome = await process_job(ctx, job.id)

    assert outcome.result is Result.FAILED
    failed = await load(ctx, job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error_message == "ComfyUI interrupted prompt p-1 at node 5 (ImageSharpen)"


# --- cancel


async def test_cancel_during_processing_interrupts_the_restorer(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer, s3_client: Any
) -> None:
    ctx.settings.task_heartbeat_seconds = 0.02

    async def cancelled_while_running(call: dict[str, Any]) -> None:
        await cancel(ctx, job)  # DELETE /restorations/{id} while ComfyUI works
        with anyio.fail_after(2):
            await call["cancel"].wait()  # the next heartbeat notices
        raise ExecutionCancelled("ComfyUI interrupted prompt p-1")  # as the service does

    restorer.hook = cancelled_while_running

    outcome = await process_job(ctx, job.id)

    assert outcome == Outcome(Result.CANCELLED, attempt=1)
    assert restorer.calls[0]["cancel"].is_set()
    after = await load(ctx, job.id)
    assert (after.status, after.result_key, after.error_message) == (
        JobStatus.CANCELLED,
        None,
        None,
    )
    assert keys(s3_client, "results/") == []


async def test_result_of_a_job_cancelled_meanwhile_is_discarded(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer, s3_client: Any
) -> None:
    async def cancelled_just_before_the_end(_: dict[str, Any]) -> None:
        await cancel(ctx, job)

    restorer.hook = cancelled_just_before_the_end

    assert await process_job(ctx, job.id) == Outcome(Result.CANCELLED, attempt=1)
    after = await load(ctx, job.id)
    assert (after.status, after.result_key) == (JobStatus.CANCELLED, None)
    assert keys(s3_client, "results/") == []


@pytest.mark.parametrize(
    "error",
    [ComfyUIUnavailable("unreachable"), ExecutionFailed("node failed")],
    ids=["transient", "permanent"],
)
async def test_failure_after_cancel_keeps_the_job_cancelled(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer, error: Exception
) -> None:
    async def cancelled_then_failed(_: dict[str, Any]) -> None:
        await cancel(ctx, job)
        raise error

    restorer.hook = cancelled_then_failed

    assert await process_job(ctx, job.id) == Outcome(Result.CANCELLED, attempt=1)
    after = await load(ctx, job.id)
    assert (after.status, after.error_message) == (JobStatus.CANCELLED, None)


# --- duplicates, redeliveries, leases


@pytest.mark.parametrize("status", [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED])
async def test_redelivered_message_for_a_finished_job_is_skipped(
    ctx: WorkerContext, alice: Account, restorer: FakeRestorer, status: JobStatus
) -> None:
    job = await add_job(ctx, alice, status=status, attempts=1, progress=1.0)
    before = await load(ctx, job.id)

    assert await process_job(ctx, job.id) == Outcome(Result.SKIPPED)
    assert await process_job(ctx, job.id, held_attempt=1) == Outcome(Result.SKIPPED)

    after = await load(ctx, job.id)
    assert (after.status, after.attempts, after.updated_at) == (
        status,
        1,
        before.updated_at,
    )
    assert restorer.calls == []


async def test_message_for_a_job_held_by_a_live_lease_looks_again_after_the_lease(
    ctx: WorkerContext, alice: Account, restorer: FakeRestorer
) -> None:
    """A redelivery after a pool process died finds the dead attempt's lease still fresh: it must
    not end there, or the job stays PROCESSING for good."""
    ctx.settings.task_lease_seconds = 20
    beat = utcnow() - timedelta(seconds=5)
    job = await add_job(ctx, alice, status=JobStatus.PROCESSING, attempts=1, heartbeat_at=beat)

    outcome = await process_job(ctx, job.id)

    assert (outcome.result, outcome.attempt) == (Result.HELD, 1)
    assert outcome.retry_in is not None
    assert 15 <= outcome.retry_in <= 16 + 1  # the lease's remaining 15 s, plus a second
    assert restorer.calls == []
    assert (await load(ctx, job.id)).attempts == 1


async def test_job_of_a_dead_worker_is_taken_over(
    ctx: WorkerContext, alice: Account, restorer: FakeRestorer
) -> None:
    stale = utcnow() - timedelta(seconds=ctx.settings.task_lease_seconds + 1)
    job = await add_job(ctx, alice, status=JobStatus.PROCESSING, attempts=1, heartbeat_at=stale)

    assert await process_job(ctx, job.id) == Outcome(Result.COMPLETED, attempt=2)
    assert restorer.calls[0]["attempt"] == 2


async def test_unknown_job_is_reported_missing(ctx: WorkerContext, restorer: FakeRestorer) -> None:
    assert await process_job(ctx, uuid.uuid4()) == Outcome(Result.MISSING)
    assert restorer.calls == []


# --- the database


def database_down(*_: Any, **__: Any) -> Any:
    raise OperationalError("UPDATE restoration_jobs", {}, Exception("connection refused"))


async def test_database_error_at_claim_propagates(
    ctx: WorkerContext, job: RestorationJob, restorer: FakeRestorer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RestorationJobRepository, "claim", database_down)

    with pytest.raises(task_module.JobDatabaseError) as raised:
        await process_job(ctx, job.id, held_attempt=3)

    assert isinstance(raised.value.__cause__, OperationalError)
    assert raised.value.attempt == 3  # nothing claimed: the lease held before stays ours
    assert restorer.calls == []
    assert (await load(ctx, job.id)).status is JobStatus.PENDING


async def test_database_error_after_the_claim_propagates_with_the_attempt(
    ctx: WorkerContext, job: RestorationJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RestorationJobRepository, "complete", database_down)

    with pytest.raises(task_module.JobDatabaseError) as raised:
        await process_job(ctx, job.id)

    assert isinstance(raised.value.__cause__, OperationalError)
    assert raised.value.attempt == 1
    monkeypatch.undo()
    # The retry, holding attempt 1, takes over at once although the lease is still live.
    assert await process_job(ctx, job.id, held_attempt=1) == Outcome(Result.COMPLETED, attempt=2)


# --- backoff


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (7, 100.0), (50, 100.0)],
)
def test_backoff_grows_exponentially_up_to_the_cap(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, attempt: int, ceiling: float
) -> None:
    settings.task_retry_backoff_seconds = 2.0
    settings.task_retry_backoff_max_seconds = 100.0
    monkeypatch.setattr(task_module.random, "uniform", lambda low, high: low)
    assert backoff_seconds(attempt, settings) == ceiling / 2
    monkeypatch.setattr(task_module.random, "uniform", lambda low, high: high)
    assert backoff_seconds(attempt, settings) == ceiling


def test_backoff_jitter_stays_within_bounds(settings: Settings) -> None:
    settings.task_retry_backoff_seconds = 2.0
    settings.task_retry_backoff_max_seconds = 100.0

    delays = [backoff_seconds(3, settings) for _ in range(200)]

    assert all(4.0 <= delay <= 8.0 for delay in delays)
    assert len(set(delays)) > 100  # jittered, not one fixed value


# --- the Celery task around process_job


@pytest.fixture
def task_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings.task_retry_budget_seconds = 600.0
    monkeypatch.setattr(task_module, "get_settings", lambda: settings)
    return settings


@dataclass
class ScriptedRunJob:
    """Stands in for `run_job`: each call pops its outcome (or error) from `script`."""

    script: list[Outcome | Exception] = field(default_factory=list)
    calls: list[tuple[uuid.UUID, int | None]] = field(default_factory=list)
    since: list[float | None] = field(default_factory=list)

    async def __call__(
        self,
        _: Settings,
        job_id: uuid.UUID,
        held_attempt: int | None,
        retrying_since: float | None = None,
    ) -> Outcome:
        self.calls.append((job_id, held_attempt))
        self.since.append(retrying_since)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


@pytest.fixture
def run_job(monkeypatch: pytest.MonkeyPatch) -> ScriptedRunJob:
    scripted = ScriptedRunJob()
    monkeypatch.setattr(task_module, "run_job", scripted)
    return scripted


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every `self.retry(...)`; the real one still runs."""
    recorded: list[dict[str, Any]] = []
    task_class = type(
        task_module.restore_image._get_current_object()
    )  # the task, not its lazy proxy
    real_retry = task_class.retry

    def retry(self: Any, *args: Any, **kwargs: Any) -> Any:
        recorded.append(kwargs)
        return real_retry(self, *args, **kwargs)

    monkeypatch.setattr(task_class, "retry", retry)
    return recorded


def db_error() -> task_module.JobDatabaseError:
    error = task_module.JobDatabaseError("database unavailable", 4)
    error.__cause__ = OperationalError("SELECT 1", {}, Exception("connection refused"))
    return error


def test_task_retries_a_retry_outcome_with_its_countdown_and_attempt(
    task_settings: Settings, run_job: ScriptedRunJob, retries: list[dict[str, Any]]
) -> None:
    job_id = uuid.uuid4()
    run_job.script.extend(
        [
            Outcome(Result.RETRY, attempt=1, retry_in=3.25, retrying_since=123.0),
            Outcome(Result.COMPLETED, attempt=2),
        ]
    )

    result = task_module.restore_image.apply(args=[str(job_id)])

    assert result.get() == "completed"
    assert run_job.calls == [(job_id, None), (job_id, 1)]
    assert run_job.since == [None, 123.0]
    assert retries == [{"countdown": 3.25, "kwargs": {"held_attempt": 1, "retrying_since": 123.0}}]


def test_task_looks_again_at_a_held_job_after_the_lease(
    task_settings: Settings, run_job: ScriptedRunJob, retries: list[dict[str, Any]]
) -> None:
    job_id = uuid.uuid4()
    run_job.script.extend(
        [Outcome(Result.HELD, attempt=1, retry_in=12.5), Outcome(Result.COMPLETED, attempt=2)]
    )

    result = task_module.restore_image.apply(args=[str(job_id)])

    assert result.get() == "completed"  # not "skipped" after the first look
    assert run_job.calls == [(job_id, None), (job_id, None)]
    assert retries == [{"countdown": 12.5, "kwargs": {"retrying_since": None}}]


def test_task_waits_for_a_job_not_yet_committed_then_gives_up(
    task_settings: Settings,
    run_job: ScriptedRunJob,
    retries: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The enqueue race: a message faster than the API's commit looks again during the grace."""
    task_settings.task_missing_job_grace_seconds = 30.0
    clock = [5000.0]

    def ticking() -> float:
        clock[0] += 4.0  # each look costs 4 s of the grace
        return clock[0]

    monkeypatch.setattr(task_module.time, "time", ticking)
    run_job.script.extend([Outcome(Result.MISSING)] * 20)

    result = task_module.restore_image.apply(args=[str(uuid.uuid4())])

    assert result.get() == "missing"
    # Looks at 5004, 5008, ... while under 30 s from the first: 8 retries, then it gives up.
    assert len(retries) == 8
    assert all(retry["kwargs"] == {"missing_since": 5004.0} for retry in retries)
    assert [retry["countdown"] for retry in retries][:5] == [0.5, 1.0, 2.0, 4.0, 5.0]


def test_task_runs_a_job_committed_during_the_grace(
    task_settings: Settings, run_job: ScriptedRunJob, retries: list[dict[str, Any]]
) -> None:
    run_job.script.extend([Outcome(Result.MISSING), Outcome(Result.COMPLETED, attempt=1)])

    assert task_module.restore_image.apply(args=[str(uuid.uuid4())]).get() == "completed"
    assert len(retries) == 1


@pytest.mark.parametrize("outcome", [Result.SKIPPED, Result.FAILED, Result.CANCELLED])
def test_task_returns_final_outcomes(
    task_settings: Settings,
    run_job: ScriptedRunJob,
    retries: list[dict[str, Any]],
    outcome: Result,
) -> None:
    run_job.script.append(Outcome(outcome, attempt=1))

    assert task_module.restore_image.apply(args=[str(uuid.uuid4())]).get() == outcome.value
    assert retries == []


def test_task_retries_database_errors_holding_the_attempt(
    task_settings: Settings,
    run_job: ScriptedRunJob,
    retries: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(task_module.random, "uniform", lambda low, high: high)
    job_id = uuid.uuid4()
    run_job.script.extend([db_error(), Outcome(Result.COMPLETED, attempt=5)])

    result = task_module.restore_image.apply(args=[str(job_id)])

    assert result.get() == "completed"
    assert run_job.calls == [(job_id, None), (job_id, 4)]
    [retry] = retries
    assert retry["countdown"] == task_settings.task_retry_backoff_seconds  # first retry
    assert retry["kwargs"]["held_attempt"] == 4
    assert isinstance(retry["exc"], task_module.JobDatabaseError)


def test_task_gives_up_on_the_database_when_the_budget_is_spent(
    task_settings: Settings,
    run_job: ScriptedRunJob,
    retries: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(task_module.random, "uniform", lambda low, high: high)
    task_settings.task_retry_budget_seconds = 20.0
    clock = [7000.0]

    def ticking() -> float:
        clock[0] += 5.0
        return clock[0]

    monkeypatch.setattr(task_module.time, "time", ticking)
    run_job.script.extend([db_error()] * 10)

    result = task_module.restore_image.apply(args=[str(uuid.uuid4())])

    assert result.failed()
    assert isinstance(result.result, task_module.JobDatabaseError)
    # Looks at +0 (wait 2), +5 (4), +10 (8): +10 + 8 > 20 stops there.
    assert [retry["countdown"] for retry in retries] == [2.0, 4.0]
    assert len(run_job.calls) == 3
    assert [retry["kwargs"] for retry in retries] == [
        {"held_attempt": 4, "retrying_since": 7005.0}
    ] * 2


def test_task_called_directly_raises_instead_of_retrying(
    task_settings: Settings, run_job: ScriptedRunJob
) -> None:
    run_job.script.append(Outcome(Result.RETRY, attempt=1, retry_in=1.0))

    with pytest.raises(Retry):
        task_module.restore_image(str(uuid.uuid4()))


@pytest.fixture
def task_context(
    ctx: WorkerContext, task_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> list[Settings]:
    """`context_factory` swapped for one handing out the test doubles; records each opening."""
    opened: list[Settings] = []

    @asynccontextmanager
    async def doubles(settings: Settings) -> AsyncIterator[WorkerContext]:
        opened.append(settings)
        # The task runs in an event loop of its own: give it a lock of that loop.
        session_factory = ctx.session_factory.factory  # type: ignore[attr-defined]
        yield WorkerContext(
            settings=settings,
            session_factory=SerializedSessions(session_factory),  # type: ignore[arg-type]
            storage=ctx.storage,
            restorer=ctx.restorer,
        )

    monkeypatch.setattr(task_module, "context_factory", doubles)
    return opened


async def test_task_runs_process_job_in_a_context_from_the_factory(
    ctx: WorkerContext, job: RestorationJob, task_settings: Settings, task_context: list[Settings]
) -> None:
    """The whole task, eagerly, with `context_factory` handing out the test doubles."""
    result = await anyio.to_thread.run_sync(
        lambda: task_module.restore_image.apply(args=[str(job.id)])
    )

    assert result.get() == "completed"
    assert task_context == [task_settings]
    done = await load(ctx, job.id)
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 1)


async def test_task_takes_its_job_back_after_a_database_error(
    ctx: WorkerContext,
    job: RestorationJob,
    task_context: list[Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database fails as the result is recorded: the retry must not wait out its own lease."""
    real_complete = RestorationJobRepository.complete
    failures = [OperationalError("UPDATE restoration_jobs", {}, Exception("server closed"))]

    async def complete_after_a_blip(
        self: RestorationJobRepository, *args: Any, **kwargs: Any
    ) -> Any:
        if failures:
            raise failures.pop()
        return await real_complete(self, *args, **kwargs)

    monkeypatch.setattr(RestorationJobRepository, "complete", complete_after_a_blip)
    monkeypatch.setattr(task_module.random, "uniform", lambda low, high: 0.0)

    result = await anyio.to_thread.run_sync(
        lambda: task_module.restore_image.apply(args=[str(job.id)])
    )

    assert result.get() == "completed"
    assert len(task_context) == 2
    done = await load(ctx, job.id)
    assert (done.status, done.attempts) == (JobStatus.COMPLETED, 2)


async def test_soft_time_limit_outside_process_job_still_fails_the_job(
    ctx: WorkerContext,
    job: RestorationJob,
    task_context: list[Settings],
    run_job: ScriptedRunJob,
    task_settings: Settings,
) -> None:
    """Celery's signal can surface in the event loop itself; the job must not stay PROCESSING."""
    async with ctx.session_factory() as session:
        await RestorationJobRepository(session).claim(job.id, lease_expired_before=utcnow())
        await session.commit()
    run_job.script.append(SoftTimeLimitExceeded())

    result = await anyio.to_thread.run_sync(
        lambda: task_module.restore_image.apply(args=[str(job.id)])
    )

    assert result.get() == "failed"
    failed = await load(ctx, job.id)
    assert failed.status is JobStatus.FAILED
    limit = task_settings.task_soft_time_limit_seconds
    assert failed.error_message == f"The job took longer than {limit:g} s."
