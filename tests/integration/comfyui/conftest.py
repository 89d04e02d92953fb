"""The ComfyUI stand-in (`fixtures/comfyui`) as a real process, for the contract suite.

One stand-in per test session (per xdist worker), with its own input/output folders, started the
way the e2e tier and `nox -s serve` start it: `python -m fixtures.comfyui` on a free port.
"""

from collections.abc import Iterator

import pytest

from fixtures.comfyui.process import run_standin


@pytest.fixture(scope="session")
def comfyui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("comfyui-standin")
    with run_standin(
        input_dir=root / "input", output_dir=root / "output", temp_dir=root / "temp"
    ) as url:
        yield url


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
