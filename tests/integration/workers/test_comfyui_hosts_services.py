"""Several ComfyUI hosts (COMFYUI_URLS): a real worker spreads the jobs over two stand-in processes,
and when one of them is killed mid-batch, every job still completes on the other.
"""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import anyio
import httpx
import pytest

from app.core.config import Settings
from fixtures import images
from fixtures.accounts import Account
from fixtures.comfyui.process import run_standin
from tests.integration.helpers import JobsTable, StandIn, upload_png, wait_until

pytestmark = pytest.mark.anyio


def start_standin(stack: ExitStack, root: Path) -> StandIn:
    url = stack.enter_context(
        run_standin(input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp")
    )
    control = StandIn(url)
    stack.callback(control.close)
    return control


@pytest.fixture
def second_standin(tmp_path: Path) -> Iterator[tuple[StandIn, ExitStack]]:
    """Another stand-in process, and the stack that stops it (a test may do so early)."""
    with ExitStack() as stack:
        yield start_standin(stack, tmp_path / "second"), stack


@pytest.fixture
def two_hosts(
    standin: StandIn,
    second_standin: tuple[StandIn, ExitStack],
    worker_env: Callable[..., Settings],
) -> tuple[StandIn, StandIn]:
    """The tier's stand-in and a second one, both in COMFYUI_URLS for the worker."""
    second, _ = second_standin
    worker_env(COMFYUI_URLS=f"{standin.url},{second.url}", COMFYUI_HOST_RETRY_SECONDS="60")
    return standin, second


async def upload_all(client: httpx.AsyncClient, account: Account, count: int) -> list[str]:
    return [
        await upload_png(client, account, images.make_image("PNG", (24, 16), seed=seed))
        for seed in range(count)
    ]


def ran_on(host: StandIn, jobs_table: JobsTable, ids: list[str]) -> list[str]:
    return [job for job in ids if host.history(jobs_table.one(job)["comfyui_prompt_id"])]


async def test_jobs_are_spread_over_the_hosts(
    two_hosts: tuple[StandIn, StandIn],
    celery_worker: object,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
) -> None:
    first, second = two_hosts

    ids = await upload_all(client, alice, 4)
    for job in ids:
        row = await jobs_table.wait_until_finished(job)
        assert (row["status"], row["attempts"]) == ("COMPLETED", 1)

    # One job at a time: both queues are empty at every choice, so the hosts take turns.
    assert len(ran_on(first, jobs_table, ids)) == 2
    assert len(ran_on(second, jobs_table, ids)) == 2


async def test_a_host_killed_mid_batch_loses_no_job(
    two_hosts: tuple[StandIn, StandIn],
    second_standin: tuple[StandIn, ExitStack],
    celery_worker: object,
    client: httpx.AsyncClient,
    alice: Account,
    jobs_table: JobsTable,
) -> None:
    survivor, doomed = two_hosts
    # Slow on the doomed host, so that it is killed while it runs a job.
    doomed.fault("slow", node="ImageSharpen", seconds=30)
    ids = await upload_all(client, alice, 6)

    await wait_until(
        lambda: bool(doomed.queue()["queue_running"]),
        timeout=20,
        what="a job running on the host to kill",
    )
    _, stop_doomed = second_standin
    stop_doomed.close()

    with anyio.fail_after(60):
        rows = [await jobs_table.wait_until_finished(job, timeout=60) for job in ids]
    assert [row["status"] for row in rows] == ["COMPLETED"] * len(ids)
    # Every job ended on the survivor, the one that was running on the killed host included.
    assert ran_on(survivor, jobs_table, ids) == ids
