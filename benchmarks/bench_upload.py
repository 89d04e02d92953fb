"""Memory of the API under large uploads: uvicorn's RSS while 20 MiB photos come in.

Starts Postgres, Redis and S3 as the test tiers do (TEST_SERVICES, native by default here), the
migrations and the API under uvicorn (no worker: the jobs stay queued), then measures the API
process's resident memory (VmRSS, sampled every few milliseconds):

- peak growth per concurrent upload: 4 uploads of a 20 MiB JPEG at once, (peak - baseline) / 4;
- after 100 uploads (4 at a time): RSS - baseline.

Targets (issue 9): at most 8 MiB per concurrent upload, decode included; back within 20 MiB after
100 uploads. Prints the figures and exits 1 when a target is missed. Run it with `nox -s bench`.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from fixtures.services.run import RunContext  # noqa: E402
from fixtures.services.sharing import SharedServices  # noqa: E402
from fixtures.stack import Stack, StackOptions  # noqa: E402

MiB = 1024 * 1024
URL = "/api/v1/restorations"


def photo_of_about(size_bytes: int) -> bytes:
    """A noisy JPEG close to `size_bytes` (noise compresses badly, like a high-ISO scan)."""
    rng = np.random.default_rng(9)
    side = 1024
    while True:
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
        if buffer.tell() >= size_bytes * 0.97:
            return buffer.getvalue()
        side = int(side * min(1.5, (size_bytes / buffer.tell()) ** 0.5 * 1.01))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class PeakSampler:
    """The highest RSS of `pid` seen while the block runs."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


def upload_and_remove(client: httpx.Client, token: str, data: bytes) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    response = client.post(URL, files={"file": ("photo.jpg", data, "image/jpeg")}, headers=headers)
    if response.status_code != 202:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
    job = f"{URL}/{response.json()['id']}"
    # Cancel the queued job, then delete it: S3 does not keep 2 GiB of originals.
    for _ in range(2):
        client.delete(job, headers=headers)


def settle(pid: int, seconds: float = 2.0) -> int:
    time.sleep(seconds)
    return rss_bytes(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=20.0)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--services", default=os.environ.get("TEST_SERVICES", "native"))
    args, _ = parser.parse_known_args(argv)  # nox -s bench hands every script all options

    data = photo_of_about(int(args.size_mib * MiB))
    with Image.open(io.BytesIO(data)) as image:
        print(f"photo: JPEG {image.width}x{image.height}, {len(data) / MiB:.1f} MiB", flush=True)

    shared = SharedServices(RunContext.create(), "main", option=args.services)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-upload-"))
    try:
        services = shared.provision("bench")
        options = StackOptions(
            services_env=services.env(),
            log_dir=log_dir,
            comfyui_url="http://127.0.0.1:9",  # no stand-in: the API alone is measured
            settings_env={"MAX_UPLOAD_BYTES": str(len(data) + MiB)},
        )
        stack = Stack(options)
        stack.cli("migrate")
        stack.cli("ensure-bucket")
        token = stack.create_token("bench@example.com")
        stack.api.env = stack.env
        stack.api.start().wait_http(f"{stack.api_url}/healthz")
        try:
            pid = stack.api.pid
            assert pid is not None
            with httpx.Client(base_url=stack.api_url, timeout=120) as client:
                # Warm-up: imports, connection pools, the first S3 and broker calls.
                upload_and_remove(client, token, data)
                baseline = settle(pid)

                with (
                    PeakSampler(pid) as sampler,
                    ThreadPoolExecutor(args.concurrent) as pool,
                ):
                    list(
                        pool.map(
                            lambda _: upload_and_remove(client, token, data),
                            range(args.concurrent),
                        )
                    )
                per_upload = (sampler.peak - baseline) / args.concurrent

                started = time.monotonic()
                with ThreadPoolExecutor(args.concurrent) as pool:
                    list(
                        pool.map(
                            lambda _: upload_and_remove(client, token, data), range(args.uploads)
                        )
                    )
                elapsed = time.monotonic() - started
                after = settle(pid)
        finally:
            stack.api.stop()
    finally:
        shared.stop()
        shared.remove_state()

    growth_after = after - baseline
    print(f"baseline RSS: {baseline / MiB:.1f} MiB")
    print(
        f"peak RSS with {args.concurrent} concurrent uploads: {sampler.peak / MiB:.1f} MiB, "
        f"{per_upload / MiB:.1f} MiB per concurrent upload (target <= 8)"
    )
    print(
        f"RSS after {args.uploads} more uploads ({elapsed:.0f} s): {after / MiB:.1f} MiB, "
        f"{growth_after / MiB:+.1f} MiB from the baseline (target <= 20)"
    )
    ok = per_upload <= 8 * MiB and growth_after <= 20 * MiB
    print("PASS" if ok else "FAIL: a memory target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
