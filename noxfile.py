"""Sessions for every tier. `nox` alone runs the default list; `nox -s unit -- -k upload` passes pytest args.

Each test session writes parallel coverage data under reports/coverage/ and JUnit XML under
reports/junit/; `nox -s coverage` combines whatever data exists into one report.
"""

import os
from pathlib import Path

import nox

nox.needs_version = ">=2024.4.15"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
nox.options.sessions = [
    "lint",
    "typecheck",
    "unit",
    "integration",
    "e2e",
    "chaos",
    "fuzz",
    "coverage",
]

ROOT = Path(__file__).parent
REPORTS = ROOT / "reports"


def install(session: nox.Session, *groups: str, project: bool = True) -> None:
    """The named dependency groups at the versions uv.lock pins, with the project (editable, so
    coverage maps to backend/app) and its dependencies unless `project` is False. A lock that no
    longer matches pyproject.toml fails here: `nox -s lock` refreshes it."""
    selection = "--group" if project else "--only-group"
    session.run_install(
        "uv",
        "sync",
        "--locked",
        "--no-default-groups",
        *(f"{selection}={group}" for group in groups),
        # uv writes no .pyc files by default; where PYTHONDONTWRITEBYTECODE is set (these
        # machines, many CI images) every process then compiles its imports: ~3 s per xdist worker.
        "--compile-bytecode",
        # Into the session's virtualenv, not .venv; sync also removes what the groups do not name.
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
    )


def run_tier(
    session: nox.Session, tier: str, *pytest_args: str, env: dict[str, str] | None = None
) -> None:
    """Run one tier under coverage; the session's posargs go to pytest last, so they win.
    Posargs naming test paths (`nox -s integration -- tests/integration/api`) replace the tier's
    folder."""
    paths_given = any(arg.startswith(f"tests/{tier}") for arg in session.posargs)
    (REPORTS / "coverage").mkdir(parents=True, exist_ok=True)
    (REPORTS / "junit").mkdir(parents=True, exist_ok=True)
    session.run(
        "python",
        "-m",
        "coverage",
        "run",
        "-m",
        "pytest",
        *([] if paths_given else [f"tests/{tier}"]),
        f"--junitxml={REPORTS / 'junit' / f'{tier}.xml'}",
        *pytest_args,
        *session.posargs,
        # Each tier's data files carry its name, so CI can upload them per tier and shard.
        env={"COVERAGE_FILE": str(REPORTS / "coverage" / f".coverage.{tier}"), **(env or {})},
    )


def comfyui_host(session: nox.Session) -> str:
    """COMFYUI_URL, checked: the session fails (before installing anything) unless it names a
    ComfyUI that answers GET /system_stats with its version."""
    import json
    import urllib.error
    import urllib.request

    url = os.environ.get("COMFYUI_URL", "").strip()
    if not url:
        session.error(
            "COMFYUI_URL is not set: the gpu tier runs against a real ComfyUI host, "
            "e.g. COMFYUI_URL=http://gpu-runner:8188 nox -s gpu"
        )
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/system_stats", timeout=10) as response:
            stats = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        session.error(f"ComfyUI at COMFYUI_URL={url} is unreachable: GET /system_stats: {exc}")
    if not isinstance(stats, dict) or "comfyui_version" not in stats.get("system", {}):
        session.error(f"COMFYUI_URL={url} is not a ComfyUI host: /system_stats lacks its version")
    session.log(f"ComfyUI {stats['system']['comfyui_version']} at {url}")
    return url


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format check; actionlint on the GitHub workflows."""
    install(session, "lint", project=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("actionlint")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on backend/app."""
    install(session, "typecheck")
    session.run("mypy")


@nox.session
def unit(session: nox.Session) -> None:
    """No network, no servers; parallel with xdist. CI runs it on 3.11-3.13 (`--force-python`)."""
    install(session, "test")
    run_tier(session, "unit", "-n", "auto")


@nox.session
def gpu(session: nox.Session) -> None:
    """The contract suite and our workflows on real photos, against the ComfyUI at COMFYUI_URL.

    Never starts a ComfyUI and never passes by skipping: an unset or unreachable COMFYUI_URL fails
    the session before anything is installed. Not in the default list. Reports go to
    reports/gpu/gpu-report.{json,html}; see tests/gpu/conftest.py for the other variables.
    """
    url = comfyui_host(session)
    install(session, "gpu")
    # No xdist: one host runs one prompt at a time, and the latencies are per image.
    run_tier(session, "gpu", env={"COMFYUI_URL": url})


@nox.session
def integration(session: nox.Session) -> None:
    """Real Postgres, Redis and S3 (TEST_SERVICES=auto|docker|native|external), a real Celery
    worker and the ComfyUI stand-in; parallel with xdist, one set of services for all workers."""
    install(session, "integration")
    run_tier(session, "integration", "-n", "auto")


@nox.session
def e2e(session: nox.Session) -> None:
    """The whole stack as processes (uvicorn, celery worker, ComfyUI stand-in) on the same
    services as the integration tier; tests act only as HTTP clients. Coverage follows the
    API and worker subprocesses."""
    install(session, "e2e")
    run_tier(session, "e2e")


@nox.session
def chaos(session: nox.Session) -> None:
    """Real faults under the stack as processes: killed workers and pool processes, frozen and
    restarted services, a restarted or refusing ComfyUI stand-in, a silent websocket, the enqueue
    race. One process (the tests stop shared services); prints the chaos table and writes it to
    reports/chaos/chaos-<provider>.json."""
    install(session, "integration")
    run_tier(session, "chaos")


@nox.session
def serve(session: nox.Session) -> None:
    """Run the whole stack here: services (as in the tiers), migrations, API, worker, ComfyUI
    stand-in (or COMFYUI_URL). Prints the URLs and a demo token; Ctrl-C stops everything.
    Options go after `--`, e.g. `nox -s serve -- --services native --port 8080`."""
    install(session, "test")
    # Ctrl-C reaches this process too: give it time to stop the stack and the services.
    session.run("python", "-m", "fixtures.serve", *session.posargs, interrupt_timeout=120)


@nox.session
def fuzz(session: nox.Session) -> None:
    """Schemathesis on the app's OpenAPI schema and Hypothesis on upload bytes and multipart
    framing, against the app under uvicorn on the integration tier's services and stand-in. Fails
    on any 5xx, any answer off the schema, any message that leaks internals. A fixed budget
    (FUZZ_EXAMPLES examples per test); derandomized in CI (CI set)."""
    install(session, "fuzz")
    run_tier(session, "fuzz")


@nox.session
def bench(session: nox.Session) -> None:
    """Every script under benchmarks/, one after the other; each prints its figures and fails on a
    missed target. Not in the default list: timings and memory belong here, not in tests.
    Options after `--` go to every script."""
    install(session, "e2e")  # bench_pipeline.py runs the stack on real photos (scikit-image)
    scripts = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    if not scripts:
        session.error("No benchmarks/bench_*.py scripts.")
    failed = []
    for script in scripts:
        session.log(f"--- {script.relative_to(ROOT)}")
        try:
            session.run("python", str(script), *session.posargs)
        except nox.command.CommandFailed:  # the others still run: one run, all the figures
            failed.append(script.name)
    if failed:
        session.error(f"missed targets (or failed): {', '.join(failed)}")


@nox.session(venv_backend="none")
def lock(session: nox.Session) -> None:
    """Refresh uv.lock after a change to the dependencies in pyproject.toml; pins that still fit
    stay. `nox -s lock -- --upgrade` moves every pin to the newest allowed version,
    `-- --upgrade-package pytest` one of them. Commit uv.lock with the change."""
    session.run("uv", "lock", *session.posargs)


@nox.session(venv_backend="none")
def images(session: nox.Session) -> None:
    """Build the offline stand-in images (ci/images/) for machines that cannot pull images."""
    session.run("python3", "ci/images/build.py", *session.posargs)


@nox.session
def coverage(session: nox.Session) -> None:
    """Combine every tier's data: terminal, HTML, XML and a markdown summary; fail under the threshold."""
    install(session, "test")
    data = REPORTS / "coverage"
    if not any(data.glob(".coverage.*")):
        session.error(
            "No coverage data under reports/coverage/: run a test session first (e.g. nox -s unit)."
        )
    # The combined file lives outside the data folder: with parallel data on, reporting from a
    # file in that folder would erase the per-tier files beside it.
    env = {"COVERAGE_FILE": str(REPORTS / ".coverage")}
    session.run("coverage", "combine", "--keep", "--quiet", str(data), env=env)
    session.run("coverage", "html", "-d", str(REPORTS / "htmlcov"), "--fail-under=0", env=env)
    session.run("coverage", "xml", "-o", str(REPORTS / "coverage.xml"), "--fail-under=0", env=env)
    with (REPORTS / "coverage.md").open("w") as summary:
        session.run(
            "coverage", "report", "--format=markdown", "--fail-under=0", env=env, stdout=summary
        )
    session.run("coverage", "report", env=env)
