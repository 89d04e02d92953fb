"""The fuzz tier's budget and its count of requests, shared by its tests and its conftest."""

import json
import os
import time
from dataclasses import dataclass, field

import httpx
from hypothesis import HealthCheck, settings

from fixtures.leaks import leaks

# Examples per Schemathesis test (12 of them); the upload tests (5) are cheaper per request and get
# four times as many. The default budget is about 7,000 requests.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
UPLOAD_EXAMPLES = 4 * EXAMPLES


def budget(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        # CI replays the same examples every run; locally each run explores anew.
        derandomize=bool(os.environ.get("CI")),
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


FUZZ = budget(EXAMPLES)
FUZZ_UPLOADS = budget(UPLOAD_EXAMPLES)


@dataclass
class Tally:
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    by_status: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)


TALLY = Tally()


def record(response: httpx.Response | object, label: str) -> None:
    """Count a response; 5xx and leaking messages fail the calling test."""
    status = int(getattr(response, "status_code", 0))
    TALLY.requests += 1
    TALLY.by_status[status] = TALLY.by_status.get(status, 0) + 1
    text = str(getattr(response, "text", ""))
    if status >= 500:
        TALLY.server_errors.append(f"{label}: {status} {text[:200]}")
    assert status < 500, f"{label}: {status} {text}"
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = text
    found = leaks(body) + leaks(dict(getattr(response, "headers", {})))
    assert found == [], f"{label}: the answer leaks {found}: {text}"
