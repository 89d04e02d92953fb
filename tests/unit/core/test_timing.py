"""Stage timings: recorded through a context variable, logged once per run with the job id."""

import asyncio
import logging
import uuid

import pytest

from app.core import timing


def test_stages_outside_a_run_record_nothing() -> None:
    with timing.stage(timing.S3_DOWNLOAD):
        pass
    assert timing.current() is None


def test_a_run_sums_its_stages_and_logs_them_with_the_job_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id = uuid.uuid4()
    caplog.set_level(logging.INFO, logger="app.core.timing")

    async def run() -> None:
        with timing.job_timings(job_id) as timings:
            timings.attempt = 2
            for _ in range(2):
                with timing.stage(timing.DATABASE):
                    await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError), timing.stage(timing.COMFYUI_EXECUTION):
                raise RuntimeError("a failed stage still counts")

    asyncio.run(run())

    [record] = [r for r in caplog.records if r.name == "app.core.timing"]
    stages = record.stages_ms  # type: ignore[attr-defined]
    assert record.job_id == str(job_id)  # type: ignore[attr-defined]
    assert record.attempt == 2  # type: ignore[attr-defined]
    assert set(stages) == {"total", "cpu", "database", "comfyui_execution"}
    assert stages["database"] >= 20
    assert stages["total"] >= stages["database"]
    message = record.getMessage()
    assert message.startswith(f"job {job_id} attempt 2 stages: total_ms=")
    assert f"database_ms={stages['database']}" in message
    assert timing.current() is None
