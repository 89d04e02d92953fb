"""Fuzz tier (`nox -s fuzz`): the app under uvicorn in this process, on real HTTP, with the
integration tier's real Postgres, Redis, S3 and ComfyUI stand-in. No worker runs: accepted jobs
stay queued, so every request's cost is the API's own.

Budget: FUZZ_EXAMPLES examples per test (tests/fuzz/tally.py). In CI (CI set) Hypothesis is
derandomized, so a run is the same run every time; locally each run explores anew. The count of
requests, their statuses and any 5xx are printed at the end and written to
reports/fuzz/summary.json.
"""

import asyncio
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from app.cli import create_token
from app.core.config import Settings
from app.main import create_app
from fixtures.net import free_port

# The integration tier's services, stand-in and settings (its `settings` fixture), not copied.
from tests.integration.conftest import anyio_backend, app_env, settings, standin_url

__all__ = ["anyio_backend", "app_env", "settings", "standin_url"]

from tests.fuzz.tally import EXAMPLES, TALLY, UPLOAD_EXAMPLES

REPORT = Path(__file__).resolve().parents[2] / "reports" / "fuzz" / "summary.json"


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    """The app under uvicorn in a thread: real HTTP, real services, lifespan and all."""
    port = free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fuzz-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="session")
def token(settings: Settings) -> str:
    return asyncio.run(create_token(settings, "fuzz@example.com", "fuzz", True))


@pytest.fixture(scope="session")
def http(api_url: str, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as client:
        yield client


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLY.requests:
        return
    elapsed = time.monotonic() - TALLY.started
    statuses = ", ".join(f"{code}: {n}" for code, n in sorted(TALLY.by_status.items()))
    terminalreporter.write_line(
        f"fuzz: {TALLY.requests} requests in {elapsed:.0f} s, "
        f"{len(TALLY.server_errors)} 5xx ({statuses})"
    )
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(
        json.dumps(
            {
                "requests": TALLY.requests,
                "seconds": round(elapsed, 1),
                "server_errors": TALLY.server_errors,
                "by_status": TALLY.by_status,
                "examples_per_test": EXAMPLES,
                "examples_per_upload_test": UPLOAD_EXAMPLES,
                "derandomized": bool(os.environ.get("CI")),
            },
            indent=2,
        )
    )
