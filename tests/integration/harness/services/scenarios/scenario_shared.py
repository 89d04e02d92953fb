"""Inner run: every worker, once it has its services, waits for all the others, then counts
the servers of the run. Run with `--dist each` so that every worker runs it."""

import json
import os
import time
from pathlib import Path

from fixtures.services import WorkerServices
from fixtures.services.run import RunContext
from tests.integration.harness.services.servers import servers


def test_all_workers_see_one_set_of_services(
    services: WorkerServices, services_run: RunContext
) -> None:
    out = Path(os.environ["SCENARIO_OUT"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    (out / f"ready-{services.worker_id}").touch()
    deadline = time.monotonic() + 60
    while len(list(out.glob("ready-*"))) < workers:
        assert time.monotonic() < deadline, "the other workers never got their services"
        time.sleep(0.1)
    counts = servers(services.provider, services_run.run_id, services_run.state_dir)
    record = {"worker": services.worker_id, "database": services.database, "counts": counts}
    (out / f"counts-{services.worker_id}.json").write_text(json.dumps(record))
