"""ComfyUI integration: an async HTTP + websocket client and the restoration service built on it.

Facts this module relies on (observed on ComfyUI 0.3.64):
- per-prompt events reach only the websocket whose `clientId` equals the prompt's `client_id`,
  so the socket is opened *before* submitting;
- the history entry appears only after the final `executing` message with `node: null`;
- identical graphs are cached and answer with the old output, hence a unique `filename_prefix`
  per job and attempt;
- V3 COMBO inputs are not validated at submit, hence the client-side check against `/object_info`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import UUID, uuid4

import httpx
from PIL import Image
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from app.core.config import Settings, WorkflowName
from app.workflows import Workflow, WorkflowError, build_workflow, output_node

logger = logging.getLogger(__name__)

# An `execution_error` carries tracebacks and tensor reprs of the failing node's inputs.
WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Closing waits this long for the server's close frame.
_WS_CLOSE_TIMEOUT = 2.0
# ComfyUI leaves long combo lists (model files) out of its error messages; so do we.
_COMBO_LIST_LIMIT = 20


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
class PromptResult:
    """A finished prompt: the images each output node wrote."""

    prompt_id: str
    outputs: dict[str, list[OutputImage]]


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


class _Progress:
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
                self.step(node_id, _number(state.get("value")), _number(state.get("max")))
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


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _node_error(
    error_type: str, message: str, details: str, extra_info: dict[str, Any]
) -> dict[str, Any]:
    return {"type": error_type, "message": message, "details": details, "extra_info": extra_info}


def _spec_parts(spec: Any) -> tuple[Any, dict[str, Any]]:
    """`[type, {options}]` (the options may be missing) from an `/object_info` input spec."""
    if not isinstance(spec, list | tuple) or not spec:
        return None, {}
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return spec[0], options


def _combo_options(input_type: Any, options: dict[str, Any]) -> list[Any] | None:
    """The allowed values of a combo input in either encoding, or None for other inputs.

    V1 nodes list the options as the type (`[[opts], {...}]`); V3 nodes say `COMBO` and put them
    in the options (`["COMBO", {"options": [...]}]`).
    """
    if isinstance(input_type, list):
        return input_type
    if input_type == "COMBO":
        listed = options.get("options", [])
        return listed if isinstance(listed, list) else []
    return None


def _types_match(received: Any, expected: Any) -> bool:
    if not isinstance(received, str) or not isinstance(expected, str):
        return True
    if "*" in (received, expected):
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


_LITERAL_TYPES: dict[str, tuple[type, ...]] = {
    "INT": (int,),
    "FLOAT": (int, float),
    "STRING": (str,),
    "BOOLEAN": (bool,),
}


def _check_literal(
    name: str, value: Any, input_type: Any, options: dict[str, Any]
) -> dict[str, Any] | None:
    """One literal input against its spec, with ComfyUI's error types and wording."""
    extra = {"input_name": name, "input_config": [input_type, options], "received_value": value}
    expected = _LITERAL_TYPES.get(input_type) if isinstance(input_type, str) else None
    if expected is not None:
        if not isinstance(value, expected) or (isinstance(value, bool) and input_type != "BOOLEAN"):
            return _node_error(
                "invalid_input_type",
                f"Failed to convert an input value to a {input_type} value",
                f"{name}, {value!r}, expected {input_type}",
                extra,
            )
        if input_type not in ("INT", "FLOAT"):
            return None
        if "min" in options and value < options["min"]:
            return _node_error(
                "value_smaller_than_min",
                f"Value {value} smaller than min of {options['min']}",
                name,
                extra,
            )
        if "max" in options and value > options["max"]:
            return _node_error(
                "value_bigger_than_max",
                f"Value {value} bigger than max of {options['max']}",
                name,
                extra,
            )
        return None
    allowed = _combo_options(input_type, options)
    # Upload combos list only the top-level input files; ComfyUI checks the file itself instead.
    if allowed is None or any(key.endswith("_upload") and options[key] for key in options):
        return None
    values = value if isinstance(value, list) and options.get("multiselect") else [value]
    if all(item in allowed for item in values):
        return None
    listed = (
        str(allowed) if len(allowed) <= _COMBO_LIST_LIMIT else f"(list of length {len(allowed)})"
    )
    return _node_error(
        "value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listed}", extra
    )


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _check_link(
    name: str,
    value: list[Any],
    input_type: Any,
    options: dict[str, Any],
    workflow: Workflow,
    specs: Mapping[str, dict[str, Any]],
) -> dict[str, Any] | None:
    """A `[node_id, output_index]` input: the node exists and that output has the right type."""
    extra = {"input_name": name, "input_config": [input_type, options], "linked_node": value}
    if not _is_link(value):
        return _node_error(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            name,
            extra,
        )
    source = workflow.get(value[0])
    if source is None:
        return _node_error(
            "bad_linked_input", f"Linked node {value[0]} does not exist", name, extra
        )
    returned = specs[source["class_type"]].get("output") or []
    if not 0 <= value[1] < len(returned):
        return _node_error(
            "bad_linked_input", f"Linked node {value[0]} has no output {value[1]}", name, extra
        )
    received = returned[value[1]]
    if _types_match(received, input_type):
        return None
    return _node_error(
        "return_type_mismatch",
        "Return type mismatch between linked nodes",
        f"{name}, received_type({received}) mismatch input_type({input_type})",
        {**extra, "received_type": received},
    )


def _check_node(
    node: dict[str, Any], workflow: Workflow, specs: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    spec_inputs = specs[node["class_type"]].get("input") or {}
    inputs = node.get("inputs") or {}
    errors: list[dict[str, Any]] = []
    for category in ("required", "optional"):
        for name, spec in (spec_inputs.get(category) or {}).items():
            input_type, options = _spec_parts(spec)
            if name not in inputs:
                if category == "required":
                    errors.append(
                        _node_error(
                            "required_input_missing",
                            "Required input is missing",
                            name,
                            {"input_name": name},
                        )
                    )
                continue
            value = inputs[name]
            if isinstance(value, dict) and "__value__" in value:
                # ComfyUI's escape for a literal list, which would otherwise read as a link.
                error = _check_literal(name, value["__value__"], input_type, options)
            elif isinstance(value, list):
                error = _check_link(name, value, input_type, options, workflow, specs)
            else:
                error = _check_literal(name, value, input_type, options)
            if error is not None:
                errors.append(error)
    return errors


def _upstream(workflow: Workflow, node_id: str) -> set[str]:
    """The node and every node it reads from, directly or not."""
    seen: set[str] = set()
    pending = [node_id]
    while pending:
        current = pending.pop()
        if current in seen or current not in workflow:
            continue
        seen.add(current)
        for value in (workflow[current].get("inputs") or {}).values():
            if _is_link(value):
                pending.append(value[0])
    return seen


def _prompt_error(error_type: str, message: str, details: str = "") -> dict[str, Any]:
    return {"type": error_type, "message": message, "details": details, "extra_info": {}}


def _summary(node_errors: Mapping[str, Any]) -> str:
    """One line for a log or a job's error message from ComfyUI-shaped `node_errors`."""
    parts = []
    for node_id, entry in node_errors.items():
        errors = entry.get("errors") if isinstance(entry, dict) else None
        for error in errors if isinstance(errors, list) else []:
            if isinstance(error, dict):
                parts.append(
                    f"node {node_id} ({entry.get('class_type')}): "
                    f"{error.get('message')} ({error.get('details')})"
                )
    return "; ".join(parts)


def _snippet(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _decode(frame: str | bytes) -> tuple[str, dict[str, Any]] | None:
    """`(type, data)` of a websocket text frame; None for what we do not read."""
    if isinstance(frame, bytes):
        return None  # previews of sampler nodes: not part of the result
    try:
        message = json.loads(frame)
    except ValueError:
        logger.debug("ignoring a websocket frame that is not JSON: %s", _snippet(frame))
        return None
    if not isinstance(message, dict):
        return None
    kind, data = message.get("type"), message.get("data")
    if not isinstance(kind, str) or not isinstance(data, dict):
        return None
    return kind, data


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _execution_failed(prompt_id: str, data: Mapping[str, Any]) -> ExecutionFailed:
    node_id, node_type = _text(data.get("node_id")), _text(data.get("node_type"))
    exception_type = _text(data.get("exception_type"))
    exception_message = (_text(data.get("exception_message")) or "").strip()
    return ExecutionFailed(
        f"ComfyUI node {node_id} ({node_type}) failed: {exception_type}: {exception_message}",
        prompt_id=prompt_id,
        node_id=node_id,
        node_type=node_type,
        exception_type=exception_type,
        exception_message=exception_message,
    )


def _interrupted(prompt_id: str, data: Mapping[str, Any]) -> ExecutionCancelled:
    return ExecutionCancelled(
        f"ComfyUI interrupted prompt {prompt_id} at node {data.get('node_id')} "
        f"({data.get('node_type')})"
    )


def _outcome(prompt_id: str, entry: Mapping[str, Any]) -> PromptResult:
    """The result of a history entry, or the error it ended with."""
    status = entry.get("status")
    if isinstance(status, dict) and status.get("status_str") == "error":
        for message in reversed(status.get("messages") or []):
            if not (isinstance(message, list) and len(message) == 2):
                continue
            kind, data = message
            if kind == "execution_error" and isinstance(data, dict):
                raise _execution_failed(prompt_id, data)
            if kind == "execution_interrupted" and isinstance(data, dict):
                raise _interrupted(prompt_id, data)
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


@cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for all clients: building one costs ~20 ms, per worker task run."""
    return httpx.create_ssl_context()


class ComfyUIClient:
    """One ComfyUI host over HTTP and its websocket.

    Every failure leaves as a `ComfyUIError`: transport errors, timeouts, 5xx and malformed
    answers as `ComfyUIUnavailable`; other 4xx as a permanent `ComfyUIError`. Bound to the event
    loop it is used on (httpx pools connections per loop): make one per `asyncio.run`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        request_timeout: float = 30.0,
        poll_interval: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=request_timeout,
            transport=transport,
            verify=_tls_context(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- HTTP plumbing

    async def _request(
        self, method: str, route: str, *, handled: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx.Response:
        """Send one request; statuses in `handled` are left to the caller."""
        where = f"{method} {self.base_url}{route}"
        try:
            response = await self._http.request(method, route, **kwargs)
        except httpx.TimeoutException as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI timed out on {where} ({type(exc).__name__}, "
                f"limit {self.request_timeout}s)"
            ) from exc
        except httpx.HTTPError as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI unreachable on {where}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status_code in handled:
            return response
        if response.is_server_error:
            raise ComfyUIUnavailable(
                f"ComfyUI answered {response.status_code} to {where}: {_snippet(response.text)}"
            )
        if response.is_client_error:
            raise ComfyUIError(
                f"ComfyUI answered {response.status_code} to {where}: {_snippet(response.text)}"
            )
        return response

    def _json(self, response: httpx.Response, expected: type) -> Any:
        """The JSON body, checked to be of the `expected` type."""
        where = f"{response.request.method} {response.request.url}"
        try:
            body = response.json()
        except ValueError as exc:
            raise ComfyUIUnavailable(
                f"malformed answer from ComfyUI to {where}: {_snippet(response.text)}"
            ) from exc
        if not isinstance(body, expected):
            raise ComfyUIUnavailable(
                f"unexpected answer from ComfyUI to {where}: "
                f"{type(body).__name__} instead of {expected.__name__}"
            )
        return body

    async def _get_json(self, route: str, expected: type, **kwargs: Any) -> Any:
        return self._json(await self._request("GET", route, **kwargs), expected)

    # --- Host information

    async def system_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._get_json("/system_stats", dict)
        return stats

    async def health(self) -> ComfyUIHealth:
        """Never raises: a failure is reported as `ok=False` with the reason."""
        try:
            stats = await self.system_stats()
        except ComfyUIError as exc:
            return ComfyUIHealth(ok=False, error=str(exc))
        system = stats.get("system")
        devices = stats.get("devices")
        return ComfyUIHealth(
            ok=True,
            version=_text(system.get("comfyui_version")) if isinstance(system, dict) else None,
            devices=[
                str(device.get("name"))
                for device in (devices if isinstance(devices, list) else [])
                if isinstance(device, dict)
            ],
        )

    async def object_info(self, class_type: str) -> dict[str, Any] | None:
        """The spec of one node class, or None when the host lacks it.

        Per class on purpose: the full `/object_info` is about 500 KB.
        """
        body = await self._get_json(f"/object_info/{quote(class_type, safe='')}", dict)
        spec = body.get(class_type)
        return spec if isinstance(spec, dict) else None

    async def upscale_models(self) -> list[str]:
        models = await self._get_json("/models/upscale_models", list)
        return [model for model in models if isinstance(model, str)]

    # --- Inputs and outputs

    async def upload_image(
        self, data: bytes, filename: str, subfolder: str = "", *, overwrite: bool = True
    ) -> UploadedImage:
        """Upload into ComfyUI's input folder; use the returned name, ComfyUI may rename."""
        response = await self._request(
            "POST",
            "/upload/image",
            files={"image": (filename, data)},
            data={
                "subfolder": subfolder,
                "type": "input",
                "overwrite": "true" if overwrite else "false",
            },
        )
        body = self._json(response, dict)
        if not isinstance(body.get("name"), str):
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered the upload without a name: {body}"
            )
        return UploadedImage(
            name=body["name"],
            subfolder=str(body.get("subfolder", "")),
            type=str(body.get("type", "input")),
        )

    async def view(self, output: OutputImage) -> bytes:
        response = await self._request(
            "GET",
            "/view",
            params={
                "filename": output.filename,
                "subfolder": output.subfolder,
                "type": output.type,
            },
        )
        return response.content

    # --- Validation

    async def validate(self, workflow: Workflow) -> None:
        """Check the graph against this host's `/object_info` before submitting it.

        ComfyUI accepts bad values for V3 combo inputs (blend modes, model names) and only fails
        at run time; this catches them, and missing classes, inputs and ranges, up front.
        Raises `WorkflowRejected` shaped like ComfyUI's own 400 answer.
        """
        for node_id, node in workflow.items():
            if not isinstance(node.get("class_type"), str):
                raise WorkflowRejected(
                    f"node {node_id} has no class_type",
                    error=_prompt_error(
                        "invalid_prompt",
                        "Cannot execute because a node is missing the class_type property.",
                        f"Node ID '#{node_id}'",
                    ),
                )
        specs: dict[str, dict[str, Any]] = {}
        for node_id, node in workflow.items():
            class_type = node["class_type"]
            if class_type in specs:
                continue
            spec = await self.object_info(class_type)
            if spec is None:
                raise WorkflowRejected(
                    f"ComfyUI at {self.base_url} has no node class {class_type}",
                    error=_prompt_error(
                        "invalid_prompt",
                        f"Cannot execute because node {class_type} does not exist.",
                        f"Node ID '#{node_id}'",
                    ),
                )
            specs[class_type] = spec
        outputs = [
            node_id
            for node_id, node in workflow.items()
            if specs[node["class_type"]].get("output_node") is True
        ]
        if not outputs:
            raise WorkflowRejected(
                "the workflow has no output node",
                error=_prompt_error("prompt_no_outputs", "Prompt has no outputs"),
            )
        upstream = {output: _upstream(workflow, output) for output in outputs}
        node_errors: dict[str, Any] = {}
        for node_id, node in workflow.items():
            errors = _check_node(node, workflow, specs)
            if errors:
                node_errors[node_id] = {
                    "errors": errors,
                    "dependent_outputs": [o for o in outputs if node_id in upstream[o]],
                    "class_type": node["class_type"],
                }
        if node_errors:
            raise WorkflowRejected(
                f"workflow failed validation: {_summary(node_errors)}",
                error=_prompt_error(
                    "prompt_outputs_failed_validation", "Prompt outputs failed validation"
                ),
                node_errors=node_errors,
            )

    # --- Prompts

    async def submit(
        self, workflow: Workflow, client_id: str, *, prompt_id: str | None = None
    ) -> str:
        """Queue the graph; events for it go to the websocket opened with `client_id`."""
        payload: dict[str, Any] = {"prompt": workflow, "client_id": client_id}
        if prompt_id is not None:
            payload["prompt_id"] = prompt_id
        response = await self._request("POST", "/prompt", json=payload, handled=(400,))
        if response.status_code == 400:
            raise self._rejection(response)
        body = self._json(response, dict)
        queued = body.get("prompt_id")
        if not isinstance(queued, str):
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} answered POST /prompt without a prompt_id: {body}"
            )
        logger.info("queued prompt %s on %s", queued, self.base_url)
        return queued

    def _rejection(self, response: httpx.Response) -> WorkflowRejected:
        """ComfyUI's 400 answer to POST /prompt, carrying its `error` and `node_errors`."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return WorkflowRejected(f"ComfyUI rejected the prompt: {_snippet(response.text)}")
        error, node_errors = body.get("error"), body.get("node_errors")
        error = error if isinstance(error, dict) else {}
        node_errors = node_errors if isinstance(node_errors, dict) else {}
        message = f"ComfyUI rejected the prompt: {error.get('message', 'no reason given')}"
        if error.get("details"):
            message += f" ({error['details']})"
        summary = _summary(node_errors)
        if summary:
            message += f": {summary}"
        return WorkflowRejected(message, error=error, node_errors=node_errors)

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of a finished prompt; None while it is queued or running."""
        body = await self._get_json(f"/history/{quote(prompt_id, safe='')}", dict)
        entry = body.get(prompt_id)
        return entry if isinstance(entry, dict) else None

    async def queued_prompt_ids(self) -> set[str]:
        """Ids of the prompts running or waiting (queue items are `[number, id, graph, ...]`)."""
        body = await self._get_json("/queue", dict)
        return {
            item[1]
            for key in ("queue_running", "queue_pending")
            for item in (body.get(key) if isinstance(body.get(key), list) else [])
            if isinstance(item, list) and len(item) > 1 and isinstance(item[1], str)
        }

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt `prompt_id` if it is running (a no-op otherwise); without an id, whatever runs.

        Cooperative: ComfyUI stops at the next node boundary or progress step.
        """
        body = {"prompt_id": prompt_id} if prompt_id is not None else None
        await self._request("POST", "/interrupt", json=body)

    async def delete_from_queue(self, prompt_ids: Iterable[str]) -> None:
        """Drop prompts that are still waiting; running ones are untouched."""
        await self._request("POST", "/queue", json={"delete": list(prompt_ids)})

    # --- Running a prompt

    async def run(
        self,
        workflow: Workflow,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> PromptResult:
        """Submit the graph and follow it to its end.

        Follows the websocket (opened before submitting, so that ComfyUI routes the prompt's
        events to it) and falls back to polling `/history` when the socket cannot be opened or
        drops. When `timeout` passes or `cancel` is set, the prompt is removed from the queue and
        interrupted, then `ComfyUITimeout` / `ExecutionCancelled` is raised; when the calling
        task is cancelled, the same clean-up happens before the cancellation goes on.
        """
        client_id = uuid4().hex
        progress = _Progress(workflow, on_progress)
        ws = await self._open_ws(client_id)
        try:
            if cancel is not None and cancel.is_set():
                raise ExecutionCancelled("cancelled before the prompt was submitted")
            # Our own prompt id: known even if the answer to POST /prompt never arrives.
            prompt_id = await self.submit(workflow, client_id, prompt_id=str(uuid4()))
            result = await self._wait(prompt_id, ws, progress, cancel, timeout)
        finally:
            if ws is not None:
                await ws.close()
        progress.done()
        return result

    def _ws_url(self, client_id: str) -> str:
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        return urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", f"clientId={client_id}", ""))

    async def _open_ws(self, client_id: str) -> ClientConnection | None:
        url = self._ws_url(client_id)
        try:
            return await connect(
                url,
                open_timeout=self.request_timeout,
                close_timeout=_WS_CLOSE_TIMEOUT,
                max_size=WS_MAX_MESSAGE_BYTES,
                # The socket lives for one prompt, whose events are few. A bounded queue stops
                # reading from the network once we stop consuming (error, timeout), so close()
                # would wait out its timeout for a close frame it cannot read.
                max_queue=None,
            )
        except (OSError, WebSocketException) as exc:
            logger.warning("cannot open %s (%s); will poll /history instead", url, exc)
            return None

    async def _wait(
        self,
        prompt_id: str,
        ws: ClientConnection | None,
        progress: _Progress,
        cancel: asyncio.Event | None,
        timeout: float | None,
    ) -> PromptResult:
        follow = asyncio.create_task(self._follow(prompt_id, ws, progress))
        cancelled = asyncio.create_task(cancel.wait()) if cancel is not None else None
        waiters: set[asyncio.Task[Any]] = {follow} if cancelled is None else {follow, cancelled}
        try:
            done, pending = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await _cancel_tasks(waiters)
            await self._stop(prompt_id, "the task running it was cancelled")
            raise
        await _cancel_tasks(pending)
        if follow in done:
            return follow.result()
        if cancelled in done:
            await self._stop(prompt_id, "the job was cancelled")
            raise ExecutionCancelled(f"prompt {prompt_id} was cancelled and interrupted")
        await self._stop(prompt_id, f"it did not finish within {timeout}s")
        raise ComfyUITimeout(
            f"prompt {prompt_id} did not finish within {timeout}s on {self.base_url}; interrupted"
        )

    async def _stop(self, prompt_id: str, why: str) -> None:
        """Best effort: drop the prompt if it still waits, interrupt it if it runs.

        In this order, so that a prompt starting between the two requests is still interrupted.
        """
        logger.warning("stopping prompt %s on %s: %s", prompt_id, self.base_url, why)
        try:
            await self.delete_from_queue([prompt_id])
            await self.interrupt(prompt_id)
        except ComfyUIError as exc:
            logger.warning("could not stop prompt %s: %s", prompt_id, exc)

    async def _follow(
        self, prompt_id: str, ws: ClientConnection | None, progress: _Progress
    ) -> PromptResult:
        if ws is not None:
            await self._watch(ws, prompt_id, progress)
        # After the final `executing` the history entry exists, so the first poll answers.
        return await self._poll(prompt_id)

    async def _watch(self, ws: ClientConnection, prompt_id: str, progress: _Progress) -> None:
        """Read events until the prompt's final `executing` (node null) or until the socket drops.

        Raises on `execution_error` and `execution_interrupted`.
        """
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed as exc:
                logger.warning(
                    "websocket to %s closed while prompt %s ran (%s); polling /history instead",
                    self.base_url,
                    prompt_id,
                    exc,
                )
                return
            message = _decode(frame)
            if message is None:
                continue
            kind, data = message
            if data.get("prompt_id") != prompt_id:
                continue  # `status` broadcasts and other prompts
            if kind == "executing":
                if data.get("node") is None:
                    return
                progress.executing(str(data["node"]))
            elif kind == "execution_cached":
                nodes = data.get("nodes")
                progress.cached(str(node) for node in (nodes if isinstance(nodes, list) else []))
            elif kind == "progress":
                progress.step(
                    str(data.get("node")), _number(data.get("value")), _number(data.get("max"))
                )
            elif kind == "progress_state":
                nodes = data.get("nodes")
                progress.states(nodes if isinstance(nodes, dict) else {})
            elif kind == "execution_error":
                raise _execution_failed(prompt_id, data)
            elif kind == "execution_interrupted":
                raise _interrupted(prompt_id, data)

    async def _poll(self, prompt_id: str) -> PromptResult:
        """Poll `/history` until the prompt has an entry (`{}` means not finished)."""
        while True:
            entry = await self.history(prompt_id)
            if entry is None and prompt_id not in await self.queued_prompt_ids():
                # It may have finished between the two requests; if not, it is gone.
                entry = await self.history(prompt_id)
                if entry is None:
                    raise ComfyUIUnavailable(
                        f"prompt {prompt_id} is neither queued nor in the history of "
                        f"{self.base_url}: ComfyUI was restarted or the prompt was deleted"
                    )
            if entry is not None:
                return _outcome(prompt_id, entry)
            await asyncio.sleep(self.poll_interval)


async def _cancel_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _image_size(data: bytes, prompt_id: str) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ExecutionFailed(
            f"the output of prompt {prompt_id} is not a readable image: {exc}",
            prompt_id=prompt_id,
        ) from exc


class ComfyUIService:
    """The restoration step the worker calls: one job's image in, the restored image out.

    Holds one client, so it belongs to the event loop it is used on: build it inside that loop
    (per `asyncio.run` in the worker, per app lifespan in the API) and `aclose()` it there.
    """

    def __init__(self, client: ComfyUIClient, *, job_timeout: float = 600.0) -> None:
        self.client = client
        self.job_timeout = job_timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        client = ComfyUIClient(
            settings.comfyui_url,
            request_timeout=settings.comfyui_request_timeout_seconds,
            poll_interval=settings.comfyui_poll_interval_seconds,
        )
        return cls(client, job_timeout=settings.comfyui_job_timeout_seconds)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def health(self) -> ComfyUIHealth:
        return await self.client.health()

    async def interrupt(self, prompt_id: str | None = None) -> None:
        await self.client.interrupt(prompt_id)

    async def restore(
        self,
        *,
        job_id: UUID,
        attempt: int,
        image: bytes,
        extension: str,
        workflow: WorkflowName,
        scale: float,
        upscale_model: str,
        on_progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
        timeout: float | None = None,
    ) -> RestoredImage:
        """Run one job's image through the workflow and return the result.

        The output prefix is unique per job and attempt: ComfyUI answers an identical graph with
        its cached, earlier output. `timeout` (default: the service's job timeout) bounds the run
        from submission to the end of execution.
        """
        client = self.client
        uploaded = await client.upload_image(
            image, f"input.{extension.lstrip('.').lower()}", f"jobs/{job_id}", overwrite=True
        )
        try:
            graph = build_workflow(
                workflow,
                image=uploaded.load_image_value,
                output_prefix=f"restored/{job_id}/a{attempt}",
                scale=scale,
                upscale_model=upscale_model,
            )
            save_node = output_node(graph)
        except WorkflowError as exc:
            raise WorkflowRejected(f"workflow {workflow.value} is unusable: {exc}") from exc
        await client.validate(graph)
        result = await client.run(
            graph,
            on_progress=on_progress,
            cancel=cancel,
            timeout=self.job_timeout if timeout is None else timeout,
        )
        images = result.outputs.get(save_node)
        if not images:
            raise ExecutionFailed(
                f"prompt {result.prompt_id} finished without an image from node {save_node}",
                prompt_id=result.prompt_id,
            )
        data = await client.view(images[0])
        width, height = _image_size(data, result.prompt_id)
        logger.info(
            "job %s attempt %s restored by prompt %s: %dx%d, %d bytes",
            job_id,
            attempt,
            result.prompt_id,
            width,
            height,
            len(data),
        )
        return RestoredImage(data=data, width=width, height=height, prompt_id=result.prompt_id)
