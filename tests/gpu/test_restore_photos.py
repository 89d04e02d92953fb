"""Our real workflows, through `ComfyUIService.restore()`, on degraded real photos and a real
historic one, judged for quality against the recorded baselines.

The core workflow always runs; the model workflow runs when the host lists the configured upscale
model (`COMFYUI_UPSCALE_MODEL`) and is otherwise skipped with a message naming it. Expected scale:
`COMFYUI_SCALE` for the core workflow, `COMFYUI_UPSCALE_MODEL_SCALE` (default 2) for the model one.

Each restoration records its quality figures (`fixtures.quality.metrics`); after a workflow's
photos, `test_quality_gate` records them as the baseline (`--record-baseline`) or compares them
with it (`fixtures.quality.baselines`), failing on drops beyond the tolerances.
"""

from __future__ import annotations

import io
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from PIL import Image

from app.core.config import Settings, WorkflowName
from app.services.comfyui import ComfyUIService, RestoredImage
from fixtures.photos import (
    DEFAULT_PHOTOS,
    HISTORIC_PHOTOS,
    degraded_photos,
    historic_photo,
    load_photo,
    max_side_from_env,
)
from fixtures.quality.baselines import (
    PhotoResult,
    baseline_document,
    baseline_name,
    compare,
    read_baseline,
    write_baseline,
)
from fixtures.quality.metrics import photo_quality, pixel_fingerprint, resized, rgb_array
from fixtures.quality.report import busiest_box, crops
from tests.gpu.gpu_reporting import (
    GpuReport,
    QualityOptions,
    RestorationRecord,
    thumbnail_data_uri,
)

pytestmark = pytest.mark.anyio

# The output must differ from the input resized to its size by more than this (0..255 levels),
MIN_MEAN_ABS_DIFF = 0.5
# must not be blank (pixel standard deviation, 0..255),
MIN_STD_DEV = 8.0
# and must still be the same photo (luminance correlation with the resized input; the random-weight
# test models on the CPU host reach 0.8, restorations of the photo well above, noise about 0).
MIN_CORRELATION = 0.5

MODEL_SCALE_ENV = "COMFYUI_UPSCALE_MODEL_SCALE"

ALL_PHOTOS = (*DEFAULT_PHOTOS, *HISTORIC_PHOTOS)
CASES = [(workflow, photo) for workflow in WorkflowName for photo in ALL_PHOTOS]


@dataclass(frozen=True)
class PhotoCase:
    """What a case restores: a degraded fixture photo (clean original known) or a historic one."""

    name: str
    data: bytes = field(repr=False)
    extension: str
    width: int
    height: int
    seed: int
    metadata: dict[str, Any]
    clean: Image.Image | None = field(repr=False)  # full size; None for historic photos


@pytest.fixture(scope="session")
def photos() -> dict[str, PhotoCase]:
    found = {
        photo.name: PhotoCase(
            photo.name,
            photo.png,
            "png",
            photo.width,
            photo.height,
            photo.seed,
            photo.metadata(),
            load_photo(photo.name),
        )
        for photo in degraded_photos()
    }
    for name in HISTORIC_PHOTOS:
        data = historic_photo(name)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        metadata = {"name": name, "historic": True, "width": width, "height": height}
        found[name] = PhotoCase(name, data, "jpg", width, height, 0, metadata, None)
    return found


@pytest.fixture(scope="session")
def settings(comfyui_url: str) -> Settings:
    return Settings(_env_file=None, comfyui_url=comfyui_url)  # type: ignore[call-arg]


def model_scale() -> float:
    """The factor of the configured upscale model: the model workflow's expected scale."""
    value = os.environ.get(MODEL_SCALE_ENV, "").strip()
    return float(value) if value else 2.0


def server_seconds(entry: dict[str, Any] | None) -> float | None:
    """execution_start -> execution_success of a history entry, from ComfyUI's own timestamps."""
    if entry is None:
        return None
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    start, end = stamps.get("execution_start"), stamps.get("execution_success")
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return None
    return (end - start) / 1000


def rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


async def restore(
    service: ComfyUIService, workflow: WorkflowName, photo: PhotoCase
) -> tuple[RestoredImage, float]:
    start = time.perf_counter()
    restored = await service.restore(
        job_id=uuid.uuid4(),
        attempt=1,
        image=photo.data,
        extension=photo.extension,
        workflow=workflow,
    )
    return restored, time.perf_counter() - start


@pytest.mark.parametrize(
    ("workflow", "photo_name"), CASES, ids=[f"{w.value}-{p}" for w, p in CASES]
)
async def test_restore_degraded_photo(
    workflow: WorkflowName,
    photo_name: str,
    photos: dict[str, PhotoCase],
    settings: Settings,
    gpu_report: GpuReport,
    quality_options: QualityOptions,
    request: pytest.FixtureRequest,
) -> None:
    photo = photos[photo_name]
    async with ComfyUIService.from_settings(settings) as service:
        service.workflow_inputs = quality_options.workflow_inputs
        if workflow is WorkflowName.MODEL_UPSCALE:
            model = settings.comfyui_upscale_model
            listed = await service.client.upscale_models()
            if model not in listed:
                reason = (
                    f"upscale model {model!r} (COMFYUI_UPSCALE_MODEL) is not listed by "
                    f"{settings.comfyui_url}/models/upscale_models (host has: {listed})"
                )
                gpu_report.skip(request.node.nodeid, reason)
                pytest.skip(reason)
            scale = model_scale()
        else:
            scale = settings.comfyui_scale

        if workflow.value not in gpu_report.warmups:
            # The first prompt of a workflow pays for warm-up and model loading: not timed.
            _, seconds = await restore(service, workflow, photo)
            gpu_report.warmups[workflow.value] = round(seconds, 4)

        restored, latency = await restore(service, workflow, photo)
        entry = await service.client.history(restored.prompt_id)

    expected = (round(photo.width * scale), round(photo.height * scale))
    assert (restored.width, restored.height) == expected, (
        f"{photo.width}x{photo.height} x {scale:g} should give {expected[0]}x{expected[1]}"
    )
    with Image.open(io.BytesIO(restored.data)) as image:
        assert image.format == "PNG"
        assert image.size == expected
        image.load()  # the whole file decodes
    output = rgb(restored.data)
    degraded = resized(photo.data, expected)
    mean_abs_diff = float(np.abs(output - degraded).mean())
    std_dev = float(output.std())
    correlation = float(
        np.corrcoef(output.mean(axis=2).ravel(), degraded.mean(axis=2).ravel())[0, 1]
    )
    quality = photo_quality(
        clean=photo.clean, degraded=photo.data, restored=restored.data, size=expected
    )
    stages = {"degraded": degraded, "restored": rgb_array(restored.data)}
    if photo.clean is not None:
        stages = {"clean": resized(photo.clean, expected), **stages}
    box = busiest_box(next(iter(stages.values())))

    gpu_report.records.append(
        RestorationRecord(
            workflow=workflow.value,
            upscale_model=settings.comfyui_upscale_model
            if workflow is WorkflowName.MODEL_UPSCALE
            else None,
            photo=photo.name,
            seed=photo.seed,
            input_size=(photo.width, photo.height),
            output_size=(restored.width, restored.height),
            scale=scale,
            latency_s=round(latency, 4),
            server_s=server_seconds(entry),
            output_bytes=len(restored.data),
            mean_abs_diff=round(mean_abs_diff, 3),
            std_dev=round(std_dev, 3),
            correlation=round(correlation, 4),
            prompt_id=restored.prompt_id,
            photo_metadata=photo.metadata,
            before=thumbnail_data_uri(photo.data),
            after=thumbnail_data_uri(restored.data),
            quality=quality,
            input_fingerprint=pixel_fingerprint(photo.data),
            clean=None if photo.clean is None else thumbnail_data_uri(photo.clean),
            crops=crops(stages, box),
        )
    )
    assert mean_abs_diff > MIN_MEAN_ABS_DIFF, f"output equals the resized input ({mean_abs_diff=})"
    assert std_dev > MIN_STD_DEV, f"output is blank ({std_dev=})"
    assert correlation > MIN_CORRELATION, f"output is not the photo any more ({correlation=})"


@pytest.mark.parametrize("workflow", list(WorkflowName), ids=[w.value for w in WorkflowName])
def test_quality_gate(
    workflow: WorkflowName,
    settings: Settings,
    gpu_report: GpuReport,
    quality_options: QualityOptions,
) -> None:
    """After the workflow's photos: record them as its baseline, or compare them with it."""
    records = gpu_report.workflow_records(workflow.value)
    if not records:
        why = [s["reason"] for s in gpu_report.skipped if f"[{workflow.value}-" in s["test"]]
        if why:
            pytest.skip(f"no {workflow.value} restorations to judge: {why[0]}")
        pytest.fail(
            f"no {workflow.value} restorations ran before the gate: select its "
            "test_restore_degraded_photo cases too"
        )
    model = records[0].upscale_model
    path = quality_options.baseline_dir / baseline_name(workflow.value, model)
    results = [PhotoResult(r.photo, r.input_fingerprint, r.quality) for r in records]
    host = {"comfyui_version": gpu_report.version, "devices": gpu_report.devices}
    if quality_options.record:
        missing = sorted(set(ALL_PHOTOS) - {r.photo for r in records})
        if missing:
            pytest.fail(f"not recording {path}: no result for {', '.join(missing)} in this run")
        document = baseline_document(
            workflow=workflow.value,
            upscale_model=model,
            results=results,
            host=host,
            settings={
                "photos_max_side": max_side_from_env(),
                "scale": records[0].scale,
                "workflow_inputs": gpu_report.quality_settings.get("workflow_inputs", {}).get(
                    workflow.value, {}
                ),
            },
        )
        write_baseline(path, document)
        comparison = compare(
            workflow=workflow.value,
            upscale_model=model,
            path=path,
            baseline=document,
            results=results,
            tolerances=quality_options.tolerances,
        )
        comparison.status = "recorded"
        gpu_report.comparisons.append(comparison)
        return
    comparison = compare(
        workflow=workflow.value,
        upscale_model=model,
        path=path,
        baseline=read_baseline(path),
        results=results,
        tolerances=quality_options.tolerances,
        host=host,
    )
    gpu_report.comparisons.append(comparison)
    assert comparison.passed, "quality dropped below the baseline:\n" + "\n".join(
        comparison.lines()
    )
