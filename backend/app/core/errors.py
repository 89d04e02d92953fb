"""Business errors: typed exceptions, each with an HTTP status and a stable machine-readable code.

Services raise these (or their own lower-level errors, which the business layer translates);
`app.api.errors` turns them into the one JSON error shape every client sees.
"""

from typing import Any, ClassVar


class AppError(Exception):
    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal server error."

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        self.message = message or self.default_message
        self.details = details
        super().__init__(self.message)


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"
    default_message = "Missing or invalid bearer token."


class NotFound(AppError):
    status_code = 404
    code = "not_found"
    default_message = "Not found."


class JobNotFound(NotFound):
    code = "job_not_found"
    default_message = "Restoration job not found."


class JobNotCompleted(AppError):
    status_code = 409
    code = "job_not_completed"
    default_message = "The restoration job has no result yet."


class IdempotencyConflict(AppError):
    status_code = 409
    code = "idempotency_conflict"
    default_message = "A request with this Idempotency-Key is still being processed."


class IdempotencyKeyReused(AppError):
    status_code = 422
    code = "idempotency_key_reused"
    default_message = (
        "This Idempotency-Key was already used for a different request; "
        "use a new key for a new upload."
    )


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"
    default_message = "The upload is larger than allowed."


class TooManyParts(PayloadTooLarge):
    code = "too_many_parts"
    default_message = "The multipart body has more parts than allowed."


class PartHeadersTooLarge(PayloadTooLarge):
    code = "part_headers_too_large"
    default_message = "A multipart part's headers are larger than allowed."


class UnsupportedMediaType(AppError):
    status_code = 415
    code = "unsupported_media_type"
    default_message = "Only JPEG, PNG, WebP and TIFF images are accepted."


class InvalidImage(AppError):
    status_code = 422
    code = "invalid_image"
    default_message = "The image is empty, truncated or corrupt."


class ImageTooLarge(AppError):
    status_code = 422
    code = "image_too_large"
    default_message = "The image has more pixels than allowed."


class ImageTooSmall(AppError):
    status_code = 422
    code = "image_too_small"
    default_message = "The image is smaller than the workflow can restore."


class ServiceUnavailable(AppError):
    status_code = 503
    code = "service_unavailable"
    default_message = "A backing service is unavailable; try again later."


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    default_message = "The database is unavailable; try again later."


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"
    default_message = "Object storage is unavailable; try again later."


class QueueUnavailable(ServiceUnavailable):
    code = "queue_unavailable"
    default_message = "The task queue is unavailable; try again later."


class RequestInvalid(AppError):
    status_code = 422
    code = "validation_error"
    default_message = "The request is invalid."
