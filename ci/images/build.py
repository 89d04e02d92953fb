#!/usr/bin/env python3
"""Builds the offline stand-in images for Postgres, Redis and S3, and the project's own images.

No registry is reachable in CI here, so the base comes from Debian's mirror (mmdebstrap, then
`docker import`), the services from Debian's packages, and Python wheels from the host's pip.
Every image carries a label with a hash of its recipe; an image already built from the same
recipe is skipped, so running this again is cheap. The e2e tier compares the project images'
labels with `project_recipes()` of its checkout, and refuses stale ones. The project's images (targets of the root
Dockerfile) build on a Debian stand-in for the official Python image, with wheels from
ci/wheelhouse/ at the versions uv.lock pins. Needs only the standard library, the docker CLI,
mmdebstrap, pip and uv (run ci/docker.sh first on a bare machine).
"""

# A build script: it runs fixed tools (docker, mmdebstrap, pip, uv) found on PATH, never user input.
# ruff: noqa: S603, S607

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
WHEELHOUSE = REPO_ROOT / "ci" / "wheelhouse"
CACHE = HERE / ".cache"
RECIPE_LABEL = "org.restoration.recipe"
SUITE = "bookworm"
BASE_IMAGE = f"restoration-offline/debian:{SUITE}"
# Debian bookworm's python3, which the S3 image installs the wheels into.
IMAGE_PYTHON = "3.11"
# Its exact version, for `pip download --python-version`.
IMAGE_PYTHON_FULL = "3.11.2"
GLIBC_MINOR = 36


@dataclass(frozen=True)
class ImageSpec:
    """One stand-in image: its folder under ci/images and the env var that selects it."""

    key: str
    name: str
    env_var: str
    needs_wheels: bool = False

    @property
    def directory(self) -> Path:
        return HERE / self.key


IMAGES = (
    ImageSpec("postgres", f"restoration-offline/postgres:15-{SUITE}", "TEST_POSTGRES_IMAGE"),
    ImageSpec("redis", f"restoration-offline/redis:7-{SUITE}", "TEST_REDIS_IMAGE"),
    ImageSpec("s3", f"restoration-offline/s3-moto:5-{SUITE}", "TEST_S3_IMAGE", needs_wheels=True),
)


PYTHON_IMAGE = ImageSpec("python", f"restoration-offline/python:{IMAGE_PYTHON}-{SUITE}", "")


@dataclass(frozen=True)
class ProjectImage:
    """A target of the root Dockerfile, built on PYTHON_IMAGE from the wheelhouse."""

    key: str
    name: str
    env_var: str
    target: str


PROJECT_IMAGES = (
    ProjectImage("restoration", "restoration:offline", "RESTORATION_IMAGE", "runtime"),
    ProjectImage("standin", "restoration-standin:offline", "RESTORATION_STANDIN_IMAGE", "standin"),
    ProjectImage("e2e-worker", "restoration-e2e-worker:offline", "E2E_WORKER_IMAGE", "e2e-worker"),
)
# What the root Dockerfile copies, and the lock file the dependencies resolve from where one
# exists: a change to any of it rebuilds the project's images.
PROJECT_SOURCES = (
    "Dockerfile",
    "pyproject.toml",
    "uv.lock",
    "README.md",
    "alembic.ini",
    "backend",
    "fixtures/__init__.py",
    "fixtures/comfyui",
)
# Left out of the hash as .dockerignore leaves them out of the context, or because the image
# makes its own (an editable install's metadata).
UNHASHED_PARTS = ("__pycache__",)
UNHASHED_SUFFIXES = (".pyc", ".pyo", ".pyd", ".egg-info")
# The dependency groups the project images install besides the runtime dependencies (see the
# Dockerfile): all at the versions uv.lock pins.
PROJECT_GROUPS = ("standin", "coverage")
# Tools the Dockerfile installs unpinned: the build backend of the editable install, and uv, which
# exports uv.lock to requirements files inside the build.
PROJECT_BUILD_TOOLS = ("setuptools>=69", "uv")


def log(message: str) -> None:
    print(f"[images] {message}", flush=True)


def run(command: Sequence[str], *, prefix: str, env: dict[str, str] | None = None) -> None:
    """Runs a command, streaming its output line by line so that long builds show progress."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    for line in process.stdout:
        print(f"  {prefix}| {line.rstrip()}", flush=True)
    if process.wait() != 0:
        raise SystemExit(f"[images] failed ({process.returncode}): {' '.join(command)}")


def capture(command: Sequence[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


@dataclass(frozen=True)
class BuiltImage:
    """An image as the daemon has it: its id and the recipe label ("" when it has none)."""

    id: str
    recipe: str


def inspect_image(image: str) -> BuiltImage | None:
    """The image named `image`, or None when there is no such image."""
    try:
        result = subprocess.run(
            ["docker", "image", "inspect", image], capture_output=True, text=True
        )
    except FileNotFoundError:  # no docker CLI: no images either
        return None
    if result.returncode != 0:
        return None
    (details,) = json.loads(result.stdout)
    labels = details["Config"].get("Labels") or {}
    return BuiltImage(details["Id"], labels.get(RECIPE_LABEL, ""))


def built_recipe(image: str) -> str | None:
    """The recipe hash an existing image was built from, or None when there is no such image."""
    built = inspect_image(image)
    return built.recipe if built else None


def digest(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big"))
        hasher.update(data)
    return hasher.hexdigest()[:16]


def folder_digest(folder: Path) -> str:
    """Hash of every file's relative name and content, so any edit to a recipe rebuilds it."""
    parts: list[str | bytes] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        parts += [str(path.relative_to(folder)), path.read_bytes()]
    return digest(*parts)


def ensure_docker() -> str:
    try:
        return capture(["docker", "version", "--format", "{{.Server.Arch}}"])
    except (OSError, subprocess.CalledProcessError):
        raise SystemExit("[images] no Docker daemon answers: run ci/docker.sh first") from None


def base_recipe() -> str:
    return digest("mmdebstrap", "--variant=minbase", SUITE)


def build_base(rebuild: bool) -> str:
    """Debian minbase from the mirror, imported as an image; returns its recipe hash."""
    recipe = base_recipe()
    if not rebuild and built_recipe(BASE_IMAGE) == recipe:
        log(f"{BASE_IMAGE}: up to date, skipped")
        return recipe
    if shutil.which("mmdebstrap") is None:
        raise SystemExit("[images] mmdebstrap is missing: run ci/docker.sh, which installs it")
    CACHE.mkdir(parents=True, exist_ok=True)
    rootfs = CACHE / f"rootfs-{SUITE}.tar"
    log(f"{BASE_IMAGE}: mmdebstrap --variant=minbase {SUITE}")
    run(["mmdebstrap", "--variant=minbase", SUITE, str(rootfs)], prefix="mmdebstrap")
    log(f"{BASE_IMAGE}: docker import")
    run(
        [
            "docker",
            "import",
            "--change",
            f"LABEL {RECIPE_LABEL}={recipe}",
            "--change",
            'CMD ["bash"]',
            str(rootfs),
            BASE_IMAGE,
        ],
        prefix="import",
    )
    rootfs.unlink()
    return recipe


def platform_args(docker_arch: str) -> list[str]:
    """pip platform tags for wheels that run on Debian bookworm on the daemon's architecture."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(docker_arch, docker_arch)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(17, GLIBC_MINOR + 1)]
    tags += [f"manylinux2014_{arch}", f"linux_{arch}"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def download_wheels(name: str, requirements: Path, docker_arch: str, destination: Path) -> None:
    """Fetches the wheels with the host's pip; skipped while the requirements are unchanged."""
    stamp = destination / ".requirements-digest"
    wanted = digest(requirements.read_bytes(), docker_arch, IMAGE_PYTHON_FULL)
    if stamp.is_file() and stamp.read_text() == wanted:
        log(f"{name}: wheels cached in {destination.relative_to(REPO_ROOT)}")
        return
    for old in destination.glob("*.whl"):
        old.unlink()
    destination.mkdir(parents=True, exist_ok=True)
    log(f"{name}: pip download -r {requirements.relative_to(REPO_ROOT)}")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--implementation",
            "cp",
            "--python-version",
            IMAGE_PYTHON_FULL,
            *platform_args(docker_arch),
            "--dest",
            str(destination),
            "-r",
            str(requirements),
        ],
        prefix="pip",
    )
    stamp.write_text(wanted)


def docker_build(name: str, context: Path, recipe: str, *args: str, prefix: str) -> None:
    """`docker build` with the recipe label; the classic builder needs no buildx plugin and prints
    each step as it goes."""
    run(
        [
            "docker",
            "build",
            "--force-rm",  # no stopped containers left behind by a failed step
            "--label",
            f"{RECIPE_LABEL}={recipe}",
            *args,
            "--tag",
            name,
            str(context),
        ],
        prefix=prefix,
        env={"DOCKER_BUILDKIT": "0"},
    )


def stand_in_recipe(spec: ImageSpec) -> str:
    return digest(base_recipe(), folder_digest(spec.directory))


def build_image(spec: ImageSpec, docker_arch: str, rebuild: bool) -> None:
    """Builds one stand-in image unless it is up to date."""
    recipe = stand_in_recipe(spec)
    if not rebuild and built_recipe(spec.name) == recipe:
        log(f"{spec.name}: up to date, skipped")
        return
    context = CACHE / "context" / spec.key
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(spec.directory, context)
    if spec.needs_wheels:
        wheels = CACHE / "wheels" / spec.key
        download_wheels(spec.name, spec.directory / "requirements.txt", docker_arch, wheels)
        shutil.copytree(wheels, context / "wheels", ignore=shutil.ignore_patterns(".*"))
    log(f"{spec.name}: docker build")
    docker_build(
        spec.name, context, recipe, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", prefix=spec.key
    )
    shutil.rmtree(context)


def image_marker_environment(docker_arch: str) -> dict[str, str]:
    """PEP 508 marker values of the images' Python, where they differ from the host's."""
    return {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
        "platform_machine": {"amd64": "x86_64", "arm64": "aarch64"}.get(docker_arch, docker_arch),
        "python_version": IMAGE_PYTHON,
        "python_full_version": IMAGE_PYTHON_FULL,
    }


def project_requirements(root: Path = REPO_ROOT, docker_arch: str = "amd64") -> str:
    """The wheels the project images install: uv.lock's pins of the runtime dependencies and of
    PROJECT_GROUPS that apply on the images' Python, plus the build tools.

    pip evaluates markers on the host, whose Python differs (redis wants async-timeout before
    3.11.3; numpy has one pin per Python), so they are evaluated here for the image and dropped.
    """
    try:
        from packaging.markers import Marker
    except ImportError:  # the host's pip carries a copy
        from pip._vendor.packaging.markers import Marker

    exported = capture(
        [
            "uv",
            "export",
            "--frozen",
            "--no-hashes",
            "--no-emit-project",
            "--no-default-groups",
            "--no-header",
            "--no-annotate",
            *(f"--group={group}" for group in PROJECT_GROUPS),
            f"--directory={root}",
        ]
    )
    environment = image_marker_environment(docker_arch)
    pins = []
    for line in exported.splitlines():
        requirement, _, marker = line.partition(";")
        if requirement.strip() and (not marker or Marker(marker).evaluate(environment)):
            pins.append(requirement.strip())
    return "".join(f"{line}\n" for line in (*pins, *PROJECT_BUILD_TOOLS))


def hashed(path: Path) -> bool:
    return not any(
        part in UNHASHED_PARTS or part.endswith(UNHASHED_SUFFIXES) for part in path.parts
    )


def sources_digest(root: Path) -> str:
    """What the project's images are built from: their sources (pyproject.toml and uv.lock among
    them, so the pinned versions) and the groups and tools installed besides."""
    parts: list[str | bytes] = [*PROJECT_GROUPS, *PROJECT_BUILD_TOOLS]
    for source in PROJECT_SOURCES:
        path = root / source
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(root)
            if hashed(relative):
                parts += [str(relative), file.read_bytes()]
    return digest(*parts)


def project_recipes(root: Path = REPO_ROOT) -> dict[str, str]:
    """The recipe label of each project image (by key) built from the checkout at `root`: the
    Python stand-in's recipe, the sources, the requirements and the Dockerfile target."""
    sources = digest(stand_in_recipe(PYTHON_IMAGE), sources_digest(root))
    return {image.key: digest(sources, image.target) for image in PROJECT_IMAGES}


def build_project_image(image: ProjectImage, recipe: str, rebuild: bool) -> None:
    if not rebuild and built_recipe(image.name) == recipe:
        log(f"{image.name}: up to date, skipped")
        return
    log(f"{image.name}: docker build --target {image.target} (the root Dockerfile)")
    docker_build(
        image.name,
        REPO_ROOT,
        recipe,
        *("--build-arg", f"PYTHON_IMAGE={PYTHON_IMAGE.name}"),
        *("--build-arg", "PIP_INSTALL_OPTIONS=--no-index"),
        *("--target", image.target),
        prefix=image.key,
    )


def env_lines(specs: Sequence[ImageSpec | ProjectImage]) -> list[str]:
    return [f"{spec.env_var}={spec.name}" for spec in specs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    keys = ", ".join(s.key for s in (*IMAGES, *PROJECT_IMAGES))
    parser.add_argument(
        "--rebuild", action="store_true", help="build even if the recipe is unchanged"
    )
    parser.add_argument("--print-env", action="store_true", help="only print the env vars to use")
    parser.add_argument("only", nargs="*", metavar="IMAGE", help=f"images to build: {keys}")
    args = parser.parse_args(argv)
    if unknown := set(args.only) - {s.key for s in (*IMAGES, *PROJECT_IMAGES)}:
        parser.error(f"unknown image(s) {', '.join(sorted(unknown))}; choose from {keys}")
    specs = [s for s in IMAGES if not args.only or s.key in args.only]
    projects = [p for p in PROJECT_IMAGES if not args.only or p.key in args.only]
    if args.print_env:
        print("\n".join(env_lines([*specs, *projects])))
        return 0

    started = time.monotonic()
    docker_arch = ensure_docker()
    build_base(args.rebuild)
    for spec in specs:
        build_image(spec, docker_arch, args.rebuild)
    if projects:
        build_image(PYTHON_IMAGE, docker_arch, args.rebuild)
        CACHE.mkdir(parents=True, exist_ok=True)
        requirements = CACHE / "project-requirements.txt"
        requirements.write_text(project_requirements(docker_arch=docker_arch))
        download_wheels("project images", requirements, docker_arch, WHEELHOUSE)
        recipes = project_recipes()
        for project in projects:
            build_project_image(project, recipes[project.key], args.rebuild)
    log(f"done in {time.monotonic() - started:.1f} s; to use these images:")
    for line in env_lines([*specs, *projects]):
        print(f"export {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
