"""Chaos tier: the stack as processes (API, a real Celery worker, the ComfyUI stand-in) on the
services of the providers, broken for real while it works through batches of jobs.

One stack for the session, one process (no xdist: the tests stop shared services). Every test
leaves the stack whole for the next: worker and stand-in running, no fault set, services thawed
and started. Each test hands its `Row` to `chaos_row`; the session prints them as a table and
writes them to reports/chaos/chaos-<provider>.json. Logs of the stack: reports/chaos/<provider>/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from fixtures import chaos
from fixtures.netproxy import TcpProxy
from fixtures.services import WorkerServices
from fixtures.services.plugin import SHARED
from fixtures.services.providers.base import ServiceControl
from fixtures.stack import Stack, StackOptions

REPORTS = Path(__file__).resolve().parents[2] / "reports" / "chaos"
ROWS = pytest.StashKey[list[chaos.Row]]()

# Short leases, a quick reaper and quick retries, so that a crash is repaired in seconds; the
# broker's visibility timeout stays at its default, so no recovery here leans on it.
LEASE_S = 8.0
SETTINGS = {
    "COMFYUI_SCALE": "2",
    "COMFYUI_JOB_TIMEOUT_SECONDS": "60",
    "COMFYUI_POLL_INTERVAL_SECONDS": "0.2",
    "COMFYUI_WS_SILENCE_SECONDS": "2",
    "TASK_RETRY_BACKOFF_SECONDS": "0.5",
    "TASK_RETRY_BACKOFF_MAX_SECONDS": "2",
    "TASK_RETRY_BUDGET_SECONDS": "120",
    "TASK_HEARTBEAT_SECONDS": "1",
    "TASK_LEASE_SECONDS": f"{LEASE_S:g}",
    "TASK_MISSING_JOB_GRACE_SECONDS": "30",
    "REAPER_INTERVAL_SECONDS": "1",
    "REAPER_PENDING_AFTER_SECONDS": "8",
}
WORKER_CONCURRENCY = 3


def pytest_configure(config: pytest.Config) -> None:
    config.stash[ROWS] = []


def provider_name(config: pytest.Config) -> str:
    return config.stash[SHARED].get_choice().provider


# --- the stack, with proxies in front of services whose restart would lose their data


def _through(url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"{proxy.host}:{proxy.port}"
    netloc[-1] = host
    return urlunsplit(parts._replace(netloc="@".join(netloc)))


@pytest.fixture(scope="session")
def controls(request: pytest.FixtureRequest, services: WorkerServices) -> dict[str, ServiceControl]:
    shared = request.config.stash[SHARED]
    return {
        service: shared.provider.control(shared.run, shared.endpoints(), service)
        for service in ("postgres", "redis", "s3")
    }


@pytest.fixture(scope="session")
def proxies(
    controls: dict[str, ServiceControl], services: WorkerServices
) -> Iterator[dict[str, chaos.Proxied]]:
    made: dict[str, chaos.Proxied] = {}
    targets = {
        "postgres": (services.endpoints.postgres.host, services.endpoints.postgres.port),
        "s3": tuple(urlsplit(services.s3.endpoint_url).netloc.rsplit(":", 1)),
    }
    for service, (host, port) in targets.items():
        if not controls[service].keeps_data:
            made[service] = chaos.Proxied(service, TcpProxy(str(host), int(port)).start())
    yield made
    for proxied in made.values():
        proxied.proxy.stop()


@pytest.fixture(scope="session")
def stack(
    request: pytest.FixtureRequest, services: WorkerServices, proxies: dict[str, chaos.Proxied]
) -> Iterator[Stack]:
    env = services.env()
    if "postgres" in proxies:
        env["DATABASE_URL"] = _through(env["DATABASE_URL"], proxies["postgres"].proxy)
    if "s3" in proxies:
        env["S3_ENDPOINT_URL"] = _through(env["S3_ENDPOINT_URL"], proxies["s3"].proxy)
    options = StackOptions(
        services_env=env,
        log_dir=REPORTS / provider_name(request.config),
        settings_env=SETTINGS,
        worker_concurrency=WORKER_CONCURRENCY,
    )
    with Stack(options) as stack:
        yield stack


@pytest.fixture
def whole(
    stack: Stack, controls: dict[str, ServiceControl], proxies: dict[str, chaos.Proxied]
) -> Iterator[Stack]:
    """The stack, made whole again after the test whatever it broke."""
    yield stack
    for control in controls.values():
        control.heal()
    for proxied in proxies.values():
        proxied.restart()
    assert stack.standin is not None
    if not stack.standin.running:
        stack.start_standin()
    chaos.clear_faults(stack, timeout=60)  # it may still be refusing connections
    if not stack.worker.running:
        stack.start_worker()


@pytest.fixture(scope="session")
def email() -> str:
    """The tier's one user (a batch follows its own job ids among the user's jobs)."""
    return f"chaos-{time.monotonic_ns()}@example.com"


@pytest.fixture(scope="session")
def token(stack: Stack, email: str) -> str:
    return stack.create_token(email)


@pytest.fixture
def batch(whole: Stack, token: str) -> Iterator[chaos.Batch]:
    with chaos.following(whole, token) as batch:
        yield batch


@pytest.fixture
def chaos_row(request: pytest.FixtureRequest) -> Callable[[chaos.Row], chaos.Row]:
    """Record a row for the table (also when its checks then fail)."""

    def record(row: chaos.Row) -> chaos.Row:
        row.provider = provider_name(request.config)
        request.config.stash[ROWS].append(row)
        return row

    return record


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    provider = rows[0].provider
    terminalreporter.write_sep("-", f"chaos table ({provider} services)")
    header = (
        "scenario",
        "jobs",
        "completed",
        "failed",
        "stuck",
        "lost",
        "duplicated",
        "recovery s",
        "bound s",
    )
    lines = [header] + [
        (
            row.scenario,
            str(row.jobs),
            str(row.completed),
            str(row.failed),
            str(len(row.stuck)),
            str(len(row.lost)),
            str(row.duplicated),
            "-" if row.recovery_s is None else f"{row.recovery_s:.1f}",
            f"{row.bound_s:.1f}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        terminalreporter.write_line(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            )
        )
    REPORTS.mkdir(parents=True, exist_ok=True)
    path = REPORTS / f"chaos-{provider}.json"
    path.write_text(json.dumps([row.__dict__ for row in rows], indent=2))
    terminalreporter.write_line(f"written to {path.relative_to(REPORTS.parents[1])}")
