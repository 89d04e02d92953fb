"""What goes wrong when talking to ComfyUI, as typed errors the worker sorts into retry or fail."""

from typing import Any


class ComfyUIError(Exception):
    """Base of every ComfyUI failure. `transient` failures are worth retrying."""

    transient: bool = False


class ComfyUIUnavailable(ComfyUIError):
    """The host could not be reached or answered with a server error."""

    transient = True


class ComfyUITimeout(ComfyUIError):
    """The prompt did not finish in time; it was interrupted."""

    transient = True


class WorkflowRejected(ComfyUIError):
    """The workflow is invalid for this host (our own check or ComfyUI's 400 answer)."""

    def __init__(
        self,
        message: str,
        *,
        error: dict[str, Any] | None = None,
        node_errors: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.error = error or {}
        self.node_errors = node_errors or {}


class ExecutionFailed(ComfyUIError):
    """ComfyUI accepted the prompt, then a node raised while executing it."""

    def __init__(
        self,
        message: str,
        *,
        prompt_id: str | None = None,
        node_id: str | None = None,
        node_type: str | None = None,
        exception_type: str | None = None,
        exception_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message


class ExecutionCancelled(ComfyUIError):
    """We asked ComfyUI to stop (the job was cancelled) and it did."""
