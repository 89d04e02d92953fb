"""Inner run: gets its services, says so, then waits to be interrupted or killed."""

import os
import time
from pathlib import Path

from fixtures.services import WorkerServices


def test_waits_with_services_up(services: WorkerServices) -> None:
    (Path(os.environ["SCENARIO_OUT"]) / f"ready-{services.worker_id}").touch()
    time.sleep(120)
