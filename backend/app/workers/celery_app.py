"""The Celery application: Redis broker, settings for long jobs that must never be lost."""

from functools import cache

from celery import Celery

from app.core.config import Settings, get_settings


def create_celery_app(settings: Settings) -> Celery:
    celery = Celery("restoration")
    configure(celery, settings)
    return celery


def add_worker_steps(celery: Celery) -> None:
    """What a worker runs beside its tasks: the recovery queue and the reaper."""
    from app.workers.recovery import RecoveryStep  # the API builds apps too, and never runs it

    celery.steps["consumer"].add(RecoveryStep)


def configure(celery: Celery, settings: Settings) -> None:
    """Apply settings to a Celery app (also to the module's app, once settings are known)."""
    celery.conf.update(
        broker_url=settings.redis_url,
        include=["app.workers.tasks.restoration"],
        task_default_queue=settings.celery_queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # job state lives in Postgres, not in a result backend
        # Acknowledge after the task ran, and give the task back if its worker dies: a job is only
        # ever dropped by the task itself, after it recorded the outcome.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit_seconds,
        task_time_limit=settings.task_time_limit_seconds,
        broker_connection_timeout=settings.broker_connect_timeout_seconds,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Redis redelivers unacknowledged tasks after this; it outlasts the longest job.
            "visibility_timeout": settings.broker_visibility_timeout_seconds,
            # Sweep for tasks of dead workers at this interval (kombu's default is ~100 s).
            "unacked_restore_interval": settings.broker_restore_interval_seconds,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": settings.broker_connect_timeout_seconds,
            "socket_timeout": settings.broker_connect_timeout_seconds,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )


@cache
def _worker_app() -> Celery:
    celery = create_celery_app(get_settings())
    add_worker_steps(celery)
    return celery


def __getattr__(name: str) -> Celery:
    """`celery_app`: the worker's app, configured from the environment on first use.

    Lazy, so that the API, which imports this module for `create_celery_app`, builds none.
    """
    if name == "celery_app":
        return _worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
