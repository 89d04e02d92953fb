"""ci/images/build.py's recipe of the project images: what a change to the checkout rebuilds.

The e2e tier compares these recipes with the images' labels (fixtures/project_images.py), so
each must change with anything the Dockerfile copies or installs, and only with that.
"""

import shutil
import tomllib
from pathlib import Path

import pytest

from ci.images import build
from fixtures import REPO_ROOT


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of what the project images are built from, plus a file they do not copy."""
    for source in build.PROJECT_SOURCES:
        path = REPO_ROOT / source
        if path.is_dir():
            shutil.copytree(path, tmp_path / source, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.is_file():
            (tmp_path / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, tmp_path / source)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_something.py").write_text("def test_it() -> None: ...\n")
    return tmp_path


def test_a_copy_has_the_checkouts_recipes(checkout: Path) -> None:
    assert build.project_recipes(checkout) == build.project_recipes(REPO_ROOT)


def test_each_target_has_its_own_recipe(checkout: Path) -> None:
    recipes = build.project_recipes(checkout)
    assert sorted(recipes) == sorted(image.key for image in build.PROJECT_IMAGES)
    assert len(set(recipes.values())) == len(recipes)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("backend/app/main.py", "# an edit\n"),
        ("backend/app/new_module.py", "VALUE = 1\n"),
        ("fixtures/comfyui/executor.py", "# an edit\n"),
        ("fixtures/__init__.py", "# an edit\n"),
        ("Dockerfile", "# an edit\n"),
        ("pyproject.toml", "# an edit\n"),
        ("uv.lock", "version = 1\n"),
    ],
)
def test_a_change_to_what_the_images_copy_or_install_changes_every_recipe(
    checkout: Path, path: str, text: str
) -> None:
    before = build.project_recipes(checkout)
    target = checkout / path
    target.write_text((target.read_text() if target.exists() else "") + text)
    after = build.project_recipes(checkout)
    assert all(after[key] != before[key] for key in before), (before, after)


def test_a_new_dependency_changes_every_recipe(checkout: Path) -> None:
    before = build.project_recipes(checkout)
    pyproject = checkout / "pyproject.toml"
    text = pyproject.read_text()
    dependencies = "dependencies = [\n"
    assert dependencies in text
    pyproject.write_text(text.replace(dependencies, f'{dependencies}    "six>=1.16",\n', 1))
    after = build.project_recipes(checkout)
    assert all(after[key] != before[key] for key in before)


@pytest.mark.parametrize(
    "path",
    [
        "tests/test_something.py",
        "backend/app/__pycache__/main.cpython-311.pyc",
        "backend/restoration.egg-info/PKG-INFO",
        "README.txt",
    ],
)
def test_what_the_images_do_not_take_leaves_the_recipes_alone(checkout: Path, path: str) -> None:
    before = build.project_recipes(checkout)
    target = checkout / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("something else\n")
    assert build.project_recipes(checkout) == before


def test_the_images_take_the_versions_uv_lock_pins_for_their_python() -> None:
    """Runtime dependencies and the stand-in and coverage groups, at the locked versions, with
    markers settled for the images' Python 3.11.2 rather than the host's."""
    locked: dict[str, set[str]] = {}
    for package in tomllib.loads((REPO_ROOT / "uv.lock").read_text())["package"]:
        locked.setdefault(package["name"], set()).add(package["version"])
    wanted = build.project_requirements().splitlines()
    pins = dict(line.split("==") for line in wanted if "==" in line)

    for name in ("fastapi", "celery", "aiohttp", "numpy", "coverage"):
        assert pins[name] in locked[name], name
    assert "async-timeout" in pins  # redis needs it before Python 3.11.3
    assert len([line for line in wanted if line.startswith("numpy==")]) == 1
    assert not any(";" in line for line in wanted)
    assert "pytest" not in pins  # the test tiers' groups stay out of the images
