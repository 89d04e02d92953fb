"""Small routes: same status, content type and shape as the recorded ComfyUI 0.3.64."""

from __future__ import annotations

import pytest

from fixtures.comfyui.specs import recorded_specs
from fixtures.comfyui.testing import capture, png_bytes, shape_of

pytestmark = pytest.mark.anyio
JSON = "application/json; charset=utf-8"


@pytest.mark.parametrize(
    ("path", "recorded"),
    [
        ("/features", "get_features"),
        ("/embeddings", "get_embeddings"),
        ("/prompt", "get_prompt"),
        ("/queue", "get_queue_idle"),
        ("/api/queue", "get_api_prefixed_queue"),
        ("/history", "get_history_all_initial"),
        ("/models", "get_models"),
        ("/object_info/ImageSharpen", "get_object_info_ImageSharpen"),
        ("/object_info/NoSuchNode", "get_object_info_unknown"),
    ],
)
async def test_small_gets_answer_like_the_recording(comfy, path, recorded):
    expected = capture(recorded)
    response = await comfy.get(path)
    assert response.status_code == expected["status"]
    assert response.headers["content-type"] == expected["content_type"]
    assert response.json() == expected["body"]


async def test_extensions_is_a_list_of_script_paths_and_empty_without_a_frontend(comfy):
    recorded = capture("get_extensions")
    response = await comfy.get("/extensions")
    assert response.status_code == recorded["status"]
    assert response.headers["content-type"] == recorded["content_type"]
    assert all(path.startswith("/extensions/") for path in recorded["body"])  # what real lists
    assert response.json() == []


async def test_system_stats_keeps_the_shape_but_names_the_stand_in(comfy):
    expected = capture("get_system_stats")["body"]
    response = await comfy.get("/system_stats")
    body = response.json()
    assert response.headers["content-type"] == JSON
    assert shape_of(body) == shape_of(expected)
    assert body["system"]["comfyui_version"] == "0.3.64"
    assert body["devices"][0]["name"] == "standin-cpu"
    assert "stand-in" in body["system"]["pytorch_version"]


@pytest.mark.parametrize(
    "path", ["/system_stats", "/object_info", "/models/upscale_models", "/history"]
)
async def test_every_route_is_also_served_under_api(comfy, path):
    bare, prefixed = await comfy.get(path), await comfy.get("/api" + path)
    assert bare.status_code == prefixed.status_code == 200
    assert shape_of(bare.json()) == shape_of(prefixed.json())


async def test_object_info_serves_the_recorded_specs_of_the_supported_nodes(comfy):
    info = (await comfy.get("/object_info")).json()
    recorded = recorded_specs()
    assert {"LoadImage", "SaveImage", "ImageBlur", "ImageUpscaleWithModel"} <= set(info)
    assert "ImageQuantize" not in info  # recorded, but not executed by the stand-in
    for name, spec in info.items():
        if name not in ("LoadImage", "UpscaleModelLoader"):  # their options are live lists
            assert spec == recorded[name], name


async def test_loadimage_spec_is_the_recorded_one_for_the_same_input_folder(comfy):
    await comfy.upload("example.png", png_bytes())
    response = await comfy.get("/object_info/LoadImage")
    assert response.json() == capture("get_object_info_LoadImage")["body"]


async def test_loadimage_lists_top_level_image_files_of_input(comfy):
    await comfy.upload("b.png", png_bytes())
    await comfy.upload("a.jpg", png_bytes(seed=1))
    await comfy.upload("nested.png", png_bytes(), subfolder="jobs/1")
    (comfy.input_dir / "notes.txt").write_text("not an image")
    info = (await comfy.get("/object_info/LoadImage")).json()["LoadImage"]
    assert info["input"]["required"]["image"] == [["a.jpg", "b.png"], {"image_upload": True}]


async def test_upscale_models_are_the_configured_ones(start_comfy):
    async with start_comfy(upscale_models={"b_x4.pth": 4, "a_x2.safetensors": 2}) as comfy:
        assert (await comfy.get("/models/upscale_models")).json() == [
            "a_x2.safetensors",
            "b_x4.pth",
        ]
        spec = (await comfy.get("/object_info/UpscaleModelLoader")).json()["UpscaleModelLoader"]
        assert spec["input"]["required"]["model_name"][1]["options"] == [
            "a_x2.safetensors",
            "b_x4.pth",
        ]
    async with start_comfy(upscale_models={}) as comfy:
        assert (await comfy.get("/models/upscale_models")).json() == capture("get_models_upscale")[
            "body"
        ]


async def test_unknown_model_folder_is_404(comfy):
    assert (await comfy.get("/models/no_such_folder")).status_code == 404
    assert (await comfy.get("/models/checkpoints")).json() == []


async def test_malformed_json_is_aiohttps_plain_500(comfy):
    expected = capture("prompt_invalid")["malformed_json_body"]
    response = await comfy.http.post("/prompt", content=b"{not json")
    assert response.status_code == expected["status"]
    assert response.text == expected["body"]
    assert response.headers["content-type"].startswith("text/plain")


async def test_free_needs_a_json_body(comfy):
    recorded = capture("free_clear")
    empty = await comfy.http.post("/free", content=b"")
    assert [empty.status_code, empty.text] == recorded["free_empty_body"]
    ok = await comfy.post("/free", {"unload_models": True, "free_memory": True})
    assert [ok.status_code, ok.text] == recorded["free"]
