"""POST /upload/image and GET /view, as recorded from ComfyUI 0.3.64."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from fixtures.comfyui.testing import capture, png_bytes

pytestmark = pytest.mark.anyio


async def test_upload_renames_dedups_and_overwrites_like_comfyui(comfy):
    recorded = capture("upload_image")
    original, other = png_bytes(seed=1), png_bytes(seed=2)

    async def upload(data: bytes, **form: str) -> dict:
        response = await comfy.upload("probe.png", data, **form)
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        return response.json()

    assert await upload(original) == recorded["plain"]["body"]
    assert await upload(original) == recorded["same_name_same_bytes_no_overwrite"]["body"]
    assert await upload(other) == recorded["same_name_diff_bytes_no_overwrite"]["body"]
    assert await upload(other) == {"name": "probe (1).png", "subfolder": "", "type": "input"}
    assert await upload(png_bytes(seed=3)) == {
        "name": "probe (2).png",
        "subfolder": "",
        "type": "input",
    }
    assert (
        await upload(other, overwrite="true")
        == recorded["same_name_diff_bytes_overwrite_true"]["body"]
    )
    assert (comfy.input_dir / "probe.png").read_bytes() == other
    assert (comfy.input_dir / "probe (1).png").read_bytes() == other
    await upload(original, overwrite="yes")  # only "true" and "1" mean overwrite
    assert (comfy.input_dir / "probe.png").read_bytes() == other


async def test_upload_into_subfolder_and_temp(comfy):
    recorded = capture("upload_image")
    sub = await comfy.upload("probe.png", png_bytes(), subfolder="jobs/abc123")
    assert sub.json() == recorded["subfolder"]["body"]
    assert (comfy.input_dir / "jobs" / "abc123" / "probe.png").is_file()
    temp = await comfy.upload("probe_tmp.png", png_bytes(), type="temp")
    assert temp.json() == recorded["type_temp"]["body"]
    assert (comfy.server.folders.temp / "probe_tmp.png").is_file()


async def test_upload_rejections(comfy):
    recorded = capture("upload_image")
    traversal = await comfy.upload("probe.png", png_bytes(), subfolder="../../etc")
    wrong_field = await comfy.upload("probe.png", png_bytes(), field="file")
    for response, case in (
        (traversal, "path_traversal_subfolder"),
        (wrong_field, "wrong_field_name_file"),
    ):
        assert response.status_code == recorded[case]["status"]
        assert response.text == recorded[case]["body"]
    assert (await comfy.upload("x.png", png_bytes(), type="bogus")).status_code == 500


async def test_upload_does_not_check_content(comfy):
    response = await comfy.upload("corrupt.png", b"this is not a png")
    assert response.json() == capture("upload_image")["non_image_bytes_accepted?"]["body"]


async def test_upload_size_limit(start_comfy):
    async with start_comfy(max_upload_size_mb=0.01) as comfy:
        assert (await comfy.get("/features")).json()["max_upload_size"] == 10485.76
        assert (await comfy.upload("big.png", bytes(20000))).status_code == 413
        assert (await comfy.upload("small.png", png_bytes())).status_code == 200


@pytest.fixture
async def output_file(comfy):
    folder = comfy.output_dir / "restored"
    folder.mkdir()
    png = png_bytes(32, 20)
    (folder / "probe_00001_.png").write_bytes(png)
    return {"filename": "probe_00001_.png", "subfolder": "restored", "type": "output"}, png


async def test_view_serves_the_file_with_comfyuis_headers(comfy, output_file):
    image, png = output_file
    image.pop("type")  # type defaults to output
    response = await comfy.get("/view", **image)
    assert response.status_code == 200
    assert response.content == png
    recorded = capture("view_run1")["headers"]
    assert response.headers["content-disposition"] == 'filename="probe_00001_.png"'
    assert response.headers["content-type"] == recorded["Content-Type"]
    for header in ("Etag", "Last-Modified", "Content-Length"):
        assert header in response.headers


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"filename": "missing.png", "subfolder": "restored"}, 404),
        ({"filename": "../probe_00001_.png", "subfolder": "restored"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "probe_00001_.png", "subfolder": "../.."}, 403),
        ({"filename": "probe_00001_.png", "subfolder": "restored", "type": "bogus"}, 400),
        ({"subfolder": "restored"}, 404),
    ],
)
async def test_view_refusals(comfy, output_file, params, status):
    response = await comfy.get("/view", **params)
    assert response.status_code == status
    assert response.content == b""


async def test_view_refusal_statuses_are_the_recorded_ones(comfy, output_file):
    recorded = capture("view_variants")
    assert (await comfy.get("/view", filename="nope.png")).status_code == recorded["missing"][
        "status"
    ]
    assert (await comfy.get("/view", filename="../x.png")).status_code == recorded[
        "dotdot_filename"
    ]["status"]
    sub = await comfy.get("/view", filename="x.png", subfolder="../..")
    assert sub.status_code == recorded["dotdot_subfolder"]["status"]


async def test_view_preview_reencodes(comfy, output_file):
    image, _ = output_file
    jpeg = await comfy.get("/view", preview="jpeg;80", **image)
    assert jpeg.headers["content-type"] == capture("view_variants")["preview_jpeg"]["ct"]
    assert Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    webp = await comfy.get("/view", preview="png", **image)
    assert webp.headers["content-type"] == "image/webp"
    alpha = await comfy.get("/view", channel="a", **image)
    assert Image.open(io.BytesIO(alpha.content)).mode == "RGBA"


async def test_view_annotated_filename_picks_the_folder(comfy, output_file):
    _, png = output_file
    response = await comfy.get(
        "/view", filename="probe_00001_.png [output]", subfolder="restored", type="input"
    )
    assert response.content == png
