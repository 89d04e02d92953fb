"""What the gpu tier measured, as JSON, a self-contained HTML page and terminal tables: latency
per image, and quality per photo (`fixtures.quality`) with the comparison against the baselines."""

from __future__ import annotations

import base64
import html
import io
import json
import statistics
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image

from app.core.config import WorkflowName
from app.workflows import NodeInputs
from fixtures.quality.baselines import Comparison, Tolerances
from fixtures.quality.report import comparison_html, photo_html

THUMBNAIL_SIDE = 256


def thumbnail_data_uri(data: bytes | Image.Image, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG thumbnail of an image as a `data:` URI, so the HTML needs no other file."""
    if isinstance(data, Image.Image):
        thumb = data.convert("RGB")
        thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    else:
        with Image.open(io.BytesIO(data)) as image:
            thumb = image.convert("RGB")
            thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass(frozen=True)
class QualityOptions:
    """How this run judges quality: record or compare, where, how strictly, which variant."""

    record: bool
    baseline_dir: Path
    tolerances: Tolerances
    workflow_inputs: dict[WorkflowName, NodeInputs]


@dataclass
class RestorationRecord:
    """One degraded photo through one workflow on the host."""

    workflow: str
    upscale_model: str | None
    photo: str
    seed: int
    input_size: tuple[int, int]
    output_size: tuple[int, int]
    scale: float
    latency_s: float  # upload + validate + run + /view, as ComfyUIService.restore() spends it
    server_s: float | None  # execution_start -> execution_success in the history entry
    output_bytes: int
    mean_abs_diff: float  # vs the input resized to the output size, 0..255
    std_dev: float  # of the output pixels, 0..255
    correlation: float  # of output and resized input luminance
    prompt_id: str
    photo_metadata: dict[str, Any]  # fixtures.photos: seed, sizes, sha256, degradation
    before: str = field(repr=False)  # data URI
    after: str = field(repr=False)  # data URI
    # fixtures.quality.metrics.photo_quality(): full-reference figures only with a clean original
    quality: dict[str, Any] = field(default_factory=dict)
    input_fingerprint: str = ""  # fixtures.quality.metrics.pixel_fingerprint of the input
    clean: str | None = field(default=None, repr=False)  # data URI of the clean original
    crops: dict[str, str] = field(default_factory=dict, repr=False)  # stage -> zoomed crop URI

    @property
    def output_megapixels(self) -> float:
        return self.output_size[0] * self.output_size[1] / 1e6

    @property
    def megapixels_per_second(self) -> float:
        return self.output_megapixels / self.latency_s

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for image in ("before", "after", "clean", "crops"):
            data.pop(image)
        data["output_megapixels"] = round(self.output_megapixels, 4)
        data["megapixels_per_second"] = round(self.megapixels_per_second, 4)
        return data


@dataclass
class GpuReport:
    comfyui_url: str
    system_stats: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)
    records: list[RestorationRecord] = field(default_factory=list)
    warmups: dict[str, float] = field(default_factory=dict)  # workflow -> latency of its first run
    skipped: list[dict[str, str]] = field(default_factory=list)
    # Prompts of other clients when the run began: latencies then include waiting for them.
    queue_at_start: dict[str, int] = field(default_factory=dict)
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    # record or compare, baseline folder, tolerances, workflow input overrides
    quality_settings: dict[str, Any] = field(default_factory=dict)
    comparisons: list[Comparison] = field(default_factory=list)  # one per gated workflow

    @property
    def version(self) -> str:
        return str(self.system_stats.get("system", {}).get("comfyui_version", "unknown"))

    @property
    def devices(self) -> list[dict[str, Any]]:
        return [
            {key: device.get(key) for key in ("name", "type", "index", "vram_total")}
            for device in self.system_stats.get("devices", [])
        ]

    @property
    def device_names(self) -> str:
        return ", ".join(str(device["name"]) for device in self.devices) or "unknown"

    @property
    def host_was_busy(self) -> bool:
        return any(self.queue_at_start.values())

    def skip(self, test: str, reason: str) -> None:
        self.skipped.append({"test": test, "reason": reason})

    def summary(self) -> dict[str, dict[str, float]]:
        """Per workflow: images, median latency, median and total megapixels per second."""
        by_workflow: dict[str, list[RestorationRecord]] = {}
        for record in self.records:
            by_workflow.setdefault(record.workflow, []).append(record)
        return {
            workflow: {
                "images": len(records),
                "median_latency_s": round(statistics.median(r.latency_s for r in records), 4),
                "median_mp_per_s": round(
                    statistics.median(r.megapixels_per_second for r in records), 4
                ),
                "overall_mp_per_s": round(
                    sum(r.output_megapixels for r in records) / sum(r.latency_s for r in records),
                    4,
                ),
            }
            for workflow, records in by_workflow.items()
        }

    def to_json(self) -> dict[str, Any]:
        system = self.system_stats.get("system", {})
        return {
            "started_at": self.started_at,
            "comfyui_url": self.comfyui_url,
            "host": {
                "comfyui_version": self.version,
                "devices": self.devices,
                "pytorch_version": system.get("pytorch_version"),
                "python_version": system.get("python_version"),
                "os": system.get("os"),
            },
            "config": self.config,
            "queue_at_start": self.queue_at_start,
            "warmup_latency_s": self.warmups,
            "summary": self.summary(),
            "results": [record.to_json() for record in self.records],
            "quality": {
                **self.quality_settings,
                "means": self.quality_means(),
                "baselines": [comparison.to_json() for comparison in self.comparisons],
            },
            "skipped": self.skipped,
        }

    def workflow_records(self, workflow: str) -> list[RestorationRecord]:
        return [r for r in self.records if r.workflow == workflow]

    def comparison_of(self, workflow: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.workflow == workflow), None)

    def quality_means(self) -> dict[str, dict[str, dict[str, float]]]:
        """Per workflow, the mean of each full-reference figure over the photos with a clean
        original: degraded input, restored output and improvement."""
        by_workflow: dict[str, dict[str, dict[str, float]]] = {}
        for workflow in dict.fromkeys(r.workflow for r in self.records):
            judged = [r.quality for r in self.workflow_records(workflow) if "restored" in r.quality]
            if judged:
                by_workflow[workflow] = {
                    stage: {
                        key: round(statistics.fmean(q[stage][key] for q in judged), 4)
                        for key in judged[0][stage]
                    }
                    for stage in ("degraded", "restored", "improvement")
                }
        return by_workflow

    def quality_table(self) -> list[str]:
        """Per photo: degraded -> restored PSNR and SSIM on Y, and the no-reference noise and
        sharpness of the output; then the means."""
        header = (
            f"{'workflow':<22} {'photo':<18} {'PSNR-Y dB deg->res':>20} "
            f"{'SSIM-Y deg->res':>16} {'noise':>6} {'sharp':>8}"
        )
        lines = ["quality (full-reference vs the clean original at the output size):", header]
        lines.append("-" * len(header))
        for r in self.records:
            if not r.quality:
                continue
            described = r.quality["no_reference"]["restored"]
            tail = f"{described['noise_sigma']:>6.2f} {described['sharpness']:>8.1f}"
            if "restored" in r.quality:
                before, after = r.quality["degraded"], r.quality["restored"]
                psnr = f"{before['psnr_y']:.2f}->{after['psnr_y']:.2f}"
                ssim = f"{before['ssim_y']:.3f}->{after['ssim_y']:.3f}"
            else:
                psnr, ssim = "(no clean original)", ""
            lines.append(f"{r.workflow:<22} {r.photo:<18} {psnr:>20} {ssim:>16} {tail}")
        for workflow, figures in self.quality_means().items():
            before, after = figures["degraded"], figures["restored"]
            lines.append(
                f"{workflow} mean: PSNR-Y {before['psnr_y']:.2f} -> {after['psnr_y']:.2f} dB, "
                f"SSIM-Y {before['ssim_y']:.4f} -> {after['ssim_y']:.4f}, "
                f"PSNR-RGB {before['psnr_rgb']:.2f} -> {after['psnr_rgb']:.2f} dB, "
                f"SSIM-RGB {before['ssim_rgb']:.4f} -> {after['ssim_rgb']:.4f}"
            )
        return lines

    def quality_html(self) -> str:
        sections = []
        for workflow in dict.fromkeys(r.workflow for r in self.records):
            comparison = self.comparison_of(workflow)
            rows = "\n".join(
                photo_html(
                    photo=r.photo,
                    quality=r.quality,
                    thumbnails={
                        stage: uri
                        for stage, uri in (
                            ("clean", r.clean),
                            ("degraded", r.before),
                            ("restored", r.after),
                        )
                        if uri
                    },
                    crop_uris=r.crops,
                    comparison=comparison,
                )
                for r in self.workflow_records(workflow)
                if r.quality
            )
            gate = comparison_html(comparison) if comparison else "<p>not gated in this run</p>"
            sections.append(
                f"<h3>{html.escape(workflow)}</h3>{gate}<table class=photos>{rows}</table>"
            )
        return "\n".join(sections) or "<p>no quality figures</p>"

    def latency_table(self) -> list[str]:
        header = (
            f"{'workflow':<22} {'photo':<18} {'input':>9} {'output':>9} "
            f"{'latency s':>9} {'server s':>8} {'MP/s':>7}"
        )
        lines = [header, "-" * len(header)]
        for r in self.records:
            server = f"{r.server_s:.3f}" if r.server_s is not None else "-"
            lines.append(
                f"{r.workflow:<22} {r.photo:<18} {_size(r.input_size):>9} "
                f"{_size(r.output_size):>9} {r.latency_s:>9.3f} {server:>8} "
                f"{r.megapixels_per_second:>7.2f}"
            )
        for workflow, figures in self.summary().items():
            lines.append(
                f"{workflow}: {figures['images']} images, median {figures['median_latency_s']:.3f} s, "
                f"median {figures['median_mp_per_s']:.2f} MP/s, overall "
                f"{figures['overall_mp_per_s']:.2f} MP/s"
            )
        return lines

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        json_path = directory / "gpu-report.json"
        html_path = directory / "gpu-report.html"
        json_path.write_text(json.dumps(self.to_json(), indent=2) + "\n", encoding="utf-8")
        html_path.write_text(self.to_html(), encoding="utf-8")
        return json_path, html_path

    def to_html(self) -> str:
        esc = html.escape
        rows = "\n".join(
            f"<tr><td>{esc(r.photo)}</td><td>{esc(r.workflow)}"
            f"{'<br><small>' + esc(r.upscale_model) + '</small>' if r.upscale_model else ''}</td>"
            f"<td>{_size(r.input_size)} &rarr; {_size(r.output_size)} (&times;{r.scale:g})</td>"
            f"<td>{r.latency_s:.3f}</td><td>{'-' if r.server_s is None else f'{r.server_s:.3f}'}</td>"
            f"<td>{r.megapixels_per_second:.2f}</td>"
            f"<td>{r.mean_abs_diff:.2f} / {r.std_dev:.1f} / {r.correlation:.3f}</td>"
            f'<td><img src="{r.before}" alt="{esc(r.photo)} before"></td>'
            f'<td><img src="{r.after}" alt="{esc(r.photo)} after"></td></tr>'
            for r in self.records
        )
        summary = "".join(
            f"<li><b>{esc(workflow)}</b>: {figures['images']} images, median latency "
            f"{figures['median_latency_s']:.3f} s, median {figures['median_mp_per_s']:.2f} MP/s, "
            f"overall {figures['overall_mp_per_s']:.2f} MP/s</li>"
            for workflow, figures in self.summary().items()
        )
        skipped = "".join(
            f"<li><code>{esc(item['test'])}</code>: {esc(item['reason'])}</li>"
            for item in self.skipped
        )
        config = "".join(
            f"<li>{esc(str(key))}: <code>{esc(str(value))}</code></li>"
            for key, value in self.config.items()
        )
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gpu tier: ComfyUI {esc(self.version)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: middle; text-align: left; }}
img {{ max-width: {THUMBNAIL_SIDE}px; max-height: {THUMBNAIL_SIDE}px; display: block; }}
img.crop {{ image-rendering: pixelated; margin-top: 4px; }}
table.fig td, table.fig th {{ border: none; padding: 1px 6px; font-size: 90%; }}
table.photos > tbody > tr > td {{ vertical-align: top; }}
</style></head><body>
<h1>Restoration on ComfyUI {esc(self.version)}</h1>
<p>Host <code>{esc(self.comfyui_url)}</code>, devices: {esc(self.device_names)};
started {esc(self.started_at)}.</p>
<ul>{config}</ul>
{"<p><b>The host was busy when the run began</b> (" + esc(str(self.queue_at_start)) + "): latencies include waiting for other prompts.</p>" if self.host_was_busy else ""}
<h2>Summary</h2><ul>{summary or "<li>no results</li>"}</ul>
<p>Latency covers upload, validation, execution and download, as the worker spends it; a
warm-up run of each workflow precedes its timed runs. MP/s = output megapixels / latency.</p>
<h2>Results</h2>
<table><tr><th>photo</th><th>workflow</th><th>size</th><th>latency s</th><th>server s</th>
<th>MP/s</th><th>diff / std / corr</th><th>before (degraded)</th><th>after (restored)</th></tr>
{rows}
</table>
<h2>Quality</h2>
<p>Full-reference figures compare with the clean original resized (Lanczos) to the output size;
the degraded input is resized the same way. <b>Y</b> = BT.601 luminance, <b>RGB</b> = all three
channels; &Delta; = restored minus degraded. No-reference figures (sharpness, noise, contrast,
colour cast) describe an image and never gate. Zoomed crops: the same most detailed square of
each image at the output size, &times;3 nearest neighbour. Gate settings:
<code>{esc(json.dumps(self.quality_settings))}</code></p>
{self.quality_html()}
<h2>Skipped</h2><ul>{skipped or "<li>nothing</li>"}</ul>
</body></html>
"""


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"
