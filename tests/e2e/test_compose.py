"""compose.yaml for real: the images (Dockerfile), the one-shot init, the API, the worker and the
stand-in, driven over HTTP from this machine like the README's curl lines.

Needs a Docker daemon and Compose (`docker compose` or `docker-compose`); without them the module
is skipped and says why. The images come from the environment as compose.yaml reads it
(TEST_*_IMAGE, RESTORATION_*IMAGE: `nox -s images` prints them where no registry is reachable).
The project's images must match the checkout (`fixtures.project_images`); where no variable names
one, compose builds it from the Dockerfile as it is now.
"""

import io
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from PIL import Image

from fixtures import REPO_ROOT, project_images
from fixtures.net import free_port
from fixtures.photos import DegradedPhoto, degraded_photo

REPORTS = REPO_ROOT / "reports" / "e2e"
START_TIMEOUT_S = 300  # includes building the project's images when they are missing
# The compose service that builds each project image, by the variable that can name it instead.
IMAGE_SERVICES = {"RESTORATION_IMAGE": "api", "RESTORATION_STANDIN_IMAGE": "comfyui"}


def compose_command() -> list[str] | None:
    """`docker compose` (v2) or `docker-compose` (v1), whichever answers; None for neither."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) is None:
            continue
        probe = subprocess.run([*command, "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return command
    return None


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


@dataclass
class ComposeStack:
    command: list[str]
    env: dict[str, str]
    api_url: str

    def run(self, *args: str, timeout: float = START_TIMEOUT_S) -> str:
        result = subprocess.run(
            [*self.command, *args],
            cwd=REPO_ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def logs(self) -> str:
        return self.run("logs", "--no-color", "--tail", "50", timeout=60)


@pytest.fixture(scope="module")
def compose() -> Iterator[ComposeStack]:
    if not docker_answers():
        pytest.skip("no Docker daemon answers")
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    # An image left from an earlier build would be used as it is: build those no variable names.
    named = project_images.fresh_images(*IMAGE_SERVICES)
    to_build = [service for env_var, service in IMAGE_SERVICES.items() if env_var not in named]
    api_port, s3_port = free_port(), free_port()
    project = f"restoration-e2e-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "COMPOSE_PROJECT_NAME": project,
        "API_PORT": str(api_port),
        "S3_PORT": str(s3_port),
        "COMFYUI_URL": "",  # the stand-in, whatever this machine's environment says
    }
    stack = ComposeStack(command, env, f"http://127.0.0.1:{api_port}")
    try:
        try:
            if to_build:
                stack.run("build", *to_build)
            stack.run("up", "--detach")
        except AssertionError as error:
            raise AssertionError(
                f"{error}\nWhere no registry is reachable: `nox -s images`, then export the "
                "variables it prints (TEST_*_IMAGE, RESTORATION_*IMAGE)."
            ) from None
        wait_ready(stack)
        yield stack
    finally:
        REPORTS.mkdir(parents=True, exist_ok=True)
        try:
            (REPORTS / "compose.log").write_text(stack.logs())
        finally:
            stack.run("down", "--volumes", "--remove-orphans", timeout=120)


def wait_ready(stack: ComposeStack) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{stack.api_url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as error:
            last = repr(error)
        time.sleep(1)
    raise AssertionError(f"the compose stack was not ready: {last}\n{stack.logs()}")


@pytest.fixture(scope="module")
def photo() -> DegradedPhoto:
    return degraded_photo("astronaut", seed=3, max_side=192)


def test_compose_restores_a_photo_end_to_end(compose: ComposeStack, photo: DegradedPhoto) -> None:
    # As the README says: a token from the CLI inside the API's container.
    token = (
        compose.run(
            "run",
            "--rm",
            "-T",
            "api",
            "python",
            "-m",
            "app",
            "create-token",
            "carol@example.com",
            "--create-user",
        )
        .strip()
        .splitlines()[-1]
    )
    headers = {"Authorization": f"Bearer {token}"}
    ready = httpx.get(f"{compose.api_url}/readyz", timeout=10).json()
    assert ready["comfyui"]["ok"] is True, ready

    created = httpx.post(
        f"{compose.api_url}/api/v1/restorations",
        files={"file": ("photo.png", photo.png, "image/png")},
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 202, created.text
    job_url = f"{compose.api_url}/api/v1/restorations/{created.json()['id']}"
    deadline = time.monotonic() + 120
    while (job := httpx.get(job_url, headers=headers, timeout=10).json())["status"] not in (
        "COMPLETED",
        "FAILED",
    ):
        assert time.monotonic() < deadline, f"{job}\n{compose.logs()}"
        time.sleep(0.5)
    assert job["status"] == "COMPLETED", f"{job['error_message']}\n{compose.logs()}"

    # The presigned URL names the host's port for S3, not the compose network's name.
    assert job["result_url"].startswith(f"http://localhost:{compose.env['S3_PORT']}/")
    result = httpx.get(job["result_url"], timeout=30)
    assert result.status_code == 200, result.text
    image = Image.open(io.BytesIO(result.content))
    assert image.format == "PNG"
    assert image.size == (photo.width * 2, photo.height * 2)
