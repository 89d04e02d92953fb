"""moto's S3 server started with MinIO's command line, answering MinIO's health endpoints.

Accepts what the official image accepts from testcontainers' MinioContainer:
``[minio] server DIR... [--address [HOST]:PORT] [--console-address ...]``.
Unknown flags are ignored so that MinIO-style invocations keep working.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

HEALTH_PATHS = frozenset(
    {
        "/minio/health/live",
        "/minio/health/ready",
        "/minio/health/cluster",
        "/minio/health/cluster/read",
    }
)
MOTO_VERSION = importlib.metadata.version("moto")
SERVER = f"moto/{MOTO_VERSION}"  # the Server header, where MinIO says "MinIO"


def parse_args(argv: list[str]) -> tuple[str, int]:
    if argv and argv[0] == "minio":
        argv = argv[1:]
    if not argv or argv[0] != "server":
        sys.exit("usage: [minio] server DIR... [--address [HOST]:PORT]")
    parser = argparse.ArgumentParser(prog="minio server")
    parser.add_argument("dirs", nargs="*")
    parser.add_argument("--address", default=os.environ.get("MINIO_ADDRESS", ":9000"))
    options, _ignored = parser.parse_known_args(argv[1:])
    host, _, port = options.address.rpartition(":")
    return host or "0.0.0.0", int(port)  # noqa: S104 (all interfaces inside a container)


def with_minio_health(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Answers MinIO's health checks; hands everything else to moto."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in HEALTH_PATHS:
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        return app(environ, start_response)

    return wrapped


def main() -> None:
    host, port = parse_args(sys.argv[1:])
    os.environ.setdefault("MOTO_PORT", str(port))

    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    # As PID 1 the default SIGTERM action does nothing: exit explicitly so `docker stop` is quick.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: sys.exit(0))

    class RequestHandler(MotoRequestHandler):  # type: ignore[misc]
        def version_string(self) -> str:
            return SERVER

    print(f"S3 stand-in: moto {MOTO_VERSION} on {host}:{port} (MinIO health endpoints)", flush=True)
    app = with_minio_health(DomainDispatcherApplication(create_backend_app))
    run_simple(host, port, app, threaded=True, request_handler=RequestHandler)


if __name__ == "__main__":
    main()
