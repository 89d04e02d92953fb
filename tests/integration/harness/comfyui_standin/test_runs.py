"""Executing prompts: message order, history, outputs, caching, errors and routing.

The workflows and filename prefixes match the recorded runs, so once prompt ids and timestamps
are replaced the stand-in's messages must equal the recorded ones exactly.
"""

from __future__ import annotations

import copy
import io
import json
import uuid
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fixtures.comfyui.testing import capture, png_bytes, workflow

pytestmark = pytest.mark.anyio
PROBE = "jobs/abc123/probe.png"


def normalised(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with prompt ids and timestamps replaced by placeholders."""
    out = json.loads(json.dumps([{"type": m["type"], "data": m["data"]} for m in messages]))
    for message in out:
        data = message["data"]
        for key, placeholder in (("prompt_id", "<id>"), ("timestamp", "<ts>")):
            if key in data:
                data[key] = placeholder
        if isinstance(data.get("nodes"), dict):
            for node in data["nodes"].values():
                node["prompt_id"] = "<id>"
    return out


def core(prefix: str = "restored/probe", image: str = PROBE) -> dict[str, Any]:
    graph = copy.deepcopy(workflow("restore_core"))
    graph["1"]["inputs"]["image"] = image
    graph["6"]["inputs"]["filename_prefix"] = prefix
    return graph


def model_upscale(
    prefix: str, image: str = PROBE, model: str = "tiny_compact_x2.safetensors"
) -> dict[str, Any]:
    graph = copy.deepcopy(workflow("restore_model_upscale"))
    graph["1"]["inputs"]["image"] = image
    graph["10"]["inputs"]["model_name"] = model
    graph["6"]["inputs"]["filename_prefix"] = prefix
    return graph


def invert(prefix: str = "routing/r", image: str = PROBE) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def cached_nodes(messages: list[dict[str, Any]]) -> list[str]:
    return next(m["data"]["nodes"] for m in messages if m["type"] == "execution_cached")


@pytest.fixture
async def comfy(comfy):
    """The per-test stand-in with jobs/abc123/probe.png uploaded, as in the recordings."""
    await comfy.upload("probe.png", png_bytes(40, 30), subfolder="jobs/abc123")
    return comfy


async def test_uncached_run_sends_the_recorded_messages(comfy):
    _, messages, _ = await comfy.run(core())
    assert normalised(messages) == normalised(capture("ws_run1")["messages"])


async def test_history_entry_is_the_recorded_one(comfy):
    prompt_id, _, entry = await comfy.run(core())
    ((recorded_id, expected),) = capture("history_run1").items()
    assert entry["prompt"][1] == prompt_id
    entry["prompt"][1] = recorded_id
    entry["prompt"][3]["client_id"] = expected["prompt"][3]["client_id"]
    pairs = zip(entry["status"]["messages"], expected["status"]["messages"], strict=True)
    for (_, data), (_, recorded) in pairs:
        data["prompt_id"], data["timestamp"] = recorded["prompt_id"], recorded["timestamp"]
    assert entry == expected


async def test_history_is_written_before_the_final_executing(comfy):
    async with comfy.listen("me") as listener:
        prompt_id = (await comfy.submit(core(), "me")).json()["prompt_id"]
        await listener.wait_done(prompt_id)
        history = (await comfy.get(f"/history/{prompt_id}")).json()
    assert history[prompt_id]["status"]["status_str"] == "success"
    assert listener.types()[-3:] == ["execution_success", "status", "executing"]


async def test_output_is_the_processed_image_with_the_graph_inside(comfy):
    _, _, entry = await comfy.run(core())
    image = await comfy.view(entry["outputs"]["6"]["images"][0])
    assert (image.size, image.mode) == ((80, 60), "RGB")
    embedded = json.loads(image.info["prompt"])
    assert embedded["6"] == core()["6"]
    assert len(embedded["1"]["is_changed"][0]) == 64  # LoadImage's file hash, as ComfyUI embeds it


async def test_pixels_follow_the_node_maths(comfy):
    """Invert, nearest-exact x2 and a 3x3 blur, checked against a direct computation."""
    source = np.asarray(Image.open(io.BytesIO(png_bytes(8, 6, seed=7)))).astype(np.float32) / 255
    await comfy.upload("maths.png", png_bytes(8, 6, seed=7))
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "maths.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["2", 0],
                "upscale_method": "nearest-exact",
                "width": 16,
                "height": 12,
                "crop": "disabled",
            },
        },
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "maths/scaled"},
        },
        "5": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0},
        },
        "6": {
            "class_type": "SaveImage",
            "inputs": {"images": ["5", 0], "filename_prefix": "maths/blurred"},
        },
    }
    _, _, entry = await comfy.run(graph)
    scaled = np.asarray(await comfy.view(entry["outputs"]["4"]["images"][0])).astype(int)
    expected = np.clip(255 * (1 - source), 0, 255).astype(int).repeat(2, axis=0).repeat(2, axis=1)
    assert np.abs(scaled - expected).max() <= 1

    taps = np.exp(-(np.linspace(-1, 1, 3) ** 2) / 2)
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    padded = np.pad(source, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    direct = sum(kernel[i, j] * padded[i : i + 6, j : j + 8] for i in range(3) for j in range(3))
    blurred = np.asarray(await comfy.view(entry["outputs"]["6"]["images"][0])).astype(int)
    assert np.abs(blurred - (255 * direct).astype(int)).max() <= 1


async def test_identical_resubmit_is_served_from_cache(comfy):
    _, _, first = await comfy.run(core())
    _, messages, entry = await comfy.run(core())
    assert normalised(messages) == normalised(capture("ws_run2_cached")["messages"])
    ((_, recorded),) = capture("history_run2_cached").items()
    assert entry["outputs"] == first["outputs"] == recorded["outputs"]
    assert entry["meta"] == recorded["meta"]
    cached_message = entry["status"]["messages"][1]
    assert (cached_message[0], cached_message[1]["nodes"]) == ("execution_cached", [*"123456"])
    assert [m[0] for m in entry["status"]["messages"]] == [
        m[0] for m in recorded["status"]["messages"]
    ]


async def test_new_prefix_reruns_only_save_image(comfy):
    await comfy.run(core())
    _, messages, entry = await comfy.run(core("restored/probe_b"))
    assert normalised(messages) == normalised(capture("ws_run3_partialcache")["messages"])
    assert entry["outputs"]["6"]["images"][0]["filename"] == "probe_b_00001_.png"


async def test_new_bytes_under_the_same_name_are_not_cached(comfy):
    await comfy.run(core())
    await comfy.upload(
        "probe.png", png_bytes(40, 30, seed=9), subfolder="jobs/abc123", overwrite="true"
    )
    _, messages, entry = await comfy.run(core())
    assert cached_nodes(messages) == []
    assert entry["outputs"]["6"]["images"][0]["filename"] == "probe_00002_.png"


async def test_cache_keeps_only_what_the_latest_prompt_used(comfy):
    await comfy.run(core())
    other = core()
    other["2"]["inputs"]["blur_radius"] = 3
    await comfy.run(other)
    _, messages, _ = await comfy.run(core())
    assert cached_nodes(messages) == ["1"]


async def test_cache_none_reruns_everything(start_comfy):
    async with start_comfy(cache=False) as comfy:
        await comfy.upload("probe.png", png_bytes(), subfolder="jobs/abc123")
        await comfy.run(core())
        _, messages, entry = await comfy.run(core())
    assert cached_nodes(messages) == []
    assert entry["outputs"]["6"]["images"][0]["filename"] == "probe_00002_.png"


async def test_free_memory_drops_the_cache(comfy):
    await comfy.run(core())
    assert (await comfy.post("/free", {"free_memory": True})).status_code == 200
    for _ in range(50):  # the worker applies the flag as soon as it is idle
        _, messages, _ = await comfy.run(core(f"restored/{uuid.uuid4().hex}"))
        if cached_nodes(messages) == []:
            break
    assert cached_nodes(messages) == []


async def test_save_image_numbering_continues_after_existing_files(comfy):
    folder = comfy.output_dir / "restored" / "deep"
    folder.mkdir(parents=True)
    for name in ("x_00007_.png", "x_extra_.png", "xy_00009_.png", "x_00003_.png"):
        (folder / name).write_bytes(b"")
    _, _, entry = await comfy.run(core("restored/deep/x"))
    assert entry["outputs"]["6"]["images"] == [
        {"filename": "x_00008_.png", "subfolder": "restored/deep", "type": "output"}
    ]
    assert (folder / "x_00008_.png").is_file()


async def test_save_outside_output_fails_like_comfyui(comfy):
    _, messages, entry = await comfy.run(core("../../escape"))
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert (error["node_id"], error["exception_type"]) == ("6", "Exception")
    assert error["exception_message"].startswith(
        "**** ERROR: Saving image outside the output folder"
    )
    assert entry["status"]["status_str"] == "error"


async def test_load_image_applies_exif_orientation(comfy):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    await comfy.upload("rotated.jpg", png_bytes(24, 16, fmt="JPEG", exif=exif))
    _, _, entry = await comfy.run(invert("exif/r", image="rotated.jpg"))
    image = await comfy.view(entry["outputs"]["3"]["images"][0])
    assert image.size == (16, 24)


async def test_load_image_from_subfolders_and_annotated_folders(comfy):
    (comfy.output_dir / "prev_00001_.png").write_bytes(png_bytes(10, 10))
    for image, size in ((PROBE, (40, 30)), ("prev_00001_.png [output]", (10, 10))):
        _, _, entry = await comfy.run(invert(f"annotated/{uuid.uuid4().hex}", image=image))
        assert (await comfy.view(entry["outputs"]["3"]["images"][0])).size == size


async def test_model_upscale_run_is_the_recorded_one(comfy):
    _, messages, entry = await comfy.run(model_upscale("upscaled/full_tiny_x2_512_1795599851"))
    assert normalised(messages) == normalised(capture("ws_upscale_full")["messages"])
    assert (await comfy.view(entry["outputs"]["6"]["images"][0])).size == (80, 60)


async def test_model_upscale_reports_one_progress_per_tile(comfy):
    await comfy.upload("wide.png", png_bytes(1000, 40))  # 3 tiles of 512 with overlap 32
    _, messages, entry = await comfy.run(
        model_upscale("upscaled/wide", image="wide.png", model="tiny_compact_x1.pth")
    )
    progress = [m["data"] for m in messages if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [
        (1, 3, "11"),
        (2, 3, "11"),
        (3, 3, "11"),
    ]
    index = next(i for i, m in enumerate(messages) if m["type"] == "progress")
    assert messages[index - 1]["data"]["nodes"]["11"] == {
        **messages[index - 1]["data"]["nodes"]["11"],
        "value": 1,
        "max": 3,
        "state": "running",
    }
    assert (await comfy.view(entry["outputs"]["6"]["images"][0])).size == (1000, 40)


async def test_routing_follows_the_client_id(comfy):
    recorded = capture("probe4")
    async with comfy.listen("A") as a, comfy.listen("B") as b:
        prompt_id = (await comfy.submit(invert("routing/with"), "A")).json()["prompt_id"]
        await a.wait_done(prompt_id)
        await b.wait_idle()
    assert a.types() == ["status", *recorded["routing_with_client_id"]["A_types"]]
    assert b.types() == ["status", *recorded["routing_with_client_id"]["B_types"]]

    await comfy.upload("other.png", png_bytes(seed=5))  # nothing cached from the first run
    async with comfy.listen("A") as a, comfy.listen("B") as b:
        graph = invert("routing/without", image="other.png")
        prompt_id = (await comfy.submit(graph)).json()["prompt_id"]
        for listener in (a, b):
            await listener.wait_idle()
        history = (await comfy.get(f"/history/{prompt_id}")).json()
    expected = recorded["routing_without_client_id"]
    assert a.types() == ["status", *expected["A_types"]]
    assert b.types() == ["status", *expected["B_types"]]
    assert history[prompt_id]["outputs"]["3"]["images"][0]["filename"] == "without_00001_.png"


async def test_websocket_handshake_messages(comfy):
    recorded = capture("probe4")
    async with comfy.listen("my-client-5503ed") as named, comfy.listen() as anonymous:
        await named.ws.send(
            json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        )
        reply = await named.wait_for(lambda m: m["type"] == "feature_flags")
    assert named.messages[0] == recorded["ws_first_frame"]
    assert reply == recorded["ws_feature_flags_reply"]
    sid = anonymous.messages[0]["data"]["sid"]
    assert len(sid) == 32
    assert int(sid, 16) >= 0


async def test_corrupt_image_fails_at_run_time_with_the_recorded_error(comfy):
    await comfy.upload("corrupt.png", b"this is not a png")
    _, messages, entry = await comfy.run(core("restored/err", image="corrupt.png"))
    recorded = capture("exec_error_ws")["messages"]
    assert [m["type"] for m in messages] == [m["type"] for m in recorded]
    error, expected = messages[-3]["data"], recorded[-3]["data"]
    assert error.keys() == expected.keys()
    assert error["exception_type"] == "PIL.UnidentifiedImageError"
    assert (
        error["exception_message"]
        == f"cannot identify image file '{comfy.input_dir / 'corrupt.png'}'\n"
    )
    assert error["current_inputs"] == expected["current_inputs"]
    assert sorted(error["current_outputs"]) == sorted(expected["current_outputs"])
    assert all(line.startswith("  File ") for line in error["traceback"])
    ((_, recorded_entry),) = capture("exec_error_history").items()
    assert {k: entry["status"][k] for k in ("status_str", "completed")} == {
        "status_str": "error",
        "completed": False,
    }
    assert (entry["outputs"], entry["meta"]) == (recorded_entry["outputs"], recorded_entry["meta"])
    assert [m[0] for m in entry["status"]["messages"]] == [
        m[0] for m in recorded_entry["status"]["messages"]
    ]


@pytest.mark.parametrize(
    ("graph", "node", "exception_type", "message"),
    [
        (
            lambda: {
                **core("err/blend"),
                "3": {
                    **core()["3"],
                    "inputs": {**core()["3"]["inputs"], "blend_mode": "bogus_mode"},
                },
            },
            "3",
            "ValueError",
            "Unsupported blend mode: bogus_mode\n",
        ),
        (
            lambda: model_upscale("err/model", model="nope.pth"),
            "10",
            "FileNotFoundError",
            "Model in folder 'upscale_models' with filename 'nope.pth' not found.\n",
        ),
    ],
)
async def test_unchecked_combos_fail_at_run_time(comfy, graph, node, exception_type, message):
    _, messages, _ = await comfy.run(graph())
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert (error["node_id"], error["exception_type"], error["exception_message"]) == (
        node,
        exception_type,
        message,
    )
    assert "execution_success" not in [m["type"] for m in messages]


async def test_animated_input_becomes_a_batch_saved_as_numbered_files(comfy):
    frames = [Image.open(io.BytesIO(png_bytes(12, 8, seed=seed))) for seed in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    await comfy.upload("anim.gif", buffer.getvalue())
    _, _, entry = await comfy.run(invert("batch/b", image="anim.gif"))
    names = [image["filename"] for image in entry["outputs"]["3"]["images"]]
    assert names == ["b_00001_.png", "b_00002_.png", "b_00003_.png"]
