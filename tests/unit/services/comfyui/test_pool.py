"""Several ComfyUI hosts: the shortest queue wins, a host that stops answering leaves the rotation."""

import asyncio
import uuid
from typing import Any

import pytest

from app.core.config import Settings, WorkflowName
from app.services.comfyui import (
    ComfyUIHealth,
    ComfyUIService,
    ComfyUIUnavailable,
    ExecutionFailed,
    RestoredImage,
)
from app.services.comfyui.pool import ComfyUIPool, comfyui_from_settings

pytestmark = pytest.mark.anyio


class FakeClient:
    def __init__(self, url: str) -> None:
        self.base_url = url
        self.queue: int | Exception = 0

    async def queue_length(self) -> int:
        if isinstance(self.queue, Exception):
            raise self.queue
        return self.queue


class FakeHost:
    """A `ComfyUIService` at its interface: restores, or fails as told."""

    def __init__(self, url: str) -> None:
        self.client = FakeClient(url)
        self.failure: Exception | None = None
        self.jobs: list[uuid.UUID] = []
        self.closed = False

    async def restore(self, *, job_id: uuid.UUID, **_: Any) -> RestoredImage:
        self.jobs.append(job_id)
        if self.failure is not None:
            raise self.failure
        return RestoredImage(data=b"png", width=2, height=2, prompt_id=self.client.base_url)

    async def health(self) -> ComfyUIHealth:
        if isinstance(self.client.queue, Exception):
            return ComfyUIHealth(ok=False, error="refused")
        return ComfyUIHealth(ok=True, version="0.3.64", devices=[self.client.base_url])

    async def aclose(self) -> None:
        self.closed = True


def pool_of(*urls: str, retry_after: float = 60.0) -> tuple[ComfyUIPool, list[FakeHost]]:
    hosts = [FakeHost(url) for url in urls]
    return ComfyUIPool(hosts, retry_after=retry_after), hosts  # type: ignore[arg-type]


async def restore(pool: ComfyUIPool) -> RestoredImage:
    return await pool.restore(
        job_id=uuid.uuid4(),
        attempt=1,
        image=b"img",
        extension="png",
        workflow=WorkflowName.CORE,
    )


def test_comfyui_urls_lists_the_hosts_and_comfyui_url_still_works() -> None:
    one = Settings(_env_file=None, comfyui_url="http://gpu-1:8188/")  # type: ignore[call-arg]
    several = Settings(
        _env_file=None,  # type: ignore[call-arg]
        comfyui_url="http://ignored:8188",
        comfyui_urls="http://gpu-1:8188, http://gpu-2:8188/ http://gpu-3:8188",
    )

    assert one.comfyui_hosts == ["http://gpu-1:8188"]
    assert several.comfyui_hosts == ["http://gpu-1:8188", "http://gpu-2:8188", "http://gpu-3:8188"]


async def test_one_host_needs_no_pool_several_get_one_each() -> None:
    one = comfyui_from_settings(Settings(_env_file=None, comfyui_url="http://gpu-1:8188"))  # type: ignore[call-arg]
    several = comfyui_from_settings(
        Settings(_env_file=None, comfyui_urls="http://gpu-1:8188,http://gpu-2:8188")  # type: ignore[call-arg]
    )
    try:
        assert isinstance(one, ComfyUIService)
        assert isinstance(several, ComfyUIPool)
        assert [s.client.base_url for s in several.services] == [
            "http://gpu-1:8188",
            "http://gpu-2:8188",
        ]
    finally:
        await one.aclose()
        await several.aclose()


async def test_a_job_goes_to_the_host_with_the_shortest_queue() -> None:
    pool, (a, b, c) = pool_of("http://a", "http://b", "http://c")
    a.client.queue, b.client.queue, c.client.queue = 3, 1, 2

    result = await restore(pool)

    assert result.prompt_id == "http://b"
    assert (len(a.jobs), len(b.jobs), len(c.jobs)) == (0, 1, 0)


async def test_equal_queues_share_the_jobs() -> None:
    pool, hosts = pool_of("http://a", "http://b")

    for _ in range(4):
        await restore(pool)

    assert [len(host.jobs) for host in hosts] == [2, 2]


async def test_a_host_that_does_not_answer_is_left_out_until_it_answers_again() -> None:
    pool, (a, b) = pool_of("http://a", "http://b", retry_after=0.05)
    a.client.queue, b.client.queue = ComfyUIUnavailable("refused"), 5

    assert (await restore(pool)).prompt_id == "http://b"
    a.client.queue = 0
    assert (await restore(pool)).prompt_id == "http://b"  # still out of rotation

    await asyncio.sleep(0.06)
    assert (await restore(pool)).prompt_id == "http://a"


async def test_a_host_lost_during_a_job_hands_it_to_another() -> None:
    pool, (a, b) = pool_of("http://a", "http://b")
    b.client.queue = 1
    a.failure = ComfyUIUnavailable("connection reset while the prompt ran")

    result = await restore(pool)

    assert result.prompt_id == "http://b"
    assert a.jobs == b.jobs
    assert pool.in_rotation() == [b]


async def test_when_no_host_answers_the_job_fails_transiently() -> None:
    pool, (a, b) = pool_of("http://a", "http://b")
    a.failure = ComfyUIUnavailable("reset")
    b.client.queue = ComfyUIUnavailable("refused")

    with pytest.raises(ComfyUIUnavailable, match="no ComfyUI host answers") as caught:
        await restore(pool)

    assert caught.value.transient
    assert pool.in_rotation() == []


async def test_a_failed_workflow_is_not_a_host_failure() -> None:
    pool, (a, b) = pool_of("http://a", "http://b")
    a.failure = b.failure = ExecutionFailed("node 3 raised", prompt_id="p")

    with pytest.raises(ExecutionFailed):
        await restore(pool)

    assert len(a.jobs) + len(b.jobs) == 1
    assert len(pool.in_rotation()) == 2


async def test_the_pool_is_ready_while_any_host_answers() -> None:
    pool, (a, b) = pool_of("http://a", "http://b")
    b.client.queue = ComfyUIUnavailable("refused")

    health = await pool.health()
    assert (health.ok, health.devices) == (True, ["http://a"])
    assert health.error == "1 of 2 hosts do not answer"

    a.client.queue = ComfyUIUnavailable("refused")
    health = await pool.health()
    assert not health.ok
    assert health.error == "http://a: refused; http://b: refused"

    await pool.aclose()
    assert (a.closed, b.closed) == (True, True)
