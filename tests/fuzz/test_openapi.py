"""Schemathesis over every operation of the app's own OpenAPI schema: positive cases (valid by the
schema) and negative ones (invalid by it). Each answer must be below 500, documented for its
operation, match its response schema and content type, and leak nothing."""

from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as schemathesis_checks

from app.core.config import Settings
from app.main import create_app
from tests.fuzz.tally import FUZZ, record

SPEC: dict[str, Any] = create_app(Settings(_env_file=None)).openapi()  # type: ignore[call-arg]
SCHEMA = schemathesis.openapi.from_dict(SPEC)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [
    schemathesis_checks.not_a_server_error,
    schemathesis_checks.status_code_conformance,
    schemathesis_checks.content_type_conformance,
    schemathesis_checks.response_headers_conformance,
    schemathesis_checks.response_schema_conformance,
]


def cases() -> list[Any]:
    params = []
    for operation in OPERATIONS:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Operations without parameters, body or auth have no invalid form.
            if mode is GenerationMode.NEGATIVE and not operation.path.startswith("/api/"):
                continue
            params.append(pytest.param(operation, mode, id=f"{operation.label}-{mode.value}"))
    return params


def test_the_served_schema_is_the_one_fuzzed(http: httpx.Client) -> None:
    response = http.get("/openapi.json")
    record(response, "GET /openapi.json")

    assert response.json() == SPEC


@pytest.mark.parametrize(("operation", "mode"), cases())
def test_operation(api_url: str, token: str, operation: Any, mode: GenerationMode) -> None:
    bearer = {"Authorization": f"Bearer {token}"}
    session = requests.Session()  # one connection for the whole test, not one per case

    # Positive cases mostly carry the real token, so they get past auth to the endpoint; negative
    # ones always do, so the invalid part is what the API answers.
    @given(case=operation.as_strategy(generation_mode=mode), use_token=st.integers(0, 9))
    @FUZZ
    def run(case: Any, use_token: int) -> None:
        headers = bearer if mode is GenerationMode.NEGATIVE or use_token else None
        response = case.call(base_url=api_url, session=session, headers=headers, timeout=60)
        record(response, f"{case.method} {case.formatted_path}")
        case.validate_response(response, checks=CHECKS, headers=headers)

    with session:
        run()
