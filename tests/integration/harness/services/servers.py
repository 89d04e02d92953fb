"""What is really running for a run: counted from Docker labels or from /proc, not from the
plugin's own bookkeeping, so that the tests can catch the plugin lying."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

SERVICES = ("postgres", "redis", "s3")


def docker_servers(run_id: str, *, running_only: bool = True) -> dict[str, int]:
    """Containers carrying the run's label, per service."""
    from fixtures.services.providers.docker import LABEL_SERVICE, run_containers

    containers = run_containers(run_id)
    if running_only:
        containers = [c for c in containers if c.status == "running"]
    return dict(Counter(c.labels.get(LABEL_SERVICE, "?") for c in containers))


def native_servers(state_dir: Path) -> dict[str, int]:
    """Server processes working in the run's native folders, per service: the tops of the
    process trees there (a postmaster, not its backends).

    A server whose folder was deleted under it still counts: /proc shows "<path> (deleted)".
    """
    root = f"{state_dir}/native/"
    inside: dict[int, tuple[str, int]] = {}  # pid: (service, parent pid)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd").removesuffix(" (deleted)")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
        if cwd.startswith(root):
            inside[int(proc.name)] = (cwd[len(root) :].split("/")[0], parent)
    return dict(Counter(service for service, parent in inside.values() if parent not in inside))


def servers(provider: str, run_id: str, state_dir: Path) -> dict[str, int]:
    if provider == "docker":
        return docker_servers(run_id, running_only=False)
    if provider == "native":
        return native_servers(state_dir)
    return {}
