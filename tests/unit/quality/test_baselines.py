"""The quality gate's arithmetic: tolerances, verdicts, means, and what is not comparable."""

from pathlib import Path
from typing import Any

import pytest

from fixtures.quality.baselines import (
    PhotoResult,
    Tolerances,
    baseline_document,
    baseline_name,
    compare,
    read_baseline,
    write_baseline,
)

HOST = {"comfyui_version": "0.3.64", "devices": [{"name": "cuda:0 NVIDIA H100"}]}
PATH = Path("baselines/restore.json")


def result(
    photo: str, psnr: float = 25.0, ssim: float = 0.8, fingerprint: str = "f"
) -> PhotoResult:
    figures = {"psnr_y": psnr, "ssim_y": ssim, "psnr_rgb": psnr - 1, "ssim_rgb": ssim - 0.05}
    quality = {"degraded": figures, "restored": figures, "no_reference": {}}
    return PhotoResult(photo, f"{fingerprint}-{photo}", quality)


def historic(photo: str) -> PhotoResult:
    return PhotoResult(photo, f"f-{photo}", {"no_reference": {"restored": {"sharpness": 9.0}}})


def baseline(*results: PhotoResult) -> dict[str, Any]:
    return baseline_document(
        workflow="restore", upscale_model=None, results=list(results), host=HOST, settings={}
    )


def run(recorded: dict[str, Any] | None, *results: PhotoResult, **tolerances: float) -> Any:
    return compare(
        workflow="restore",
        upscale_model=None,
        path=PATH,
        baseline=recorded,
        results=list(results),
        tolerances=Tolerances(**tolerances),
        host=HOST,
    )


def test_the_same_figures_pass_with_nothing_to_report() -> None:
    recorded = baseline(result("a"), result("b"), historic("old"))

    comparison = run(recorded, result("a"), result("b"), historic("old"))

    assert comparison.passed
    assert comparison.status == "compared"
    assert {c.verdict for c in comparison.changes} == {"within"}
    assert {c.photo for c in comparison.changes} == {"a", "b", "mean"}  # historic: never gated
    assert comparison.notes == []
    assert "2 photos compared, 0 figures dropped, 0 improved" in comparison.lines()[0]


def test_a_drop_beyond_the_tolerance_fails_naming_photo_metric_and_values() -> None:
    recorded = baseline(result("a", psnr=25.0), result("b", psnr=25.0))

    comparison = run(recorded, result("a", psnr=24.6), result("b", psnr=24.0, ssim=0.78))

    assert not comparison.passed
    dropped = {(c.photo, c.metric) for c in comparison.dropped}
    # a: -0.4 dB is within 0.5; b: -1 dB and -0.02 SSIM are not; the mean falls 0.7 dB.
    assert dropped == {
        ("b", "psnr_y"),
        ("b", "psnr_rgb"),
        ("b", "ssim_y"),
        ("b", "ssim_rgb"),
        ("mean", "psnr_y"),
        ("mean", "psnr_rgb"),
        ("mean", "ssim_y"),
        ("mean", "ssim_rgb"),
    }
    text = "\n".join(comparison.lines())
    assert "DROPPED  b psnr_y: 25.00 -> 24.00 dB (-1.00, tolerance 0.5 dB)" in text
    assert "DROPPED  b ssim_y: 0.8000 -> 0.7800 (-0.0200, tolerance 0.01)" in text
    assert "DROPPED  mean psnr_y: 25.00 -> 24.30 dB (-0.70, tolerance 0.25 dB)" in text
    assert comparison.to_json()["passed"] is False


def test_small_drops_on_every_photo_fail_on_the_mean_only() -> None:
    recorded = baseline(result("a"), result("b"), result("c"))

    comparison = run(recorded, result("a", 24.6), result("b", 24.6), result("c", 24.6))

    assert {(c.photo, c.metric) for c in comparison.dropped} == {
        ("mean", "psnr_y"),
        ("mean", "psnr_rgb"),
    }


def test_a_rise_beyond_the_tolerance_is_reported_as_an_improvement() -> None:
    recorded = baseline(result("a", psnr=25.0))

    comparison = run(recorded, result("a", psnr=26.0))

    assert comparison.passed
    assert {(c.photo, c.metric) for c in comparison.improved} >= {("a", "psnr_y")}
    assert "IMPROVED a psnr_y: 25.00 -> 26.00 dB (+1.00" in "\n".join(comparison.lines())


def test_tolerances_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Tolerances.from_env({}) == Tolerances(0.5, 0.01, 0.25, 0.005)
    env = {"QUALITY_PSNR_TOLERANCE_DB": "2", "QUALITY_MEAN_SSIM_TOLERANCE": " 0.02 "}
    assert Tolerances.from_env(env) == Tolerances(psnr_db=2.0, mean_ssim=0.02)
    with pytest.raises(ValueError, match="QUALITY_SSIM_TOLERANCE='a lot': not a number"):
        Tolerances.from_env({"QUALITY_SSIM_TOLERANCE": "a lot"})
    with pytest.raises(ValueError, match="must not be negative"):
        Tolerances.from_env({"QUALITY_PSNR_TOLERANCE_DB": "-1"})

    recorded = baseline(result("a", psnr=25.0))
    assert run(recorded, result("a", psnr=24.0), psnr_db=1.5, mean_psnr_db=1.5).passed


def test_a_missing_baseline_is_reported_and_passes() -> None:
    comparison = run(None, result("a"))

    assert comparison.passed
    assert comparison.status == "missing"
    assert "is missing: nothing compared" in comparison.lines()[0]
    assert "--record-baseline" in comparison.lines()[0]


def test_photos_that_cannot_be_compared_are_noted_not_failed() -> None:
    recorded = baseline(result("a"), result("b"), result("gone"))

    comparison = run(
        recorded,
        result("a"),
        result("b", psnr=10.0, fingerprint="other size"),  # would fail if it were compared
        result("new", psnr=10.0),
    )

    assert comparison.passed
    assert {c.photo for c in comparison.changes} == {"a", "mean"}
    assert comparison.notes == [
        "b: input pixels differ from the recorded ones (photo size, seed or degradation "
        "changed): not compared; record again",
        "new: not in the baseline",
        "in the baseline but not run: gone",
    ]


def test_another_host_is_noted() -> None:
    comparison = compare(
        workflow="restore",
        upscale_model=None,
        path=PATH,
        baseline=baseline(result("a")),
        results=[result("a")],
        tolerances=Tolerances(),
        host={"comfyui_version": "0.3.70", "devices": [{"name": "cuda:0 NVIDIA L4"}]},
    )

    assert comparison.passed
    assert comparison.notes[0].startswith("recorded on another host or ComfyUI version")


def test_baseline_files_round_trip_and_refuse_other_versions(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "restore.json"
    document = baseline(result("a"), result("b", psnr=27.0))

    write_baseline(path, document)

    assert read_baseline(path) == document
    assert document["means"]["restored"]["psnr_y"] == 26.0
    assert document["host"] == HOST
    assert read_baseline(tmp_path / "absent.json") is None
    path.write_text('{"version": 99}')
    with pytest.raises(ValueError, match="baseline version 99"):
        read_baseline(path)


@pytest.mark.parametrize(
    ("workflow", "model", "name"),
    [
        ("restore", None, "restore.json"),
        (
            "restore_model_upscale",
            "tiny_compact_x2.safetensors",
            "restore_model_upscale-tiny_compact_x2.json",
        ),
        (
            "restore_model_upscale",
            "4x/Real ESRGAN.pth",
            "restore_model_upscale-4x_Real_ESRGAN.json",
        ),
    ],
)
def test_baseline_names(workflow: str, model: str | None, name: str) -> None:
    assert baseline_name(workflow, model) == name
