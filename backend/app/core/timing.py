"""Stage timings of one job: how long its S3, ComfyUI and database steps took.

The worker opens `job_timings` around a run; code deeper down marks its steps with `stage(name)`
and records into the run's timings through a context variable, so no signature carries a timer.
Outside a run, `stage` records nothing. At the end the run logs one line:

    job 5f0c… attempt 1 stages: total_ms=131.2 cpu_ms=40.2 s3_download_ms=3.1 comfyui_upload_ms=4.0 …

with the same figures in the record's `job_id` and `stages_ms` attributes for JSON log formatters.
"""

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

logger = logging.getLogger(__name__)

# Stage names, in the order a job goes through them.
S3_DOWNLOAD = "s3_download"
COMFYUI_UPLOAD = "comfyui_upload"
COMFYUI_VALIDATE = "comfyui_validate"
COMFYUI_EXECUTION = "comfyui_execution"
COMFYUI_VIEW = "comfyui_view"
S3_UPLOAD = "s3_upload"
DATABASE = "database"


class StageTimings:
    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self.attempt: int | None = None
        self.seconds: dict[str, float] = {}
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return time.perf_counter() - self._started

    def milliseconds(self) -> dict[str, float]:
        # The process's CPU time too: on a busy machine, waiting for a core is where time goes.
        cpu = time.process_time() - self._cpu_started
        return {"total": round(self.total * 1000, 1), "cpu": round(cpu * 1000, 1)} | {
            name: round(value * 1000, 1) for name, value in self.seconds.items()
        }


_current: ContextVar[StageTimings | None] = ContextVar("stage_timings", default=None)


def current() -> StageTimings | None:
    return _current.get()


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add the time the block takes to the current job's stage `name` (also when it raises)."""
    timings = _current.get()
    if timings is None:
        yield
        return
    started = time.perf_counter()
    try:
        yield
    finally:
        timings.add(name, time.perf_counter() - started)


@contextmanager
def job_timings(job_id: uuid.UUID) -> Iterator[StageTimings]:
    """Collect the stages of one run of `job_id` and log them when it ends, however it ends."""
    timings = StageTimings(job_id)
    token = _current.set(timings)
    try:
        yield timings
    finally:
        _current.reset(token)
        stages = timings.milliseconds()
        logger.info(
            "job %s attempt %s stages: %s",
            job_id,
            timings.attempt if timings.attempt is not None else "-",
            " ".join(f"{name}_ms={value}" for name, value in stages.items()),
            extra={"job_id": str(job_id), "attempt": timings.attempt, "stages_ms": stages},
        )
