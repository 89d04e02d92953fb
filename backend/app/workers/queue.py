"""Handing jobs to the worker: the one thing the API needs from Celery.

The API sends tasks by name, so it never imports the worker's code or its dependencies.
"""

import uuid
from functools import partial
from typing import Protocol

import anyio
import anyio.to_thread
from celery import Celery
from kombu.exceptions import KombuError, OperationalError

RESTORE_TASK = "restoration.restore_image"


class QueueError(Exception):
    """The broker could not take the task."""


class TaskQueue(Protocol):
    async def enqueue_restoration(self, job_id: uuid.UUID) -> None: ...


class CeleryTaskQueue:
    def __init__(
        self, celery: Celery, *, queue: str, max_retries: int = 1, timeout: float = 5.0
    ) -> None:
        self.celery = celery
        self.queue = queue
        # The longest the client waits for the broker, whatever kombu's retries and sockets do.
        self.timeout = timeout
        # Fail fast when the broker is down: the client is waiting for its answer.
        self.retry_policy = {
            "max_retries": max_retries,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        }

    async def enqueue_restoration(self, job_id: uuid.UUID) -> None:
        send = partial(
            self.celery.send_task,
            RESTORE_TASK,
            args=[str(job_id)],
            # The job id doubles as the task id: redeliveries and duplicates are easy to trace.
            task_id=str(job_id),
            queue=self.queue,
            retry=True,
            retry_policy=self.retry_policy,
        )
        try:
            with anyio.fail_after(self.timeout):
                # Abandoned past the deadline: the thread ends when kombu gives up.
                await anyio.to_thread.run_sync(send, abandon_on_cancel=True)
        except TimeoutError as error:
            raise QueueError(
                f"The broker did not accept the task: no answer within {self.timeout:g} s"
            ) from error
        except (KombuError, OperationalError, OSError) as error:
            raise QueueError(f"The broker did not accept the task: {error}") from error
