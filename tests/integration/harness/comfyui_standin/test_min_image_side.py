"""The smallest image the shipped workflows can restore, which IMAGE_MIN_SIDE_PIXELS defaults to.

ImageBlur reflect-pads by its radius, and torch refuses padding as wide as the image: a side must
exceed the blur radius (2 in both workflows), so 3 pixels is the minimum. Uploads below it are refused
at the API instead of making a job that cannot succeed.
"""

import pytest

from app.core.config import Settings, WorkflowName
from app.workflows import build_workflow
from fixtures.comfyui.testing import png_bytes

pytestmark = pytest.mark.anyio

MIN_SIDE = Settings(_env_file=None).image_min_side_pixels  # type: ignore[call-arg]


async def run_status(comfy, workflow: WorkflowName, width: int, height: int) -> str:
    name = f"min_side_{width}x{height}.png"
    uploaded = await comfy.upload(name, png_bytes(width, height))
    assert uploaded.status_code == 200, uploaded.text
    graph = build_workflow(
        workflow,
        image=name,
        output_prefix=f"restored/{workflow.value}_{width}x{height}",
        scale=2.0,
        upscale_model="tiny_compact_x2.safetensors",
    )
    _, _, entry = await comfy.run(graph)
    status: str = entry["status"]["status_str"]
    return status


@pytest.mark.parametrize("workflow", list(WorkflowName))
async def test_the_default_minimum_side_is_what_the_workflows_can_restore(comfy, workflow) -> None:
    smallest = [(MIN_SIDE, MIN_SIDE), (MIN_SIDE, 512), (512, MIN_SIDE)]
    too_small = [(MIN_SIDE - 1, MIN_SIDE - 1), (MIN_SIDE - 1, 512), (512, MIN_SIDE - 1)]

    assert [await run_status(comfy, workflow, w, h) for w, h in smallest] == ["success"] * 3
    assert [await run_status(comfy, workflow, w, h) for w, h in too_small] == ["error"] * 3
