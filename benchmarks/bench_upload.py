"""The API under uploads: its latency with 8 clients, and uvicorn's RSS while 20 MiB photos come in.

Starts Postgres, Redis and S3 as the test tiers do (TEST_SERVICES, native by default here), the
migrations and the API under uvicorn (no worker: the jobs stay queued), then measures:

- latency (issue 10): 8 clients upload a 2 MiB JPEG scan, 200 uploads in all; p50 and p99 of the
  upload's answer (202), the throughput, and the API process's peak RSS meanwhile;
- memory (issue 9), the API process's resident memory (VmRSS, sampled every few milliseconds):
  peak growth per concurrent upload, 4 uploads of a 20 MiB JPEG at once, (peak - baseline) / 4;
  and after 100 more uploads (4 at a time), RSS - baseline.

Memory targets (issue 9): at most 8 MiB per concurrent upload, decode included; back within 20 MiB
after 100 uploads. Latency has no target; it is a figure to compare runs by. Prints the figures,
writes reports/bench/upload.json, and exits 1 when a target is missed. Run it with `nox -s bench`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
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
REPORTS = REPO_ROOT / "reports" / "bench"


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


def timed_upload(client: httpx.Client, token: str, data: bytes) -> float:
    """Seconds until the API answers the upload; the job stays queued (no worker runs)."""
    started = time.perf_counter()
    response = client.post(
        URL,
        files={"file": ("scan.jpg", data, "image/jpeg")},
        headers={"Authorization": f"Bearer {token}"},
    )
    seconds = time.perf_counter() - started
    if response.status_code != 202:
        raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
    return seconds


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def settle(pid: int, seconds: float = 2.0) -> int:
    time.sleep(seconds)
    return rss_bytes(pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=float, default=20.0)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--latency-clients", type=int, default=8)
    parser.add_argument("--latency-uploads", type=int, default=200)
    parser.add_argument("--latency-size-mib", type=float, default=2.0)
    parser.add_argument("--services", default=os.environ.get("TEST_SERVICES", "native"))
    parser.add_argument("--output", type=Path, default=REPORTS / "upload.json")
    args, _ = parser.parse_known_args(argv)  # nox -s bench hands every script all options

    scan = photo_of_about(int(args.latency_size_mib * MiB))
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
                timed_upload(client, token, scan)
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

                # Latency last: its peak RSS must not raise the memory runs' baseline.
                started = time.monotonic()
                with (
                    PeakSampler(pid) as latency_sampler,
                    ThreadPoolExecutor(args.latency_clients) as pool,
                ):
                    latencies = list(
                        pool.map(
                            lambda _: timed_upload(client, token, scan),
                            range(args.latency_uploads),
                        )
                    )
                latency_seconds = time.monotonic() - started
        finally:
            stack.api.stop()
    finally:
        shared.stop()
        shared.remove_state()

    growth_after = after - baseline
    latency = {
        "clients": args.latency_clients,
        "uploads": args.latency_uploads,
        "photo_mib": round(len(scan) / MiB, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
        "uploads_per_s": round(args.latency_uploads / latency_seconds, 2),
        "peak_rss_mib": round(latency_sampler.peak / MiB, 1),
    }
    print(
        f"upload latency, {latency['clients']} clients, {latency['uploads']} uploads of a "
        f"{latency['photo_mib']} MiB JPEG: p50 {latency['p50_ms']} ms, p99 {latency['p99_ms']} ms, "
        f"{latency['uploads_per_s']} uploads/s, peak RSS {latency['peak_rss_mib']} MiB"
    )
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
    memory = {
        "photo_mib": round(len(data) / MiB, 1),
        "baseline_rss_mib": round(baseline / MiB, 1),
        "peak_rss_mib": round(sampler.peak / MiB, 1),
        "per_concurrent_upload_mib": round(per_upload / MiB, 1),
        "growth_after_uploads_mib": round(growth_after / MiB, 1),
        "met": ok,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"latency": latency, "memory": memory}, indent=2))
    print(f"written to {args.output}")
    print("PASS" if ok else "FAIL: a memory target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
