"""Settings: defaults, environment variables and `.env`, validation, and the derived time limits."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.core.config import MiB, Settings, WorkflowName, get_settings


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No setting from the environment, and no `.env` in the working directory."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_defaults(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()

    assert settings.max_upload_bytes == 20 * MiB
    assert settings.max_image_pixels == 50_000_000
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.comfyui_workflow is WorkflowName.CORE
    assert settings.s3_secret_access_key is None
    # Recovery: a crashed worker's job runs again within 2 x lease (reaper interval < lease).
    assert settings.task_lease_seconds == 20
    assert settings.task_heartbeat_seconds < settings.task_lease_seconds / 3
    assert settings.reaper_interval_seconds < settings.task_lease_seconds
    assert settings.task_retry_budget_seconds == 600
    assert settings.task_retry_backoff_max_seconds == 30
    # Derived from the ComfyUI job timeout (600 s).
    assert settings.task_soft_time_limit_seconds == 660
    assert settings.task_time_limit_seconds == 690
    assert settings.broker_visibility_timeout_seconds == 750


def test_environment_variables_override_defaults(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("MAX_UPLOAD_BYTES", "1024")
    clean_env.setenv("COMFYUI_WORKFLOW", "restore_model_upscale")
    clean_env.setenv("COMFYUI_JOB_TIMEOUT_SECONDS", "30")
    clean_env.setenv("s3_bucket", "lower-case-works-too")
    clean_env.setenv("S3_SECRET_ACCESS_KEY", "very-secret")

    settings = Settings()

    assert settings.max_upload_bytes == 1024
    assert settings.comfyui_workflow is WorkflowName.MODEL_UPSCALE
    assert settings.s3_bucket == "lower-case-works-too"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "very-secret"
    assert "very-secret" not in repr(settings)
    assert settings.task_soft_time_limit_seconds == 90


def test_dot_env_file_is_read_and_the_environment_wins(clean_env: pytest.MonkeyPatch) -> None:
    Path(".env").write_text(
        "REDIS_URL=redis://from-dotenv:6379/1\nCELERY_QUEUE=from-dotenv\nSOMETHING_ELSE=ignored\n",
        encoding="utf-8",
    )
    clean_env.setenv("CELERY_QUEUE", "from-environment")

    settings = Settings()

    assert settings.redis_url == "redis://from-dotenv:6379/1"
    assert settings.celery_queue == "from-environment"
    assert not hasattr(settings, "something_else")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_UPLOAD_BYTES", "0"),
        ("MAX_IMAGE_PIXELS", "-1"),
        ("PRESIGN_EXPIRY_SECONDS", "0"),
        ("COMFYUI_SCALE", "0"),
        ("COMFYUI_SCALE", "8.5"),
        ("COMFYUI_WORKFLOW", "restore_everything"),
        ("TASK_RETRY_BUDGET_SECONDS", "many"),
        ("TASK_LEASE_SECONDS", "0"),
        ("REAPER_INTERVAL_SECONDS", "0"),
    ],
)
def test_invalid_values_are_refused(clean_env: pytest.MonkeyPatch, name: str, value: str) -> None:
    clean_env.setenv(name, value)

    with pytest.raises(ValidationError) as raised:
        Settings()

    assert raised.value.errors()[0]["loc"] == (name.lower(),)


def test_only_unset_limits_are_derived(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings(comfyui_job_timeout_seconds=100, task_soft_time_limit_seconds=500)

    assert settings.task_soft_time_limit_seconds == 500
    assert settings.task_time_limit_seconds == 530
    assert settings.broker_visibility_timeout_seconds == 590

    given = Settings(task_time_limit_seconds=1000, broker_visibility_timeout_seconds=5000)
    assert (given.task_soft_time_limit_seconds, given.task_time_limit_seconds) == (660, 1000)
    assert given.broker_visibility_timeout_seconds == 5000


def test_get_settings_reads_once_until_cleared(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CELERY_QUEUE", "first")
    first = get_settings()
    clean_env.setenv("CELERY_QUEUE", "second")

    assert get_settings() is first
    assert first.celery_queue == "first"
    get_settings.cache_clear()
    assert get_settings().celery_queue == "second"
