"""The ComfyUI client keeps each host's node specs, and drops them when they may no longer hold."""

import copy
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx

from app.core.config import WorkflowName
from app.services.comfyui import ComfyUIClient, WorkflowRejected
from app.services.comfyui.validation import node_classes
from app.workflows import build_workflow
from fixtures.comfyui.specs import DATA_DIR
from tests.unit.helpers import COMFYUI_BASE as BASE
from tests.unit.helpers import core_graph

OBJECT_INFO: dict[str, Any] = json.loads((DATA_DIR / "object_info_image_nodes.json").read_text())
CORE_CLASSES = 6  # distinct node classes of the core workflow

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(BASE, request_timeout=2.0, spec_recheck_interval=0) as client:
        yield client


class Host:
    """A ComfyUI host's spec routes: `/object_info/{class}`, `/system_stats`, upscale models."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.specs = copy.deepcopy(OBJECT_INFO)
        self.version = "0.3.64"
        self.models = ["a.pth"]
        self.object_info = router.get(url__regex=r"/object_info/(?P<name>[^/?]+)$").mock(
            side_effect=lambda request, name: httpx.Response(
                200, json={unquote(name): self.specs[unquote(name)]}
            )
        )
        router.get("/system_stats").mock(
            side_effect=lambda request: httpx.Response(
                200, json={"system": {"comfyui_version": self.version}, "devices": []}
            )
        )
        router.get("/models/upscale_models").mock(
            side_effect=lambda request: httpx.Response(200, json=self.models)
        )


async def test_specs_are_fetched_once_while_the_host_stays_the_same(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    host = Host(comfy)

    for _ in range(3):
        await client.validate(core_graph())

    # The first recheck has no earlier answer to compare with, so it refetches once.
    assert host.object_info.call_count == 2 * CORE_CLASSES


@pytest.mark.parametrize("change", ["version", "models"])
async def test_a_new_version_or_model_list_drops_the_specs(
    comfy: respx.MockRouter, client: ComfyUIClient, change: str
) -> None:
    host = Host(comfy)
    for _ in range(3):
        await client.validate(core_graph())
    fetched = host.object_info.call_count

    if change == "version":
        host.version = "0.3.65"
    else:
        host.models = ["a.pth", "b.pth"]
    await client.validate(core_graph())
    await client.validate(core_graph())

    assert host.object_info.call_count == fetched + CORE_CLASSES


async def test_specs_are_kept_between_rechecks(comfy: respx.MockRouter) -> None:
    host = Host(comfy)
    async with ComfyUIClient(BASE, spec_recheck_interval=3600) as client:
        for _ in range(3):
            await client.validate(core_graph())
        host.version = "0.3.65"  # not looked at before the interval passes
        await client.validate(core_graph())

    assert host.object_info.call_count == CORE_CLASSES


def upscale_graph(model: str) -> dict[str, dict[str, Any]]:
    return build_workflow(
        WorkflowName.MODEL_UPSCALE,
        image="jobs/abc/input.png",
        output_prefix="restored/abc/a1",
        scale=2.0,
        upscale_model=model,
    )


async def test_stale_specs_never_reject_a_graph_the_host_accepts(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    host = Host(comfy)
    client.spec_recheck_interval = 3600
    options = host.specs["UpscaleModelLoader"]["input"]["required"]["model_name"][1]
    options["options"] = ["old.pth"]
    await client.validate(upscale_graph("old.pth"))
    options["options"] = ["old.pth", "new.pth"]  # a model arrives, unknown to the cached spec

    await client.validate(upscale_graph("new.pth"))

    assert host.object_info.call_count == 2 * len(node_classes(upscale_graph("new.pth")))


async def test_a_graph_the_host_rejects_is_rejected_with_fresh_specs(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    host = Host(comfy)
    await client.validate(core_graph())
    graph = core_graph()
    del graph["1"]["inputs"][next(iter(graph["1"]["inputs"]))]  # a required input goes missing

    with pytest.raises(WorkflowRejected):
        await client.validate(graph)

    assert host.object_info.call_count == 2 * CORE_CLASSES


async def test_a_prompt_comfyui_rejects_drops_the_specs(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    host = Host(comfy)
    client.spec_recheck_interval = 3600
    await client.validate(core_graph())
    comfy.post("/prompt").respond(
        400, json={"error": {"type": "prompt_outputs_failed_validation"}, "node_errors": {}}
    )

    with pytest.raises(WorkflowRejected):
        await client.submit(core_graph(), "client")
    await client.validate(core_graph())

    assert host.object_info.call_count == 2 * CORE_CLASSES
