"""The ComfyUI client's HTTP side: error mapping, uploads, host queries and workflow validation.

ComfyUI's answers are the ones recorded from a real 0.3.64 (`fixtures/comfyui/data/`), served by respx.
"""

import copy
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import respx

from app.core.config import WorkflowName
from app.services.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIUnavailable,
    OutputImage,
    WorkflowRejected,
)
from app.workflows import build_workflow
from fixtures.comfyui.specs import DATA_DIR
from tests.unit.helpers import COMFYUI_BASE as BASE
from tests.unit.helpers import core_graph


def recorded(name: str) -> Any:
    """A recording of the real server, from the one copy the stand-in serves too."""
    folder = DATA_DIR if name == "object_info_image_nodes.json" else DATA_DIR / "captures"
    return json.loads((folder / name).read_text("utf-8"))


OBJECT_INFO: dict[str, Any] = recorded("object_info_image_nodes.json")
INVALID: dict[str, Any] = recorded("prompt_invalid.json")


@pytest.fixture
async def client() -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(BASE, request_timeout=2.0, poll_interval=0.01) as client:
        yield client


def serve_object_info(router: respx.MockRouter, specs: dict[str, Any]) -> respx.Route:
    """`GET /object_info/{class}` as ComfyUI answers it: `{class: spec}`, or `{}` when unknown."""

    def answer(request: httpx.Request, name: str) -> httpx.Response:
        name = unquote(name)
        return httpx.Response(200, json={name: specs[name]} if name in specs else {})

    return router.get(url__regex=r"/object_info/(?P<name>[^/?]+)$").mock(side_effect=answer)


# --- Error mapping


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (httpx.ConnectError("Connection refused"), "unreachable on GET http://comfy.test:8188/"),
        (httpx.ReadTimeout("read timed out"), "timed out on GET http://comfy.test:8188/"),
        (httpx.RemoteProtocolError("peer closed"), "RemoteProtocolError"),
    ],
)
async def test_transport_failures_are_unavailable_naming_url_and_route(
    comfy: respx.MockRouter, client: ComfyUIClient, failure: Exception, expected: str
) -> None:
    comfy.get("/system_stats").mock(side_effect=failure)

    with pytest.raises(ComfyUIUnavailable, match=expected) as caught:
        await client.system_stats()

    assert "/system_stats" in str(caught.value)
    assert caught.value.transient


@pytest.mark.anyio
async def test_server_error_is_unavailable_with_the_body(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    recorded_500 = INVALID["malformed_json_body"]
    comfy.post("/prompt").respond(recorded_500["status"], text=recorded_500["body"])

    with pytest.raises(
        ComfyUIUnavailable, match=r"500 to POST .*/prompt: 500 Internal Server Error"
    ):
        await client.submit({}, "client")


@pytest.mark.anyio
async def test_malformed_json_is_unavailable(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.get("/system_stats").respond(200, text="<html>proxy error</html>")

    with pytest.raises(ComfyUIUnavailable, match=r"malformed answer .*/system_stats: <html>"):
        await client.system_stats()


@pytest.mark.anyio
async def test_json_of_the_wrong_shape_is_unavailable(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.get("/models/upscale_models").respond(200, json={"not": "a list"})

    with pytest.raises(ComfyUIUnavailable, match="dict instead of list"):
        await client.upscale_models()


@pytest.mark.anyio
async def test_client_error_is_permanent(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    comfy.get("/view").respond(404)

    with pytest.raises(ComfyUIError, match=r"404 to GET .*/view") as caught:
        await client.view(OutputImage("gone_00001_.png", "restored"))

    assert not isinstance(caught.value, ComfyUIUnavailable)
    assert not caught.value.transient


# --- Host information


@pytest.mark.anyio
async def test_health_reports_version_and_devices(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.get("/system_stats").respond(200, json=recorded("get_system_stats.json")["body"])

    health = await client.health()

    assert health.ok
    assert health.version == "0.3.64"
    assert health.devices == ["cpu"]
    assert health.error is None


@pytest.mark.anyio
async def test_health_tolerates_unexpected_stats(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.get("/system_stats").respond(
        200, json={"system": "?", "devices": [{"name": "cuda:0"}, 3]}
    )

    health = await client.health()

    assert (health.ok, health.version, health.devices) == (True, None, ["cuda:0"])


@pytest.mark.anyio
async def test_health_never_raises(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    comfy.get("/system_stats").mock(side_effect=httpx.ConnectError("Connection refused"))

    health = await client.health()

    assert not health.ok
    assert health.error is not None
    assert "Connection refused" in health.error


@pytest.mark.anyio
async def test_object_info_per_class(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    serve_object_info(comfy, {**OBJECT_INFO, "My Node+": {"input": {}}})

    assert await client.object_info("ImageSharpen") == OBJECT_INFO["ImageSharpen"]
    assert await client.object_info("My Node+") == {"input": {}}
    assert await client.object_info("NoSuchNode") is None


@pytest.mark.anyio
async def test_object_info_of_an_unknown_class_as_recorded(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.get("/object_info/NoSuchNode").respond(
        200, json=recorded("get_object_info_unknown.json")["body"]
    )

    assert await client.object_info("NoSuchNode") is None


@pytest.mark.anyio
async def test_upscale_models(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    comfy.get("/models/upscale_models").respond(200, json=["tiny_compact_x2.safetensors", 7])

    assert await client.upscale_models() == ["tiny_compact_x2.safetensors"]


# --- Uploads and downloads


@pytest.mark.anyio
async def test_upload_uses_the_name_comfyui_returns(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    renamed = recorded("upload_image.json")["same_name_diff_bytes_no_overwrite"]["body"]
    route = comfy.post("/upload/image").respond(200, json={**renamed, "subfolder": "jobs/abc"})

    uploaded = await client.upload_image(b"\x89PNG...", "probe.png", "jobs/abc", overwrite=False)

    assert uploaded.name == "probe (1).png"
    assert uploaded.load_image_value == "jobs/abc/probe (1).png"
    body = route.calls.last.request.content
    assert b'name="image"; filename="probe.png"' in body
    assert b'name="subfolder"\r\n\r\njobs/abc\r\n' in body
    assert b'name="overwrite"\r\n\r\nfalse\r\n' in body
    assert b'name="type"\r\n\r\ninput\r\n' in body


@pytest.mark.anyio
async def test_upload_overwrites_by_default(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    plain = recorded("upload_image.json")["plain"]["body"]
    route = comfy.post("/upload/image").respond(200, json=plain)

    uploaded = await client.upload_image(b"data", "probe.png")

    assert uploaded.load_image_value == "probe.png"
    assert b'name="overwrite"\r\n\r\ntrue\r\n' in route.calls.last.request.content


@pytest.mark.anyio
async def test_upload_refused_is_permanent(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    refused = recorded("upload_image.json")["path_traversal_subfolder"]
    comfy.post("/upload/image").respond(refused["status"], text=refused["body"])

    with pytest.raises(ComfyUIError, match=r"400 to POST .*/upload/image") as caught:
        await client.upload_image(b"data", "input.png", "../../etc")

    assert not caught.value.transient


@pytest.mark.anyio
async def test_upload_answer_without_a_name_is_unavailable(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.post("/upload/image").respond(200, json={"subfolder": ""})

    with pytest.raises(ComfyUIUnavailable, match="without a name"):
        await client.upload_image(b"data", "input.png")


@pytest.mark.anyio
async def test_view_downloads_the_output(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    route = comfy.get("/view").respond(200, content=b"png bytes")

    data = await client.view(OutputImage("probe_00001_.png", "restored/job"))

    assert data == b"png bytes"
    assert dict(route.calls.last.request.url.params) == {
        "filename": "probe_00001_.png",
        "subfolder": "restored/job",
        "type": "output",
    }


# --- Prompts and the queue


@pytest.mark.anyio
async def test_submit_sends_client_and_prompt_ids(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    route = comfy.post("/prompt").respond(200, json=recorded("post_prompt_ok.json")["body"])
    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}

    prompt_id = await client.submit(graph, "my-client", prompt_id="mine")

    assert prompt_id == "efd71560-3ddf-44cc-893d-9b4f2400c93b"
    assert json.loads(route.calls.last.request.content) == {
        "prompt": graph,
        "client_id": "my-client",
        "prompt_id": "mine",
    }


@pytest.mark.anyio
@pytest.mark.parametrize(
    "case", sorted(name for name, case in INVALID.items() if case["status"] == 400)
)
async def test_submit_rejected_carries_comfyui_error_and_node_errors(
    comfy: respx.MockRouter, client: ComfyUIClient, case: str
) -> None:
    body = INVALID[case]["body"]
    comfy.post("/prompt").respond(400, json=body)

    with pytest.raises(WorkflowRejected) as caught:
        await client.submit({}, "client")

    assert caught.value.error == body["error"]
    assert caught.value.node_errors == body["node_errors"]
    assert body["error"]["message"] in str(caught.value)
    assert not caught.value.transient
    for node_id, entry in body["node_errors"].items():
        assert f"node {node_id} ({entry['class_type']})" in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("answer", [{"text": ""}, {"json": ["odd"]}, {"json": {"error": "x"}}])
async def test_submit_rejected_without_comfyui_details(
    comfy: respx.MockRouter, client: ComfyUIClient, answer: dict[str, Any]
) -> None:
    comfy.post("/prompt").respond(400, **answer)

    with pytest.raises(WorkflowRejected, match="ComfyUI rejected the prompt") as caught:
        await client.submit({}, "client")

    assert caught.value.node_errors == {}


@pytest.mark.anyio
async def test_submit_rejected_with_odd_node_errors_still_explains(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    node_errors = {"1": "junk", "2": {"errors": ["junk", {"message": "m", "details": "d"}]}}
    comfy.post("/prompt").respond(
        400, json={"error": {"message": "bad"}, "node_errors": node_errors}
    )

    with pytest.raises(WorkflowRejected, match=r"bad: node 2 \(None\): m \(d\)$") as caught:
        await client.submit({}, "client")

    assert caught.value.node_errors == node_errors


@pytest.mark.anyio
async def test_submit_answer_without_prompt_id_is_unavailable(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    comfy.post("/prompt").respond(200, json={"number": 1})

    with pytest.raises(ComfyUIUnavailable, match="without a prompt_id"):
        await client.submit({}, "client")


@pytest.mark.anyio
async def test_history_is_none_until_finished(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    entry = recorded("history_run1.json")
    prompt_id = next(iter(entry))
    comfy.get(f"/history/{prompt_id}").mock(
        side_effect=[httpx.Response(200, json={}), httpx.Response(200, json=entry)]
    )

    assert await client.history(prompt_id) is None
    assert await client.history(prompt_id) == entry[prompt_id]


@pytest.mark.anyio
async def test_queued_prompt_ids(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    busy = recorded("queue_busy.json")
    comfy.get("/queue").respond(
        200,
        json={
            "queue_running": busy["queue_running"],
            "queue_pending": [*busy["queue_pending"], ["malformed"]],
        },
    )

    assert await client.queued_prompt_ids() == {
        "34f51142-e46f-4ada-a067-1c8394bf48e1",
        "9453d141-b4c6-42b8-add0-6da6ff012bd5",
        "c3ae71d0-3a99-42bd-8a13-76074b79cbe8",
    }


@pytest.mark.anyio
async def test_interrupt_one_prompt_or_whatever_runs(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    route = comfy.post("/interrupt").respond(200)

    await client.interrupt("abc")
    await client.interrupt()

    first, second = route.calls
    assert json.loads(first.request.content) == {"prompt_id": "abc"}
    assert second.request.content == b""


@pytest.mark.anyio
async def test_delete_from_queue(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    route = comfy.post("/queue").respond(200)

    await client.delete_from_queue(iter(["a", "b"]))

    assert json.loads(route.calls.last.request.content) == {"delete": ["a", "b"]}


# --- Validation against /object_info


async def rejection(client: ComfyUIClient, graph: dict[str, Any]) -> WorkflowRejected:
    with pytest.raises(WorkflowRejected) as caught:
        await client.validate(graph)
    return caught.value


@pytest.mark.anyio
async def test_validate_accepts_the_shipped_core_workflow(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    route = serve_object_info(comfy, OBJECT_INFO)

    await client.validate(core_graph())

    # One query per distinct class, never the 500 KB `/object_info`.
    assert route.call_count == 6


@pytest.mark.anyio
async def test_validate_checks_the_upscale_model_against_the_host(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    specs = copy.deepcopy(OBJECT_INFO)
    serve_object_info(comfy, specs)
    graph = build_workflow(
        WorkflowName.MODEL_UPSCALE,
        image="jobs/abc/input.png",
        output_prefix="restored/abc/a1",
        scale=2.0,
        upscale_model="tiny_compact_x2.safetensors",
    )

    # Recorded on a host without models: the V3 combo has no options, so nothing is valid.
    error = await rejection(client, graph)
    assert error.node_errors["10"]["errors"][0]["type"] == "value_not_in_list"
    assert error.node_errors["10"]["dependent_outputs"] == ["6"]

    options = specs["UpscaleModelLoader"]["input"]["required"]["model_name"][1]
    options["options"] = ["tiny_compact_x2.safetensors"]
    await client.validate(graph)


@pytest.mark.anyio
async def test_validate_unknown_class_as_comfyui_says_it(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    serve_object_info(comfy, OBJECT_INFO)
    graph = core_graph()
    graph["2"]["class_type"] = "NoSuchNode"

    error = await rejection(client, graph)

    assert error.error == INVALID["unknown_class_type"]["body"]["error"]
    assert error.node_errors == {}


@pytest.mark.anyio
async def test_validate_missing_class_type_as_comfyui_says_it(client: ComfyUIClient) -> None:
    graph: dict[str, Any] = core_graph()
    del graph["3"]["class_type"]

    error = await rejection(client, graph)

    assert error.error == INVALID["missing_class_type_key"]["body"]["error"]


@pytest.mark.anyio
async def test_validate_without_output_node(comfy: respx.MockRouter, client: ComfyUIClient) -> None:
    serve_object_info(comfy, OBJECT_INFO)
    graph = core_graph()
    del graph["6"]

    error = await rejection(client, graph)

    assert error.error == INVALID["no_output_node"]["body"]["error"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("case", "node_id", "change"),
    [
        ("missing_required_input", "5", lambda inputs: inputs.pop("sigma")),
        ("value_above_max", "2", lambda inputs: inputs.update(blur_radius=100)),
        (
            "invalid_combo_value",
            "4",
            lambda inputs: inputs.update(upscale_method="super-resolution"),
        ),
        ("link_type_mismatch_MASK_to_IMAGE", "5", lambda inputs: inputs.update(image=["1", 1])),
    ],
)
async def test_validate_node_errors_match_comfyui_exactly(
    comfy: respx.MockRouter, client: ComfyUIClient, case: str, node_id: str, change: Any
) -> None:
    serve_object_info(comfy, OBJECT_INFO)
    graph = core_graph()
    change(graph[node_id]["inputs"])

    error = await rejection(client, graph)

    assert error.error == INVALID[case]["body"]["error"]
    assert error.node_errors == INVALID[case]["body"]["node_errors"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("node_id", "name", "value", "error_type"),
    [
        ("2", "blur_radius", 0, "value_smaller_than_min"),
        ("2", "blur_radius", "abc", "invalid_input_type"),
        ("2", "blur_radius", True, "invalid_input_type"),
        ("2", "blur_radius", 2.5, "invalid_input_type"),
        ("2", "sigma", 10.5, "value_bigger_than_max"),
        ("6", "filename_prefix", 7, "invalid_input_type"),
        # V3 combo: ComfyUI accepts this at submit and fails at run time (recorded).
        ("3", "blend_mode", "bogus_mode", "value_not_in_list"),
        ("4", "upscale_method", {"__value__": "bogus"}, "value_not_in_list"),
        ("2", "image", ["99", 0], "bad_linked_input"),
        ("2", "image", ["1", 5], "bad_linked_input"),
        ("2", "image", ["1", 0, 0], "bad_linked_input"),
    ],
)
async def test_validate_rules(
    comfy: respx.MockRouter,
    client: ComfyUIClient,
    node_id: str,
    name: str,
    value: Any,
    error_type: str,
) -> None:
    serve_object_info(comfy, OBJECT_INFO)
    graph = core_graph()
    graph[node_id]["inputs"][name] = value

    error = await rejection(client, graph)

    assert error.error["type"] == "prompt_outputs_failed_validation"
    assert list(error.node_errors) == [node_id]
    (reported,) = error.node_errors[node_id]["errors"]
    assert reported["type"] == error_type
    assert reported["extra_info"]["input_name"] == name
    assert error.node_errors[node_id]["dependent_outputs"] == ["6"]
    assert f"node {node_id} (" in str(error)


@pytest.mark.anyio
async def test_validate_accepts_in_range_literals_of_both_combo_encodings(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    serve_object_info(comfy, OBJECT_INFO)
    graph = core_graph()
    graph["2"]["inputs"].update(blur_radius=31, sigma=0.1)
    graph["3"]["inputs"]["blend_mode"] = "difference"  # V3
    graph["4"]["inputs"].update(upscale_method="area", scale_by=8)  # V1; an int for a FLOAT
    graph["6"]["inputs"]["filename_prefix"] = {"__value__": "restored/abc/a2"}
    # A link into a combo: ComfyUI checks the value at run time, so do not reject it here.
    graph["5"]["inputs"]["image"] = ["4", 0]
    graph["4"]["inputs"]["upscale_method"] = ["2", 0]

    await client.validate(graph)


@pytest.mark.anyio
async def test_validate_reports_every_failing_node_and_its_outputs(
    comfy: respx.MockRouter, client: ComfyUIClient
) -> None:
    specs = {
        **OBJECT_INFO,
        "Custom": {
            "input": {
                "required": {
                    "anything": ["*", {}],
                    "flag": ["BOOLEAN", {"default": False}],
                    "tags": ["COMBO", {"multiselect": True, "options": ["a", "b"]}],
                    "mode": [["x", *(f"m{i}" for i in range(25))], {}],
                    "broken_spec": None,
                    "model": ["UPSCALE_MODEL", {}],
                },
                "optional": {
                    "strength": ["FLOAT", {"min": 0.0, "max": 1.0}],
                    "note": ["STRING", {"min": 3}],  # a length, say: not a bound on the value
                    "seed": ["INT", {"min": 0}],  # optional and absent: fine
                },
            },
            "output": ["IMAGE"],
            "output_node": False,
        },
    }
    serve_object_info(comfy, specs)
    graph = core_graph()
    good = {
        "anything": ["4", 0],
        "flag": True,
        "tags": {"__value__": ["a", "b"]},
        "mode": "m3",
        "broken_spec": 1,
        "model": ["1", 0],
        "strength": 0.5,
        "note": "ok",
    }
    graph["7"] = {"class_type": "Custom", "inputs": good}
    graph["8"] = {
        "class_type": "Custom",
        "inputs": {**good, "flag": 1, "mode": "zz", "strength": 2},
    }
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    graph["2"]["inputs"]["sigma"] = 0.0

    error = await rejection(client, graph)

    assert set(error.node_errors) == {"2", "7", "8"}
    assert error.node_errors["2"]["dependent_outputs"] == ["6", "9"]
    assert error.node_errors["7"]["dependent_outputs"] == []
    assert [e["type"] for e in error.node_errors["7"]["errors"]] == ["return_type_mismatch"]
    errors_8 = {e["extra_info"]["input_name"]: e for e in error.node_errors["8"]["errors"]}
    assert {name: e["type"] for name, e in errors_8.items()} == {
        "flag": "invalid_input_type",
        "mode": "value_not_in_list",
        "model": "return_type_mismatch",
        "strength": "value_bigger_than_max",
    }
    assert errors_8["mode"]["details"] == "mode: 'zz' not in (list of length 26)"
