"""The tier never tests a stale image (`fixtures.project_images`), shown on a copy of this tree.

The copy runs the tier with the images that the variables name here (`nox -s images` builds them
from this checkout). Unchanged, its header shows each image's id and recipe as fresh; after one
source file changes, the tests that would use the images fail before anything starts, naming each
variable and the command that rebuilds it. Nothing is built: the refusal reads only the labels.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ci.images import build
from fixtures import REPO_ROOT

ENV_VARS = tuple(image.env_var for image in build.PROJECT_IMAGES)
# Neither copied nor hashed: history, environments, outputs, caches and downloaded wheels.
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".nox", ".venv", "reports", "wheelhouse", ".cache", "__pycache__", "*.egg-info"
)
# One test per image variable: the compose stack (API and stand-in) and a worker container.
TESTS_USING_IMAGES = (
    "tests/e2e/test_compose.py",
    "tests/e2e/test_restoration_journeys.py::test_another_users_job_is_invisible",
)


@pytest.fixture(scope="module")
def images() -> dict[str, build.BuiltImage]:
    """The images the variables name, by variable; each must match this checkout."""
    names = {env_var: os.environ.get(env_var, "") for env_var in ENV_VARS}
    if not all(names.values()):
        pytest.skip(f"needs {', '.join(ENV_VARS)}: `nox -s images` prints them")
    recipes = build.project_recipes()
    found = {}
    for image in build.PROJECT_IMAGES:
        built = build.inspect_image(names[image.env_var])
        assert built is not None, f"{image.env_var}={names[image.env_var]} does not exist"
        assert built.recipe == recipes[image.key], f"{image.env_var} is stale: `nox -s images`"
        found[image.env_var] = built
    return found


def tree_copy(destination: Path) -> Path:
    shutil.copytree(REPO_ROOT, destination, ignore=NOT_COPIED)
    return destination


def run_tier(root: Path, *args: str) -> str:
    """pytest on the tier in `root`, with the worker as a container and native services; its
    output, with the exit code on the first line."""
    env = {**os.environ, "TEST_SERVICES": "native", "E2E_WORKER": "container"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-o", "addopts=", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return f"exit code {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_the_header_shows_each_image_fresh_in_an_unchanged_copy(
    images: dict[str, build.BuiltImage], tmp_path: Path
) -> None:
    output = run_tier(tree_copy(tmp_path / "tree"), "--collect-only", "tests/e2e")
    assert output.startswith("exit code 0\n"), output
    for env_var, built in images.items():
        line = f"image {env_var}={os.environ[env_var]}: {built.id[:19]} recipe {built.recipe} "
        assert f"{line}(fresh)" in output, output


def test_after_a_source_change_the_tier_refuses_every_image(
    images: dict[str, build.BuiltImage], tmp_path: Path
) -> None:
    root = tree_copy(tmp_path / "tree")
    changed = root / "backend" / "app" / "main.py"
    changed.write_text(changed.read_text() + "\n# a change the images do not have\n")
    checkout = build.project_recipes(root)

    output = run_tier(root, *TESTS_USING_IMAGES)

    assert output.startswith("exit code 1\n"), output
    assert " passed" not in output, output
    for image in build.PROJECT_IMAGES:
        name, built = os.environ[image.env_var], images[image.env_var]
        assert f"recipe {built.recipe} (STALE, checkout {checkout[image.key]})" in output, output
        assert (
            f"{image.env_var}={name} is stale: built from recipe {built.recipe}, "
            f"this checkout's is {checkout[image.key]}"
        ) in output, output
    assert "Build it from this checkout: `nox -s images`" in output, output
