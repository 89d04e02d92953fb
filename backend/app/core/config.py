"""All settings, read once from environment variables (and an optional `.env` file)."""

from enum import StrEnum
from functools import lru_cache

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1024 * 1024


class WorkflowName(StrEnum):
    """The ComfyUI workflows shipped in `app/workflows/`."""

    CORE = "restore"  # core nodes only: runs on any ComfyUI host
    MODEL_UPSCALE = "restore_model_upscale"  # needs an upscale model on the host


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- API
    api_title: str = "restoration"
    max_upload_bytes: int = Field(default=20 * MiB, gt=0)
    max_image_pixels: int = Field(default=50_000_000, gt=0)
    # The shipped workflows blur with radius 2, and a side must exceed it (reflect padding): smaller
    # uploads are refused rather than queued to fail (test_min_image_side.py pins it).
    image_min_side_pixels: int = Field(default=3, ge=1)
    presign_expiry_seconds: int = Field(default=300, gt=0)

    # --- Database (SQLAlchemy URL; `postgresql+psycopg://...` in production)
    database_url: str = "postgresql+psycopg://restoration:restoration@127.0.0.1:5432/restoration"
    database_connect_timeout_seconds: float = 3.0
    database_statement_timeout_ms: int = 5_000
    # The longest the client waits for any one answer from the server; derived from the statement
    # timeout when unset (see `_derive_limits` and `app.core.db.BoundedAsyncConnection`).
    database_operation_timeout_seconds: float | None = None

    # --- Celery broker (Redis)
    redis_url: str = "redis://127.0.0.1:6379/0"
    celery_queue: str = "restoration"
    broker_connect_timeout_seconds: float = 3.0
    # The longest the API waits for the broker to take a task before it answers 503.
    broker_enqueue_timeout_seconds: float = Field(default=5.0, gt=0)

    # --- S3
    s3_endpoint_url: str | None = None
    # Where clients reach S3, for presigned URLs, when that differs from where the app reaches it
    # (e.g. `http://minio:9000` inside compose, `http://localhost:9000` for a browser).
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "restoration"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_multipart_threshold_bytes: int = 8 * MiB
    s3_connect_timeout_seconds: float = 3.0
    s3_read_timeout_seconds: float = 30.0
    s3_max_attempts: int = 3
    # The longest one S3 operation may take, botocore's own retries included: past it the
    # operation fails as transient (503 at the API, a retry in the worker).
    s3_operation_timeout_seconds: float = Field(default=10.0, gt=0)

    # --- ComfyUI
    comfyui_url: str = "http://127.0.0.1:8188"
    # Several hosts, separated by commas or spaces; when set, COMFYUI_URL is not used.
    comfyui_urls: str | None = None
    # A host that stopped answering is left out of the rotation this long, then asked again.
    comfyui_host_retry_seconds: float = Field(default=10.0, ge=0)
    comfyui_workflow: WorkflowName = WorkflowName.CORE
    comfyui_upscale_model: str = "tiny_compact_x2.safetensors"
    comfyui_scale: float = Field(default=2.0, gt=0, le=8.0)
    comfyui_request_timeout_seconds: float = 30.0
    comfyui_job_timeout_seconds: float = 600.0
    comfyui_poll_interval_seconds: float = 1.0
    # How often a worker checks a host's version and models to know its cached node specs hold.
    comfyui_spec_recheck_seconds: float = Field(default=30.0, ge=0)
    # While following a prompt, check /history when the websocket has been silent this long.
    comfyui_ws_silence_seconds: float = Field(default=5.0, gt=0)

    # --- Worker
    # Transient failures (ComfyUI, S3, the database) are retried until this much time has passed
    # since the first of them: long enough for a ComfyUI restart with its model loading.
    task_retry_budget_seconds: float = Field(default=600.0, ge=0)
    task_retry_backoff_seconds: float = 2.0
    task_retry_backoff_max_seconds: float = 30.0
    task_heartbeat_seconds: float = 2.0
    # A PROCESSING job whose heartbeat is older than this may be claimed again (its worker died).
    # Several heartbeats fit in it, so a database blip does not cost a live worker its job.
    task_lease_seconds: float = Field(default=20.0, gt=0)
    # A task whose job is not (yet) in the database retries this long: the API commits the job
    # before it enqueues, but a message can still outrun a commit seen through another connection.
    task_missing_job_grace_seconds: float = Field(default=30.0, ge=0)

    # --- Recovery (app.workers.recovery): each worker re-enqueues stranded jobs.
    reaper_interval_seconds: float = Field(default=5.0, gt=0)
    # A PENDING job this old is sent again (its message may have been lost).
    reaper_pending_after_seconds: float = Field(default=120.0, gt=0)

    # Derived from the ComfyUI timeout when unset (see `_derive_limits`).
    task_soft_time_limit_seconds: float | None = None
    task_time_limit_seconds: float | None = None
    # Redis redelivers an unacknowledged task after this: it must outlast the longest job.
    broker_visibility_timeout_seconds: float | None = None
    # How often a worker looks for tasks whose worker died (unacknowledged past the timeout).
    broker_restore_interval_seconds: float = Field(default=30.0, gt=0)

    @property
    def comfyui_hosts(self) -> list[str]:
        """The ComfyUI hosts: COMFYUI_URLS if set, else COMFYUI_URL alone."""
        hosts = (self.comfyui_urls or "").replace(",", " ").split()
        return [host.rstrip("/") for host in hosts] or [self.comfyui_url.rstrip("/")]

    @model_validator(mode="after")
    def _derive_limits(self) -> "Settings":
        # Past the server's own statement timeout, with a second for the answer to travel.
        if self.database_operation_timeout_seconds is None:
            self.database_operation_timeout_seconds = self.database_statement_timeout_ms / 1000 + 1
        # The soft limit lies past the ComfyUI timeout, so the client interrupts cleanly first.
        if self.task_soft_time_limit_seconds is None:
            self.task_soft_time_limit_seconds = self.comfyui_job_timeout_seconds + 60
        if self.task_time_limit_seconds is None:
            self.task_time_limit_seconds = self.task_soft_time_limit_seconds + 30
        if self.broker_visibility_timeout_seconds is None:
            self.broker_visibility_timeout_seconds = self.task_time_limit_seconds + 60
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
