"""The gpu tier's quality gate, run as `nox -s gpu` runs it, against the ComfyUI stand-in.

`nox -s gpu` itself stays for real hosts; here the same tests/gpu run in a child pytest with
COMFYUI_URL pointing at this worker's stand-in: record the baselines, compare a second run with
them, then make the core workflow worse on purpose (oversharpened through `--workflow-input`)
and see the gate fail naming the photos and metrics that dropped.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from fixtures import REPO_ROOT
from fixtures.photos import DEFAULT_PHOTOS, HISTORIC_PHOTOS

# Small photos keep the three runs short; the figures differ from 512 px ones, not the logic.
PHOTO_SIDE = "64"
SELECT = "test_restore_degraded_photo or test_quality_gate"
OVERSHARPEN = "restore:5.alpha=5"  # ImageSharpen at its maximum strength


def run_gpu_tier(
    standin_url: str, baselines: Path, reports: Path, *options: str
) -> tuple[int, str, dict[str, Any]]:
    """`nox -s gpu -- OPTIONS` minus nox: exit code, output, and the JSON report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COMFYUI_"))}
    env |= {"COMFYUI_URL": standin_url, "PHOTOS_MAX_SIDE": PHOTO_SIDE}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/gpu",
        "-p",
        "no:cacheprovider",
        "-k",
        SELECT,
        f"--baseline-dir={baselines}",
        f"--gpu-report-dir={reports}",
        *options,
    ]
    # The limit only stops a hung child; nothing asserts on how long it took.
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    report = json.loads((reports / "gpu-report.json").read_text(encoding="utf-8"))
    return done.returncode, output, report


def test_record_then_compare_then_a_worse_workflow_fails_the_gate(
    standin_url: str, tmp_path: Path
) -> None:
    baselines = tmp_path / "baselines"
    photos = {*DEFAULT_PHOTOS, *HISTORIC_PHOTOS}

    # 1. --record-baseline writes one file per workflow (and model) with every photo and the host.
    code, output, report = run_gpu_tier(
        standin_url, baselines, tmp_path / "record", "--record-baseline"
    )
    assert code == 0, output
    assert sorted(p.name for p in baselines.iterdir()) == [
        "restore.json",
        "restore_model_upscale-tiny_compact_x2.json",
    ]
    core = json.loads((baselines / "restore.json").read_text())
    assert set(core["photos"]) == photos
    assert core["host"]["comfyui_version"] == report["host"]["comfyui_version"]
    assert core["host"]["devices"] == report["host"]["devices"]
    assert core["settings"]["photos_max_side"] == int(PHOTO_SIDE)
    assert set(core["photos"]["astronaut"]) >= {"degraded", "restored", "improvement"}
    assert "restored" not in core["photos"]["grace_hopper_1984"]  # no clean original
    assert [b["status"] for b in report["quality"]["baselines"]] == ["recorded", "recorded"]

    # 2. A second run compares with them and passes: the stand-in is deterministic.
    code, output, report = run_gpu_tier(standin_url, baselines, tmp_path / "compare")
    assert code == 0, output
    gates = report["quality"]["baselines"]
    assert [(g["workflow"], g["status"], g["passed"]) for g in gates] == [
        ("restore", "compared", True),
        ("restore_model_upscale", "compared", True),
    ]
    assert all(c["verdict"] == "within" for g in gates for c in g["changes"])
    assert "restore: baseline" in output
    assert "5 photos compared, 0 figures dropped, 0 improved" in output

    # 3. The core workflow oversharpened: its gate fails naming photos and metrics; the model
    # workflow, untouched, still passes.
    reports = tmp_path / "worse"
    code, output, report = run_gpu_tier(
        standin_url, baselines, reports, f"--workflow-input={OVERSHARPEN}"
    )
    assert code == 1, output
    assert "FAILED tests/gpu/test_restore_photos.py::test_quality_gate[restore]" in output
    assert "test_quality_gate[restore_model_upscale] FAILED" not in output
    assert "quality dropped below the baseline" in output
    for photo in DEFAULT_PHOTOS:
        assert f"DROPPED  {photo} psnr_y: " in output
        assert f"DROPPED  {photo} ssim_y: " in output
    assert "DROPPED  mean psnr_rgb: " in output
    core_gate, model_gate = report["quality"]["baselines"]
    assert not core_gate["passed"]
    assert {d["photo"] for d in core_gate["dropped"]} == {*DEFAULT_PHOTOS, "mean"}
    assert model_gate["passed"]
    assert report["quality"]["workflow_inputs"] == {"restore": {"5": {"alpha": 5}}}

    # The HTML report shows every photo's images, crops, figures and the failed comparison.
    page = (reports / "gpu-report.html").read_text(encoding="utf-8")
    assert "<h3>restore: FAILED</h3>" in page
    for photo in photos:
        assert f'alt="{photo} restored zoomed"' in page
    assert 'alt="astronaut clean"' in page
    assert 'alt="grace_hopper_1984 clean"' not in page
    assert "<b>dropped</b>" in page
    assert "PSNR Y dB" in page
    assert "SSIM RGB" in page
