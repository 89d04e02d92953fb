"""Reading what ComfyUI sends: websocket frames, history entries, and progress from both."""

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from app.services.comfyui.errors import ExecutionCancelled, ExecutionFailed
from app.services.comfyui.models import OutputImage, ProgressCallback, PromptResult

logger = logging.getLogger(__name__)


class ProgressTracker:
    """Turns websocket events into one monotonic fraction in [0, 1].

    The fraction is nodes finished out of nodes to run (cached nodes do not run), plus the
    `progress` value/max of the node running now (only nodes with a progress bar send it).
    """

    def __init__(self, node_ids: Iterable[str], callback: ProgressCallback | None) -> None:
        self._to_run = set(node_ids)
        self._finished: set[str] = set()
        self._current: str | None = None
        self._partial = 0.0
        self._reported = 0.0
        self._callback = callback

    def cached(self, nodes: Iterable[str]) -> None:
        self._to_run.difference_update(nodes)
        self._report()

    def executing(self, node: str) -> None:
        # Nodes run one at a time: a node starting means the previous one finished.
        if self._current is not None:
            self._finished.add(self._current)
        self._current = node
        self._partial = 0.0
        self._report()

    def step(self, node: str, value: float, maximum: float) -> None:
        if node == self._current and maximum > 0:
            self._partial = min(max(value / maximum, 0.0), 1.0)
            self._report()

    def states(self, nodes: Mapping[str, Any]) -> None:
        """A `progress_state` message: the state of every node seen so far."""
        for node_id, state in nodes.items():
            if not isinstance(state, dict):
                continue
            if state.get("state") == "finished":
                self._finished.add(node_id)
            elif state.get("state") == "running":
                self.step(node_id, number(state.get("value")), number(state.get("max")))
        self._report()

    def done(self) -> None:
        self._report(1.0)

    def _report(self, fraction: float | None = None) -> None:
        if fraction is None:
            if not self._to_run:
                return
            partial = self._partial if self._current not in self._finished else 0.0
            done = len(self._finished & self._to_run)
            running = partial if self._current in self._to_run else 0.0
            fraction = min((done + running) / len(self._to_run), 1.0)
        if fraction <= self._reported or self._callback is None:
            return
        self._reported = fraction
        try:
            self._callback(fraction)
        except Exception:
            # Progress is advisory: a failing callback must not fail the restoration.
            logger.warning("progress callback failed", exc_info=True)


def number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def decode_frame(frame: str | bytes) -> tuple[str, dict[str, Any]] | None:
    """`(type, data)` of a websocket text frame; None for what we do not read."""
    if isinstance(frame, bytes):
        return None  # previews of sampler nodes: not part of the result
    try:
        message = json.loads(frame)
    except ValueError:
        logger.debug("ignoring a websocket frame that is not JSON: %s", snippet(frame))
        return None
    if not isinstance(message, dict):
        return None
    kind, data = message.get("type"), message.get("data")
    if not isinstance(kind, str) or not isinstance(data, dict):
        return None
    return kind, data


def text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def execution_failed(prompt_id: str, data: Mapping[str, Any]) -> ExecutionFailed:
    node_id, node_type = text_or_none(data.get("node_id")), text_or_none(data.get("node_type"))
    exception_type = text_or_none(data.get("exception_type"))
    exception_message = (text_or_none(data.get("exception_message")) or "").strip()
    return ExecutionFailed(
        f"ComfyUI node {node_id} ({node_type}) failed: {exception_type}: {exception_message}",
        prompt_id=prompt_id,
        node_id=node_id,
        node_type=node_type,
        exception_type=exception_type,
        exception_message=exception_message,
    )


def interrupted(prompt_id: str, data: Mapping[str, Any]) -> ExecutionCancelled:
    return ExecutionCancelled(
        f"ComfyUI interrupted prompt {prompt_id} at node {data.get('node_id')} "
        f"({data.get('node_type')})"
    )


def history_outcome(prompt_id: str, entry: Mapping[str, Any]) -> PromptResult:
    """The result of a history entry, or the error it ended with."""
    status = entry.get("status")
    if isinstance(status, dict) and status.get("status_str") == "error":
        for message in reversed(status.get("messages") or []):
            if not (isinstance(message, list) and len(message) == 2):
                continue
            kind, data = message
            if kind == "execution_error" and isinstance(data, dict):
                raise execution_failed(prompt_id, data)
            if kind == "execution_interrupted" and isinstance(data, dict):
                raise interrupted(prompt_id, data)
        raise ExecutionFailed(
            f"ComfyUI prompt {prompt_id} ended with an error it did not describe",
            prompt_id=prompt_id,
        )
    outputs: dict[str, list[OutputImage]] = {}
    raw_outputs = entry.get("outputs")
    for node_id, output in (raw_outputs if isinstance(raw_outputs, dict) else {}).items():
        images = output.get("images") if isinstance(output, dict) else None
        outputs[node_id] = [
            OutputImage(
                filename=image["filename"],
                subfolder=str(image.get("subfolder", "")),
                type=str(image.get("type", "output")),
            )
            for image in (images if isinstance(images, list) else [])
            if isinstance(image, dict) and isinstance(image.get("filename"), str)
        ]
    return PromptResult(prompt_id=prompt_id, outputs=outputs)
