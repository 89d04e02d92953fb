"""POST /prompt validation: the recorded 400 bodies, and ComfyUI's laxness where it is lax."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fixtures.comfyui.testing import capture, png_bytes, shape_of, workflow

pytestmark = pytest.mark.anyio


def core() -> dict[str, Any]:
    return copy.deepcopy(workflow("restore_core"))


def mutated(change: str) -> dict[str, Any]:
    """The graphs behind the recorded cases in captures/prompt_invalid.json."""
    graph = core()
    match change:
        case "unknown_class_type":
            graph["2"]["class_type"] = "NoSuchNode"
        case "missing_required_input":
            del graph["5"]["inputs"]["sigma"]
        case "missing_image_file":
            graph["1"]["inputs"]["image"] = "does_not_exist.png"
        case "wrong_value_type_INT":
            graph["2"]["inputs"]["blur_radius"] = "abc"
        case "value_above_max":
            graph["2"]["inputs"]["blur_radius"] = 100
        case "invalid_combo_value":
            graph["4"]["inputs"]["upscale_method"] = "super-resolution"
        case "link_to_missing_node":
            graph["5"]["inputs"]["image"] = ["99", 0]
        case "link_type_mismatch_MASK_to_IMAGE":
            graph["5"]["inputs"]["image"] = ["1", 1]
        case "no_output_node":
            del graph["6"]
        case "missing_class_type_key":
            del graph["3"]["class_type"]
        case "empty_prompt":
            graph = {}
    return graph


def without_tracebacks(body: Any) -> Any:
    for node in body.get("node_errors", {}).values():
        for error in node["errors"]:
            tb = error["extra_info"].pop("traceback", None)
            if tb is not None:
                assert tb
                assert all(line.startswith("  File ") for line in tb)
    return body


@pytest.fixture
async def comfy_with_probe(comfy):
    response = await comfy.upload("probe.png", png_bytes(), subfolder="jobs/abc123")
    assert response.status_code == 200
    return comfy


@pytest.mark.parametrize(
    "case",
    [
        "unknown_class_type",
        "missing_required_input",
        "missing_image_file",
        "wrong_value_type_INT",
        "value_above_max",
        "invalid_combo_value",
        "link_to_missing_node",
        "link_type_mismatch_MASK_to_IMAGE",
        "no_output_node",
        "missing_class_type_key",
        "empty_prompt",
    ],
)
async def test_rejections_match_the_recorded_bodies(comfy_with_probe, case):
    expected = capture("prompt_invalid")[case]
    response = await comfy_with_probe.submit(mutated(case), client_id="c")
    assert response.status_code == expected["status"]
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert without_tracebacks(response.json()) == without_tracebacks(expected["body"])


async def test_body_without_prompt_is_no_prompt(comfy):
    expected = capture("prompt_invalid")["body_without_prompt_key"]
    response = await comfy.post("/prompt", {"client_id": "c"})
    assert (response.status_code, response.json()) == (expected["status"], expected["body"])


async def test_value_below_min(comfy_with_probe):
    graph = core()
    graph["2"]["inputs"]["sigma"] = 0.01
    response = await comfy_with_probe.submit(graph)
    error = response.json()["node_errors"]["2"]["errors"][0]
    assert response.status_code == 400
    assert error == {
        "type": "value_smaller_than_min",
        "message": "Value 0.01 smaller than min of 0.1",
        "details": "sigma",
        "extra_info": {
            "input_name": "sigma",
            "input_config": ["FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}],
            "received_value": 0.01,
        },
    }


async def test_v3_combos_are_not_checked_at_submit(comfy_with_probe):
    """As in ComfyUI, ImageBlend.blend_mode and UpscaleModelLoader.model_name fail at run time."""
    graph = core()
    graph["3"]["inputs"]["blend_mode"] = "bogus_mode"
    graph["7"] = {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "nope.pth"}}
    response = await comfy_with_probe.submit(graph)
    assert response.status_code == 200
    assert response.json()["node_errors"] == {}


async def test_unsupported_real_class_is_rejected_like_an_unknown_one(comfy_with_probe):
    graph = core()
    graph["7"] = {"class_type": "ImageQuantize", "inputs": {"image": ["1", 0], "colors": 8}}
    response = await comfy_with_probe.submit(graph)
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"]
        == "Cannot execute because node ImageQuantize does not exist."
    )


async def test_one_bad_output_among_good_ones_is_accepted_with_node_errors(comfy_with_probe):
    graph = core()
    graph["7"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}
    response = await comfy_with_probe.submit(graph)
    body = response.json()
    assert response.status_code == 200
    assert body["node_errors"]["7"]["errors"][0]["type"] == "required_input_missing"
    assert body["node_errors"]["7"]["dependent_outputs"] == ["7"]


async def test_number_counts_rejected_prompts_too_and_custom_ids_are_kept(comfy_with_probe):
    accepted = await comfy_with_probe.submit(core())
    recorded = capture("post_prompt_ok")
    assert accepted.headers["content-type"] == recorded["content_type"]
    assert shape_of(accepted.json()) == shape_of(recorded["body"])
    first = accepted.json()
    assert (await comfy_with_probe.submit({})).status_code == 400
    custom = "11111111-2222-3333-4444-555555555555"
    second = (await comfy_with_probe.submit(core(), prompt_id=custom)).json()
    assert second == {"prompt_id": custom, "number": first["number"] + 2, "node_errors": {}}
    explicit = (await comfy_with_probe.submit(core(), number=7)).json()
    assert explicit["number"] == 7.0
    assert isinstance(explicit["number"], float)


async def test_values_are_normalised_into_history(comfy_with_probe):
    graph = core()
    graph["2"]["inputs"]["blur_radius"] = "3"
    graph["4"]["inputs"]["scale_by"] = 1
    graph["6"]["inputs"]["filename_prefix"] = 123
    prompt_id, _, entry = await comfy_with_probe.run(graph)
    stored = entry["prompt"][2]
    assert stored["2"]["inputs"]["blur_radius"] == 3
    assert isinstance(stored["4"]["inputs"]["scale_by"], float)
    assert stored["6"]["inputs"]["filename_prefix"] == "123"
    assert entry["prompt"][1] == prompt_id
