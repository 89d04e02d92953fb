"""The Celery app: settings for long jobs that must never be lost, all derived from `Settings`."""

import importlib
import sys

import pytest

from app.core.config import Settings
from app.workers.celery_app import celery_app, create_celery_app
from app.workers.queue import RESTORE_TASK
from app.workers.tasks import restoration as task_module


def test_jobs_are_acknowledged_late_and_handed_back_when_a_worker_dies(
    settings: Settings,
) -> None:
    conf = create_celery_app(settings).conf

    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert (conf.task_serializer, list(conf.accept_content)) == ("json", ["json"])


def test_broker_and_queue_come_from_settings(settings: Settings) -> None:
    custom = settings.model_copy(
        update={"redis_url": "redis://broker.invalid:6380/3", "celery_queue": "photos"}
    )

    conf = create_celery_app(custom).conf

    assert conf.broker_url == "redis://broker.invalid:6380/3"
    assert conf.task_default_queue == "photos"
    assert conf.broker_connection_timeout == custom.broker_connect_timeout_seconds
    options = conf.broker_transport_options
    assert options["socket_connect_timeout"] == custom.broker_connect_timeout_seconds
    assert options["socket_timeout"] == custom.broker_connect_timeout_seconds


@pytest.mark.parametrize("comfyui_timeout", [600.0, 30.0, 3600.0])
def test_limits_are_derived_from_the_comfyui_timeout_in_order(comfyui_timeout: float) -> None:
    settings = Settings(_env_file=None, comfyui_job_timeout_seconds=comfyui_timeout)  # type: ignore[call-arg]

    conf = create_celery_app(settings).conf
    soft, hard = conf.task_soft_time_limit, conf.task_time_limit
    visibility = conf.broker_transport_options["visibility_timeout"]

    # ComfyUI times out (and is interrupted) first, then the soft limit, then the hard one;
    # Redis redelivers an unacknowledged job only after all of them.
    assert visibility > hard > soft > comfyui_timeout
    assert (soft, hard, visibility) == (
        settings.task_soft_time_limit_seconds,
        settings.task_time_limit_seconds,
        settings.broker_visibility_timeout_seconds,
    )


def test_explicit_limits_are_used_as_given() -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        task_soft_time_limit_seconds=100,
        task_time_limit_seconds=200,
        broker_visibility_timeout_seconds=7200,
    )

    conf = create_celery_app(settings).conf

    assert (conf.task_soft_time_limit, conf.task_time_limit) == (100, 200)
    assert conf.broker_transport_options["visibility_timeout"] == 7200


def test_the_restoration_task_is_registered_under_the_name_the_api_sends() -> None:
    assert "app.workers.tasks.restoration" in celery_app.conf.include
    assert celery_app.tasks[RESTORE_TASK] is task_module.restore_image._get_current_object()
    assert task_module.restore_image.max_retries is None  # the task counts its own retries


def test_dead_workers_tasks_are_swept_at_the_configured_interval() -> None:
    settings = Settings(_env_file=None, broker_restore_interval_seconds=5)  # type: ignore[call-arg]

    options = create_celery_app(settings).conf.broker_transport_options

    # kombu scans every `interval * throttle` seconds; throttle 1 makes the setting the period.
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (5, 1)


def test_the_api_builds_no_worker_app() -> None:
    """The worker's global app is built on first use, never by importing the API.

    The app's own modules are imported afresh, in this process: a subprocess would spend seconds
    importing FastAPI, SQLAlchemy, boto3 and Celery again (a quarter of this tier's time). The
    modules of this process are put back afterwards, so the other tests keep theirs.
    """
    saved = {name: module for name, module in sys.modules.items() if _is_app_module(name)}
    for name in saved:
        del sys.modules[name]
    try:
        importlib.import_module("app.main")
        importlib.import_module("app.api.resources")
        fresh = importlib.import_module("app.workers.celery_app")
        assert fresh is not saved.get("app.workers.celery_app")
        assert fresh._worker_app.cache_info().currsize == 0
    finally:
        for name in [name for name in sys.modules if _is_app_module(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _is_app_module(name: str) -> bool:
    return name == "app" or name.startswith("app.")
