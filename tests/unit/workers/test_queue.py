"""CeleryTaskQueue: what the API sends to the broker, and how a broker that is down is reported."""

import threading
import time
import uuid
from typing import Any

import anyio
import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from app.core.config import Settings
from app.workers.celery_app import create_celery_app
from app.workers.queue import RESTORE_TASK, CeleryTaskQueue, QueueError

pytestmark = pytest.mark.anyio


def celery_for(settings: Settings, broker: str, **changes: Any) -> Celery:
    return create_celery_app(settings.model_copy(update={"redis_url": broker, **changes}))


async def test_sends_the_task_by_name_with_the_job_id_on_its_queue(settings: Settings) -> None:
    celery = celery_for(settings, "memory://")
    queue = f"unit-{uuid.uuid4().hex}"  # the memory broker is shared by the whole process
    job_id = uuid.uuid4()

    await CeleryTaskQueue(celery, queue=queue).enqueue_restoration(job_id)

    with celery.connection_for_read() as connection:
        inbox = connection.SimpleQueue(queue)
        message = inbox.get(timeout=1)
        message.ack()
        assert inbox.qsize() == 0
        inbox.close()
    assert message.headers["task"] == RESTORE_TASK
    assert message.headers["id"] == str(job_id)
    args, kwargs, _ = message.payload
    assert (args, kwargs) == ([str(job_id)], {})
    assert message.delivery_info["routing_key"] == queue


async def test_send_options_and_thread(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    celery = celery_for(settings, "memory://")
    sent: list[tuple[tuple[Any, ...], dict[str, Any], int]] = []

    def send_task(*args: Any, **kwargs: Any) -> None:
        sent.append((args, kwargs, threading.get_ident()))

    monkeypatch.setattr(celery, "send_task", send_task)
    job_id = uuid.uuid4()

    await CeleryTaskQueue(celery, queue="restoration", max_retries=3).enqueue_restoration(job_id)

    [(args, kwargs, thread)] = sent
    assert args == (RESTORE_TASK,)
    assert kwargs["args"] == [str(job_id)]
    assert kwargs["task_id"] == str(job_id)
    assert kwargs["queue"] == "restoration"
    assert kwargs["retry"] is True
    assert kwargs["retry_policy"]["max_retries"] == 3
    assert kwargs["retry_policy"]["interval_max"] <= 0.5  # fail fast: a client is waiting
    assert thread != threading.get_ident()  # the blocking publish stays off the event loop


async def test_a_broker_that_refuses_connections_is_a_queue_error_quickly(
    settings: Settings,
) -> None:
    celery = celery_for(settings, "redis://127.0.0.1:1/0", broker_connect_timeout_seconds=0.2)
    started = time.monotonic()

    with pytest.raises(QueueError, match="The broker did not accept the task") as raised:
        await CeleryTaskQueue(celery, queue="restoration").enqueue_restoration(uuid.uuid4())

    assert time.monotonic() - started < 2.0
    assert isinstance(raised.value.__cause__, OperationalError)


@pytest.mark.parametrize(
    "error",
    [OperationalError("connection reset"), ConnectionRefusedError(111, "refused"), TimeoutError()],
    ids=["kombu", "refused", "timeout"],
)
async def test_broker_errors_become_queue_errors(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    celery = celery_for(settings, "memory://")

    def send_task(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr(celery, "send_task", send_task)

    with pytest.raises(QueueError) as raised:
        await CeleryTaskQueue(celery, queue="restoration").enqueue_restoration(uuid.uuid4())
    assert raised.value.__cause__ is error


async def test_programming_errors_are_not_disguised_as_broker_errors(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    celery = celery_for(settings, "memory://")

    def send_task(*_: Any, **__: Any) -> None:
        raise TypeError("send_task() got an unexpected keyword argument")

    monkeypatch.setattr(celery, "send_task", send_task)

    with pytest.raises(TypeError):
        await CeleryTaskQueue(celery, queue="restoration").enqueue_restoration(uuid.uuid4())


async def test_a_broker_that_does_not_answer_is_a_queue_error_within_the_timeout(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frozen Redis: the publish blocks in its thread; the client gets its answer regardless."""
    celery = celery_for(settings, "memory://")
    frozen = threading.Event()
    monkeypatch.setattr(celery, "send_task", lambda *_, **__: frozen.wait(5))
    try:
        with anyio.fail_after(10), pytest.raises(QueueError, match=r"no answer within 0\.1 s"):
            await CeleryTaskQueue(celery, queue="restoration", timeout=0.1).enqueue_restoration(
                uuid.uuid4()
            )
        still_blocked = not frozen.is_set()
    finally:
        frozen.set()
    assert still_blocked
