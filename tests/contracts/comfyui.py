"""The ComfyUI contract: what our client (`app.services.comfyui`) relies on, written once.

Each tier subclasses `ComfyUIContract` and provides a `comfyui_url` fixture:
- the integration tier points it at the stand-in (`fixtures/comfyui`), in CI;
- the gpu tier points it at the real host named by `COMFYUI_URL`.
When the two disagree the stand-in is wrong: these tests assert what a real ComfyUI 0.3.64 answers.

Every test uploads into its own subfolder and writes under its own output prefix, so runs never
see each other's files and xdist is safe. Concurrent prompts from other clients of a shared host
can only delay ours (one prompt runs at a time): the caching tests submit both of their prompts
at once so that no foreign prompt runs between them and evicts the cache.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.core.config import Settings, WorkflowName
from app.services.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ExecutionCancelled,
    ExecutionFailed,
    OutputImage,
    PromptResult,
    UploadedImage,
    WorkflowRejected,
)
from app.workflows import Workflow, build_workflow, load_workflow, output_node
from fixtures.images import make_image

# Bounds for one prompt: a healthy host finishes these small graphs in well under a second.
RUN_TIMEOUT = 120.0
# How long a cancelled prompt may take to leave the queue (the interrupt is cooperative).
IDLE_TIMEOUT = 60.0

# The interrupt test's graph: a chain of blurs on a big image, each node a fraction of a second
# on a CPU host (ComfyUI 0.3.64 on 2 cores: ~0.4 s; the stand-in: ~0.7 s), so the cancel lands
# mid-chain, while the whole chain stays bounded (~10-20 s) should the interrupt be ignored.
INTERRUPT_IMAGE_SIDE = 1536
INTERRUPT_CHAIN = 24
INTERRUPT_BLUR = {"blur_radius": 12, "sigma": 5.0}

VERSION = re.compile(r"^\d+\.\d+\.\d+")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def core_graph(image: str, prefix: str, scale: float = 2.0) -> Workflow:
    """Our own core workflow (`restore.json`), as the worker builds it."""
    return build_workflow(
        WorkflowName.CORE,
        image=image,
        output_prefix=prefix,
        scale=scale,
        upscale_model="unused.safetensors",
    )


def blur_chain(image: str, prefix: str) -> Workflow:
    """LoadImage, INTERRUPT_CHAIN blurs in a row, SaveImage (node "99")."""
    graph: Workflow = {"1": {"class_type": "LoadImage", "inputs": {"image": image}}}
    previous = "1"
    for index in range(INTERRUPT_CHAIN):
        node_id = str(10 + index)
        graph[node_id] = {
            "class_type": "ImageBlur",
            "inputs": {"image": [previous, 0], **INTERRUPT_BLUR},
        }
        previous = node_id
    graph["99"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [previous, 0], "filename_prefix": prefix},
    }
    return graph


def messages(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The `status.messages` of a history entry as (kind, data) pairs."""
    return [(kind, data) for kind, data in entry["status"]["messages"]]


def only_error(rejected: WorkflowRejected, node_id: str) -> dict[str, Any]:
    """The single error ComfyUI reported for `node_id` (and for no other node)."""
    assert list(rejected.node_errors) == [node_id], rejected.node_errors
    errors = rejected.node_errors[node_id]["errors"]
    assert len(errors) == 1, errors
    error: dict[str, Any] = errors[0]
    return error


def record_prompt_ids(client: ComfyUIClient) -> list[str]:
    """Spy on `client.submit`: the ids of the prompts it queued, in order."""
    submitted: list[str] = []
    submit = client.submit

    async def spy(workflow: Workflow, client_id: str, **kwargs: Any) -> str:
        prompt_id = await submit(workflow, client_id, **kwargs)
        submitted.append(prompt_id)
        return prompt_id

    client.submit = spy  # type: ignore[method-assign]
    return submitted


async def wait_for_history(client: ComfyUIClient, prompt_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT
    while (entry := await client.history(prompt_id)) is None:
        assert time.monotonic() < deadline, (
            f"prompt {prompt_id} has no history after {RUN_TIMEOUT}s"
        )
        await asyncio.sleep(0.05)
    return entry


async def cached_nodes(client: ComfyUIClient, result: PromptResult) -> list[str]:
    """The nodes a finished prompt took from the cache (its one `execution_cached` message)."""
    entry = await wait_for_history(client, result.prompt_id)
    (nodes,) = [data["nodes"] for kind, data in messages(entry) if kind == "execution_cached"]
    return sorted(nodes)


async def wait_until_not_queued(client: ComfyUIClient, prompt_id: str) -> float:
    """Seconds until `prompt_id` is neither running nor pending; fails after IDLE_TIMEOUT."""
    start = time.monotonic()
    while prompt_id in await client.queued_prompt_ids():
        elapsed = time.monotonic() - start
        assert elapsed < IDLE_TIMEOUT, f"prompt {prompt_id} still queued after {elapsed:.1f}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - start


class ComfyUIContract:
    """What `app.services.comfyui` relies on. Subclass it and provide `comfyui_url`."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    async def client(self, comfyui_url: str) -> AsyncIterator[ComfyUIClient]:
        async with ComfyUIClient(comfyui_url, request_timeout=30.0, poll_interval=0.1) as client:
            yield client

    @pytest.fixture
    def unique(self) -> str:
        """A subfolder / output prefix directory of this test's own."""
        return f"contract/{uuid.uuid4().hex[:12]}"

    async def _upload(
        self, client: ComfyUIClient, unique: str, width: int = 64, height: int = 48, seed: int = 0
    ) -> UploadedImage:
        return await client.upload_image(
            make_image(size=(width, height), seed=seed, noise=True), "input.png", unique
        )

    # --- health

    async def test_health_reports_version_and_devices(self, client: ComfyUIClient) -> None:
        health = await client.health()
        stats = await client.system_stats()

        assert health.ok, health.error
        assert health.error is None
        assert health.version is not None
        assert VERSION.match(health.version), health.version
        assert health.version == stats["system"]["comfyui_version"]
        assert health.devices, "no devices in /system_stats"
        assert health.devices == [device["name"] for device in stats["devices"]]
        for device in stats["devices"]:
            assert isinstance(device["name"], str)
            assert device["name"]
            assert isinstance(device["type"], str)
            assert isinstance(device["vram_total"], int)
            assert isinstance(device["vram_free"], int)

    async def test_health_of_an_unreachable_host_is_not_ok(self) -> None:
        async with ComfyUIClient("http://127.0.0.1:1", request_timeout=2.0) as client:
            health = await client.health()
        assert not health.ok
        assert health.version is None
        assert health.error is not None
        assert "unreachable" in health.error

    # --- what validation reads

    @pytest.mark.parametrize("workflow", list(WorkflowName))
    async def test_object_info_describes_every_node_of_our_workflows(
        self, client: ComfyUIClient, workflow: WorkflowName
    ) -> None:
        graph = load_workflow(workflow)
        for node_id, node in graph.items():
            spec = await client.object_info(node["class_type"])
            assert spec is not None, f"host lacks {node['class_type']} (node {node_id})"
            assert spec["name"] == node["class_type"]
            assert spec["output_node"] is (node["class_type"] == "SaveImage")
            required = spec["input"]["required"]
            assert set(node["inputs"]) <= set(required) | set(spec["input"].get("optional", {}))
        # V3 combos carry their options: the client-side check depends on it.
        blend = await client.object_info("ImageBlend")
        assert blend is not None
        mode_type, mode_options = blend["input"]["required"]["blend_mode"]
        assert mode_type == "COMBO"
        assert {"normal", "multiply", "screen"} <= set(mode_options["options"])
        # V1 combos list the options as the type.
        scale_by = await client.object_info("ImageScaleBy")
        assert scale_by is not None
        methods = scale_by["input"]["required"]["upscale_method"][0]
        assert methods == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]

    async def test_object_info_of_an_unknown_class_is_none(self, client: ComfyUIClient) -> None:
        assert await client.object_info("NoSuchNode") is None

    async def test_upscale_models_are_file_names(self, client: ComfyUIClient) -> None:
        models = await client.upscale_models()
        loader = await client.object_info("UpscaleModelLoader")
        assert loader is not None
        listed = loader["input"]["required"]["model_name"][1]["options"]
        assert models == listed
        assert all(isinstance(model, str) and model for model in models)

    # --- upload

    async def test_upload_returns_name_subfolder_and_type(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        data = make_image(size=(32, 24), seed=1, noise=True)
        uploaded = await client.upload_image(data, "photo.png", unique, overwrite=False)

        assert uploaded == UploadedImage(name="photo.png", subfolder=unique, type="input")
        assert uploaded.load_image_value == f"{unique}/photo.png"
        assert await client.view(OutputImage("photo.png", unique, "input")) == data

    async def test_upload_of_identical_bytes_keeps_the_name(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        data = make_image(size=(32, 24), seed=2, noise=True)
        first = await client.upload_image(data, "same.png", unique, overwrite=False)
        again = await client.upload_image(data, "same.png", unique, overwrite=False)
        assert first.name == again.name == "same.png"

    async def test_upload_clash_is_renamed_unless_overwrite(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        first, second, third = (
            make_image(size=(32, 24), seed=3, noise=True),
            make_image(size=(32, 24), seed=4, noise=True),
            make_image(size=(32, 24), seed=5, noise=True),
        )
        assert len({first, second, third}) == 3

        kept = await client.upload_image(first, "clash.png", unique, overwrite=False)
        renamed = await client.upload_image(second, "clash.png", unique, overwrite=False)
        replaced = await client.upload_image(third, "clash.png", unique, overwrite=True)

        assert kept.name == "clash.png"
        assert renamed == UploadedImage(name="clash (1).png", subfolder=unique, type="input")
        assert replaced == UploadedImage(name="clash.png", subfolder=unique, type="input")
        assert await client.view(OutputImage("clash.png", unique, "input")) == third
        assert await client.view(OutputImage("clash (1).png", unique, "input")) == second

    # --- submit

    async def test_submit_honours_our_prompt_id(self, client: ComfyUIClient, unique: str) -> None:
        uploaded = await self._upload(client, unique)
        ours = str(uuid.uuid4())
        client_id = uuid.uuid4().hex

        queued = await client.submit(
            core_graph(uploaded.load_image_value, f"{unique}/out"), client_id, prompt_id=ours
        )

        assert queued == ours
        entry = await wait_for_history(client, ours)
        number, prompt_id, graph, extra_data, outputs_to_execute = entry["prompt"]
        assert isinstance(number, int)
        assert prompt_id == ours
        assert graph["1"]["inputs"]["image"] == uploaded.load_image_value
        assert extra_data["client_id"] == client_id
        assert outputs_to_execute == ["6"]
        assert entry["status"]["status_str"] == "success"

    async def test_submit_without_an_id_returns_a_new_one(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique)
        queued = await client.submit(
            core_graph(uploaded.load_image_value, f"{unique}/out"), uuid.uuid4().hex
        )
        assert str(uuid.UUID(queued)) == queued
        entry = await wait_for_history(client, queued)
        assert entry["prompt"][1] == queued

    # --- progress, completion, outputs

    async def test_run_reports_increasing_progress_to_one_then_history(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique, 96, 64)
        graph = core_graph(uploaded.load_image_value, f"{unique}/out")
        seen: list[float] = []

        result = await client.run(graph, on_progress=seen.append, timeout=RUN_TIMEOUT)

        # One step per node that ran (6), the last being the end of the prompt.
        assert len(seen) >= 4, seen
        assert all(0 < value <= 1 for value in seen), seen
        assert seen == sorted(set(seen)), f"not strictly increasing: {seen}"
        assert seen[-1] == 1.0
        # The history entry exists as soon as the run is over.
        entry = await client.history(result.prompt_id)
        assert entry is not None
        assert entry["status"]["status_str"] == "success"
        assert entry["status"]["completed"] is True
        kinds = [kind for kind, _ in messages(entry)]
        assert kinds == ["execution_start", "execution_cached", "execution_success"]
        assert entry["outputs"]["6"]["images"] == [
            {"filename": "out_00001_.png", "subfolder": unique, "type": "output"}
        ]
        assert result == PromptResult(
            prompt_id=result.prompt_id,
            outputs={"6": [OutputImage("out_00001_.png", unique, "output")]},
        )

    async def test_view_returns_the_output_png_at_the_expected_size(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique, 96, 64, seed=7)
        graph = core_graph(uploaded.load_image_value, f"{unique}/restored/job", scale=2.0)

        result = await client.run(graph, timeout=RUN_TIMEOUT)
        (output,) = result.outputs[output_node(graph)]
        data = await client.view(output)

        assert output == OutputImage("job_00001_.png", f"{unique}/restored", "output")
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        image = decode(data)
        assert image.format == "PNG"
        assert image.size == (192, 128)
        assert image.mode == "RGB"
        # Not blank: the gradient survives the restoration.
        assert np.asarray(image, dtype=np.float32).std() > 20

    async def test_view_of_a_missing_file_is_a_permanent_error(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        with pytest.raises(ComfyUIError) as raised:
            await client.view(OutputImage("nothing_00001_.png", unique, "output"))
        assert not isinstance(raised.value, ComfyUIUnavailable)
        assert "404" in str(raised.value)

    # --- invalid graphs

    async def test_out_of_range_value_is_rejected_by_the_host_like_by_our_check(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique)
        graph = core_graph(uploaded.load_image_value, f"{unique}/out")
        graph["2"]["inputs"]["blur_radius"] = 100

        with pytest.raises(WorkflowRejected) as by_host:
            await client.submit(graph, uuid.uuid4().hex)
        with pytest.raises(WorkflowRejected) as by_us:
            await client.validate(graph)

        rejected = by_host.value
        assert rejected.error["type"] == "prompt_outputs_failed_validation"
        assert rejected.error["message"] == "Prompt outputs failed validation"
        error = only_error(rejected, "2")
        assert error["type"] == "value_bigger_than_max"
        assert error["message"] == "Value 100 bigger than max of 31"
        assert error["details"] == "blur_radius"
        assert error["extra_info"]["input_name"] == "blur_radius"
        assert error["extra_info"]["received_value"] == 100
        assert rejected.node_errors["2"]["class_type"] == "ImageBlur"
        assert rejected.node_errors["2"]["dependent_outputs"] == ["6"]
        # Our client-side check says the same, in the same shape.
        assert by_us.value.error == rejected.error
        assert by_us.value.node_errors == rejected.node_errors

    async def test_missing_required_input_is_rejected(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique)
        graph = core_graph(uploaded.load_image_value, f"{unique}/out")
        del graph["5"]["inputs"]["sigma"]

        with pytest.raises(WorkflowRejected) as rejected:
            await client.submit(graph, uuid.uuid4().hex)

        error = only_error(rejected.value, "5")
        assert error == {
            "type": "required_input_missing",
            "message": "Required input is missing",
            "details": "sigma",
            "extra_info": {"input_name": "sigma"},
        }
        assert rejected.value.node_errors["5"]["class_type"] == "ImageSharpen"

    async def test_unknown_node_class_is_rejected(self, client: ComfyUIClient, unique: str) -> None:
        uploaded = await self._upload(client, unique)
        graph = core_graph(uploaded.load_image_value, f"{unique}/out")
        graph["2"]["class_type"] = "NoSuchNode"

        with pytest.raises(WorkflowRejected) as rejected:
            await client.submit(graph, uuid.uuid4().hex)

        assert rejected.value.error == {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NoSuchNode does not exist.",
            "details": "Node ID '#2'",
            "extra_info": {},
        }
        assert rejected.value.node_errors == {}

    async def test_bad_v3_combo_is_caught_by_our_check_though_the_host_accepts_it(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique)
        graph = core_graph(uploaded.load_image_value, f"{unique}/out")
        graph["3"]["inputs"]["blend_mode"] = "bogus_mode"

        with pytest.raises(WorkflowRejected) as rejected:
            await client.validate(graph)
        error = only_error(rejected.value, "3")
        assert error["type"] == "value_not_in_list"
        assert error["details"].startswith("blend_mode: 'bogus_mode' not in [")

        # ComfyUI itself queues it (V3 combos are not checked at /prompt) and fails at run time.
        with pytest.raises(ExecutionFailed) as failed:
            await client.run(graph, timeout=RUN_TIMEOUT)
        assert failed.value.node_id == "3"
        assert failed.value.node_type == "ImageBlend"
        assert failed.value.exception_type == "ValueError"
        assert failed.value.exception_message == "Unsupported blend mode: bogus_mode"

    async def test_unknown_upscale_model_is_caught_by_our_check(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique)
        graph = build_workflow(
            WorkflowName.MODEL_UPSCALE,
            image=uploaded.load_image_value,
            output_prefix=f"{unique}/out",
            scale=2.0,
            upscale_model=f"missing-{uuid.uuid4().hex}.pth",
        )
        with pytest.raises(WorkflowRejected) as rejected:
            await client.validate(graph)
        error = only_error(rejected.value, "10")
        assert error["type"] == "value_not_in_list"
        assert error["extra_info"]["input_name"] == "model_name"
        assert rejected.value.node_errors["10"]["class_type"] == "UpscaleModelLoader"

    # --- missing input image

    async def test_missing_input_image_is_rejected_at_submit(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        missing = f"{unique}/does_not_exist.png"
        graph = core_graph(missing, f"{unique}/out")
        # Upload combos list only top-level files: our check leaves the file to ComfyUI.
        await client.validate(graph)

        with pytest.raises(WorkflowRejected) as rejected:
            await client.run(graph, timeout=RUN_TIMEOUT)

        assert rejected.value.error["type"] == "prompt_outputs_failed_validation"
        error = only_error(rejected.value, "1")
        assert error == {
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": f"image - Invalid image file: {missing}",
            "extra_info": {"input_name": "image"},
        }
        assert rejected.value.node_errors["1"]["class_type"] == "LoadImage"
        assert rejected.value.node_errors["1"]["dependent_outputs"] == ["6"]

    # --- interrupt

    async def test_cancel_interrupts_the_running_prompt(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        side = INTERRUPT_IMAGE_SIDE
        uploaded = await client.upload_image(
            make_image(size=(side, side), seed=9), "big.png", unique
        )
        graph = blur_chain(uploaded.load_image_value, f"{unique}/out")
        submitted = record_prompt_ids(client)
        cancel = asyncio.Event()
        seen: list[float] = []

        def on_progress(fraction: float) -> None:
            # The first step means LoadImage finished: the prompt is running, not pending.
            seen.append(fraction)
            cancel.set()

        with pytest.raises(ExecutionCancelled):
            await client.run(graph, on_progress=on_progress, cancel=cancel, timeout=RUN_TIMEOUT)

        (prompt_id,) = submitted
        assert seen, "the prompt was cancelled before it reported any progress"
        await wait_until_not_queued(client, prompt_id)
        entry = await wait_for_history(client, prompt_id)
        assert entry["status"]["status_str"] == "error"
        assert entry["status"]["completed"] is False
        assert entry["outputs"] == {}
        kind, data = messages(entry)[-1]
        assert kind == "execution_interrupted"
        assert data["prompt_id"] == prompt_id
        assert data["node_type"] == "ImageBlur"
        # Stopped mid-chain: neither all the blurs nor SaveImage ran.
        assert "99" not in data["executed"]
        assert len(data["executed"]) < INTERRUPT_CHAIN
        assert "1" in data["executed"]

    async def test_timeout_interrupts_the_prompt(self, client: ComfyUIClient, unique: str) -> None:
        side = INTERRUPT_IMAGE_SIDE
        uploaded = await client.upload_image(
            make_image(size=(side, side), seed=10), "big.png", unique
        )
        graph = blur_chain(uploaded.load_image_value, f"{unique}/out")
        submitted = record_prompt_ids(client)

        with pytest.raises(ComfyUITimeout):
            await client.run(graph, timeout=0.5)

        (prompt_id,) = submitted
        await wait_until_not_queued(client, prompt_id)
        # Deleted while pending (no history), or interrupted while running: never finished.
        entry = await client.history(prompt_id)
        if entry is not None:
            assert entry["status"]["status_str"] == "error"
            assert entry["outputs"] == {}
            assert messages(entry)[-1][0] == "execution_interrupted"

    # --- caching with a unique prefix per job

    async def test_identical_graph_answers_with_the_cached_output(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        uploaded = await self._upload(client, unique, seed=11)
        graph = core_graph(uploaded.load_image_value, f"{unique}/out")

        # Both queued at once: they run back to back, the second from the cache.
        first, second = await asyncio.gather(
            client.run(graph, timeout=RUN_TIMEOUT), client.run(graph, timeout=RUN_TIMEOUT)
        )

        expected = {"6": [OutputImage("out_00001_.png", unique, "output")]}
        assert first.outputs == expected
        assert second.outputs == expected
        assert first.prompt_id != second.prompt_id
        cached = sorted([await cached_nodes(client, result) for result in (first, second)])
        assert cached == [[], sorted(graph)]

    async def test_a_new_prefix_writes_a_new_file(self, client: ComfyUIClient, unique: str) -> None:
        uploaded = await self._upload(client, unique, seed=12)
        graphs = [
            core_graph(uploaded.load_image_value, f"{unique}/{attempt}/out")
            for attempt in ("a1", "a2")
        ]

        results = await asyncio.gather(
            *(client.run(graph, timeout=RUN_TIMEOUT) for graph in graphs)
        )

        outputs = [result.outputs["6"] for result in results]
        assert outputs == [
            [OutputImage("out_00001_.png", f"{unique}/a1", "output")],
            [OutputImage("out_00001_.png", f"{unique}/a2", "output")],
        ]
        first, second = [decode(await client.view(images[0])) for images in outputs]
        # Only SaveImage ran again: the same pixels, in a new file.
        assert np.array_equal(np.asarray(first), np.asarray(second))
        cached = sorted([await cached_nodes(client, result) for result in results])
        assert cached == [[], ["1", "2", "3", "4", "5"]]

    # --- model upscale progress (when the host has our configured model)

    async def test_model_upscale_reports_progress_per_tile(
        self, client: ComfyUIClient, unique: str
    ) -> None:
        model = Settings(_env_file=None).comfyui_upscale_model  # type: ignore[call-arg]
        models = await client.upscale_models()
        if model not in models:
            pytest.skip(f"the host does not list the upscale model {model!r} (it has {models})")
        # 1000x700 at 512px tiles overlapping 32: 3 x 2 = 6 tiles, one `progress` each.
        uploaded = await self._upload(client, unique, 1000, 700, seed=13)
        graph = build_workflow(
            WorkflowName.MODEL_UPSCALE,
            image=uploaded.load_image_value,
            output_prefix=f"{unique}/out",
            scale=2.0,
            upscale_model=model,
        )
        await client.validate(graph)
        seen: list[float] = []

        result = await client.run(graph, on_progress=seen.append, timeout=RUN_TIMEOUT)

        assert seen == sorted(set(seen))
        assert seen[-1] == 1.0
        # 7 nodes give at most 7 steps; the tiles of node 11 add steps between them.
        assert len(seen) > len(graph), seen
        (output,) = result.outputs["6"]
        assert decode(await client.view(output)).format == "PNG"
