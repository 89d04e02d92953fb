"""GPU tier: against the real ComfyUI host named by `COMFYUI_URL`; never a stand-in, never skipped.

When gpu tests are selected and `COMFYUI_URL` is unset or its `/system_stats` does not answer,
the run stops before the first test with a message saying so (exit code 4): this tier never passes
by skipping everything, and it never starts a ComfyUI of its own.

Environment:
- `COMFYUI_URL` (required): the host, e.g. `http://gpu-runner:8188`.
- `COMFYUI_SCALE`, `COMFYUI_UPSCALE_MODEL`: as for the app (`app.core.config.Settings`).
- `COMFYUI_UPSCALE_MODEL_SCALE` (default 2): the factor of that model, the expected scale of
  the model workflow.
- `PHOTOS_MAX_SIDE` (default 512): the longest side of the degraded photos (`fixtures.photos`).

- `QUALITY_PSNR_TOLERANCE_DB` (0.5), `QUALITY_SSIM_TOLERANCE` (0.01): the largest drop of a
  photo's PSNR / SSIM (Y or RGB) below its baseline that the quality gate lets pass;
  `QUALITY_MEAN_PSNR_TOLERANCE_DB` (0.25), `QUALITY_MEAN_SSIM_TOLERANCE` (0.005): the same for
  the mean over the photos (`fixtures.quality.baselines.Tolerances`).

Options (after `nox -s gpu --`):
- `--record-baseline`: write this host's figures as the baselines instead of comparing with them.
- `--baseline-dir DIR` (default `tests/gpu/baselines`): where baselines are read and written.
- `--gpu-report-dir DIR` (default `reports/gpu`): where the JSON and HTML reports go.
- `--workflow-input WORKFLOW:NODE.INPUT=VALUE` (repeatable): run a variant of a shipped
  workflow, e.g. `restore:5.alpha=5` (VALUE is JSON, else a string). The gate then says whether
  the variant is better or worse than the baseline.

Run it without xdist: one host runs one prompt at a time, and the latency figures are per image.
The terminal summary prints the latency and quality tables and the baseline comparison.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from fixtures import REPO_ROOT
from fixtures.quality.baselines import Tolerances
from fixtures.quality.variants import parse_workflow_inputs
from tests.gpu.gpu_reporting import GpuReport, QualityOptions

URL_ENV = "COMFYUI_URL"
MODEL_SCALE_ENV = "COMFYUI_UPSCALE_MODEL_SCALE"
HERE = Path(__file__).resolve().parent
REPORT_DIR = REPO_ROOT / "reports" / "gpu"
BASELINE_DIR = HERE / "baselines"
_REPORT = pytest.StashKey[GpuReport]()
_WRITTEN = pytest.StashKey[tuple[Path, Path]]()


_QUALITY = pytest.StashKey[QualityOptions]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpu", "gpu tier (tests/gpu/conftest.py)")
    group.addoption(
        "--record-baseline",
        action="store_true",
        help="write this host's quality figures as the baselines instead of comparing",
    )
    group.addoption(
        "--baseline-dir", type=Path, default=BASELINE_DIR, help="default: tests/gpu/baselines"
    )
    group.addoption("--gpu-report-dir", type=Path, default=REPORT_DIR, help="default: reports/gpu")
    group.addoption(
        "--workflow-input",
        action="append",
        default=[],
        metavar="WORKFLOW:NODE.INPUT=VALUE",
        help="set a node input of a shipped workflow, e.g. restore:5.alpha=5 (repeatable)",
    )


def pytest_configure(config: pytest.Config) -> None:
    try:
        tolerances = Tolerances.from_env()
        workflow_inputs = parse_workflow_inputs(config.getoption("workflow_input"))
    except ValueError as exc:
        raise pytest.UsageError(f"gpu tier: {exc}") from None
    config.stash[_QUALITY] = QualityOptions(
        record=config.getoption("record_baseline"),
        baseline_dir=config.getoption("baseline_dir"),
        tolerances=tolerances,
        workflow_inputs=workflow_inputs,
    )


def probe(url: str) -> tuple[dict[str, Any] | None, str | None]:
    """`(system_stats, None)` when the host answers like ComfyUI, else `(None, why not)`."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/system_stats", timeout=10.0)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return None, f"GET /system_stats answered {response.status_code}"
    try:
        stats = response.json()
    except ValueError:
        return None, "GET /system_stats did not answer JSON"
    if not isinstance(stats, dict) or "comfyui_version" not in stats.get("system", {}):
        return None, "GET /system_stats has no system.comfyui_version: not a ComfyUI host"
    return stats, None


def queue_lengths(url: str) -> dict[str, int]:
    """How many prompts run and wait on the host now (empty when /queue does not answer)."""
    try:
        queue = httpx.get(f"{url.rstrip('/')}/queue", timeout=10.0).json()
        return {key: len(queue[key]) for key in ("queue_running", "queue_pending")}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}


def _selects_gpu_tests(session: pytest.Session) -> bool:
    return any(Path(item.path).is_relative_to(HERE) for item in session.items)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail the whole run, before any test, when the host is missing."""
    if session.config.option.collectonly or not _selects_gpu_tests(session):
        return
    url = os.environ.get(URL_ENV, "").strip()
    if not url:
        pytest.exit(
            f"gpu tier: {URL_ENV} is not set. These tests run against a real ComfyUI host, "
            f"e.g. {URL_ENV}=http://gpu-runner:8188 nox -s gpu",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    stats, problem = probe(url)
    if stats is None:
        pytest.exit(
            f"gpu tier: the ComfyUI host {URL_ENV}={url} is unreachable ({problem}). "
            "Start it or point COMFYUI_URL at a running one; this tier never starts one itself.",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
    quality = session.config.stash[_QUALITY]
    session.config.stash[_REPORT] = GpuReport(
        comfyui_url=url.rstrip("/"),
        quality_settings={
            "mode": "record" if quality.record else "compare",
            "baseline_dir": str(quality.baseline_dir),
            "tolerances": asdict(quality.tolerances),
            "workflow_inputs": {w.value: v for w, v in quality.workflow_inputs.items()},
        },
        system_stats=stats,
        queue_at_start=queue_lengths(url),
        config={
            "COMFYUI_SCALE (core workflow)": os.environ.get("COMFYUI_SCALE", "2.0 (default)"),
            "COMFYUI_UPSCALE_MODEL": os.environ.get(
                "COMFYUI_UPSCALE_MODEL", "tiny_compact_x2.safetensors (default)"
            ),
            f"{MODEL_SCALE_ENV} (model workflow)": os.environ.get(MODEL_SCALE_ENV, "2 (default)"),
            "PHOTOS_MAX_SIDE": os.environ.get("PHOTOS_MAX_SIDE", "512 (default)"),
        },
    )


@pytest.fixture(scope="session")
def quality_options(pytestconfig: pytest.Config) -> QualityOptions:
    return pytestconfig.stash[_QUALITY]


@pytest.fixture(scope="session")
def gpu_report(pytestconfig: pytest.Config) -> GpuReport:
    return pytestconfig.stash[_REPORT]


@pytest.fixture(scope="session")
def comfyui_url(gpu_report: GpuReport) -> str:
    return gpu_report.comfyui_url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_sessionfinish(session: pytest.Session) -> None:
    report = session.config.stash.get(_REPORT, None)
    if report is not None and (report.records or report.skipped):
        directory = session.config.getoption("gpu_report_dir")
        session.config.stash[_WRITTEN] = report.write(directory)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    report = config.stash.get(_REPORT, None)
    if report is None:
        return
    write = terminalreporter.write_line
    terminalreporter.write_sep(
        "=", f"gpu tier: ComfyUI {report.version} at {report.comfyui_url} on {report.device_names}"
    )
    if report.host_was_busy:
        write(
            f"WARNING: other prompts were queued on the host when the run began "
            f"({report.queue_at_start}): the latencies include waiting for them"
        )
    for workflow, seconds in report.warmups.items():
        write(f"warm-up {workflow}: {seconds:.3f} s (not in the table)")
    if report.records:
        for line in report.latency_table():
            write(line)
        for line in report.quality_table():
            write(line)
    for comparison in report.comparisons:
        for line in comparison.lines():
            write(line)
    for item in report.skipped:
        write(f"SKIPPED {item['test']}: {item['reason']}")
    written = config.stash.get(_WRITTEN, None)
    if written is not None:
        write(f"reports: {written[0]}  {written[1]}")
