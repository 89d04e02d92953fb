"""ComfyUI integration: an async HTTP + websocket client and the restoration service built on it.

Facts this module relies on (observed on ComfyUI 0.3.64):
- per-prompt events reach only the websocket whose `clientId` equals the prompt's `client_id`, so the
  socket is opened *before* submitting;
- the history entry appears only after the final `executing` message with `node: null`;
- identical graphs are cached and answer with the old output, hence a unique `filename_prefix` per job;
- V3 COMBO inputs are not validated at submit, hence the client-side check against `/object_info`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID


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

    def __init__(self, message: str, *, error: dict[str, Any] | None = None,
                 node_errors: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.error = error or {}
        self.node_errors = node_errors or {}


class ExecutionFailed(ComfyUIError):
    """ComfyUI accepted the prompt, then a node raised while executing it."""

    def __init__(self, message: str, *, node_id: str | None = None, node_type: str | None = None,
                 exception_type: str | None = None, exception_message: str | None = None) -> None:
        super().__init__(message)
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = exception_message


class ExecutionCancelled(ComfyUIError):
    """We asked ComfyUI to stop (the job was cancelled) and it did."""


@dataclass(frozen=True)
class UploadedImage:
    name: str
    subfolder: str
    type: str = "input"

    @property
    def load_image_value(self) -> str:
        """The value `LoadImage.image` takes for this upload."""
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


@dataclass(frozen=True)
class OutputImage:
    filename: str
    subfolder: str
    type: str = "output"


@dataclass(frozen=True)
class RestoredImage:
    data: bytes
    width: int
    height: int
    prompt_id: str


@dataclass(frozen=True)
class ComfyUIHealth:
    ok: bool
    version: str | None = None
    devices: list[str] = field(default_factory=list)
    error: str | None = None


ProgressCallback = Callable[[float], None]
