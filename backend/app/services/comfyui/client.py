"""`ComfyUIClient`: one ComfyUI host over HTTP and its websocket."""

import asyncio
import logging
import ssl
import time
from collections.abc import Iterable
from functools import cache
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit
from uuid import uuid4

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from app.services.comfyui.errors import (
    ComfyUIError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ExecutionCancelled,
    WorkflowRejected,
)
from app.services.comfyui.messages import (
    ProgressTracker,
    decode_frame,
    execution_failed,
    history_outcome,
    interrupted,
    number,
    snippet,
    text_or_none,
)
from app.services.comfyui.models import (
    ComfyUIHealth,
    OutputImage,
    ProgressCallback,
    PromptResult,
    UploadedImage,
)
from app.services.comfyui.validation import check_workflow, node_classes, summarize_node_errors
from app.workflows import Workflow

logger = logging.getLogger(__name__)

# An `execution_error` carries tracebacks and tensor reprs of the failing node's inputs.
WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Closing waits this long for the server's close frame.
_WS_CLOSE_TIMEOUT = 2.0


@cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for all clients: building one costs ~20 ms, per worker task run."""
    return httpx.create_ssl_context()


class ComfyUIClient:
    """One ComfyUI host over HTTP and its websocket.

    Every failure leaves as a `ComfyUIError`: transport errors, timeouts, 5xx and malformed
    answers as `ComfyUIUnavailable`; other 4xx as a permanent `ComfyUIError`. Bound to the event
    loop it is used on (httpx pools connections per loop): the worker's lives on its process's loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        request_timeout: float = 30.0,
        poll_interval: float = 1.0,
        spec_recheck_interval: float = 30.0,
        ws_silence: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.request_timeout = request_timeout
        self.poll_interval = poll_interval
        # Node specs of this host, by class (see `validate`), and what they were fetched under.
        self.spec_recheck_interval = spec_recheck_interval
        self._specs: dict[str, dict[str, Any]] = {}
        self._specs_host: tuple[str | None, tuple[str, ...] | None] | None = None
        self._specs_checked_at = time.monotonic()
        # A socket silent this long while the prompt runs: ask /history whether it finished.
        self.ws_silence = ws_silence
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
                f"ComfyUI answered {response.status_code} to {where}: {snippet(response.text)}"
            )
        if response.is_client_error:
            raise ComfyUIError(
                f"ComfyUI answered {response.status_code} to {where}: {snippet(response.text)}"
            )
        return response

    def _json(self, response: httpx.Response, expected: type) -> Any:
        """The JSON body, checked to be of the `expected` type."""
        where = f"{response.request.method} {response.request.url}"
        try:
            body = response.json()
        except ValueError as exc:
            raise ComfyUIUnavailable(
                f"malformed answer from ComfyUI to {where}: {snippet(response.text)}"
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
            version=text_or_none(system.get("comfyui_version"))
            if isinstance(system, dict)
            else None,
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
        """Check the graph against this host's node specs before submitting it.

        Fetches one `/object_info` per class (the full one is about 500 KB), stopping at the first
        class the host lacks, then runs `check_workflow`. Raises `WorkflowRejected`.

        Specs are kept for the next jobs: fetching them cost more than the rest of a job's
        overhead. They are dropped when a graph fails validation (after one more try with fresh
        specs, if cached ones were used), when ComfyUI rejects a prompt, and when the host's
        version or upscale models change (checked every `spec_recheck_interval` seconds).
        """
        await self._recheck_specs()
        cached = any(class_type in self._specs for class_type in node_classes(workflow))
        try:
            check_workflow(workflow, await self._node_specs(workflow))
        except WorkflowRejected:
            self.forget_specs()
            if not cached:
                raise
            check_workflow(workflow, await self._node_specs(workflow))

    async def _node_specs(self, workflow: Workflow) -> dict[str, dict[str, Any]]:
        specs: dict[str, dict[str, Any]] = {}
        for class_type in node_classes(workflow):
            spec = self._specs.get(class_type)
            if spec is None:
                spec = await self.object_info(class_type)
                if spec is None:
                    break  # check_workflow names it
                self._specs[class_type] = spec
            specs[class_type] = spec
        return specs

    def forget_specs(self) -> None:
        self._specs.clear()

    async def _recheck_specs(self) -> None:
        """Drop the specs if the host's version or model list changed since the last check.

        A first check has nothing to compare with, so it drops them too: at most one refetch.
        """
        if (
            not self._specs
            or time.monotonic() - self._specs_checked_at < self.spec_recheck_interval
        ):
            return
        stats = await self.system_stats()
        system = stats.get("system")
        version = text_or_none(system.get("comfyui_version")) if isinstance(system, dict) else None
        try:
            models: tuple[str, ...] | None = tuple(sorted(await self.upscale_models()))
        except ComfyUIError:  # hosts without the /models route
            models = None
        host = (version, models)
        if host != self._specs_host:
            logger.info("node specs of %s dropped: the host is now %s", self.base_url, host)
            self.forget_specs()
        self._specs_host, self._specs_checked_at = host, time.monotonic()

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
            self.forget_specs()  # they may be why our own validation let this graph through
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
            return WorkflowRejected(f"ComfyUI rejected the prompt: {snippet(response.text)}")
        error, node_errors = body.get("error"), body.get("node_errors")
        error = error if isinstance(error, dict) else {}
        node_errors = node_errors if isinstance(node_errors, dict) else {}
        message = f"ComfyUI rejected the prompt: {error.get('message', 'no reason given')}"
        if error.get("details"):
            message += f" ({error['details']})"
        summary = summarize_node_errors(node_errors)
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

    async def queue_length(self) -> int:
        """Prompts running or waiting on this host."""
        body = await self._get_json("/queue", dict)
        return sum(
            len(items)
            for key in ("queue_running", "queue_pending")
            if isinstance(items := body.get(key), list)
        )

    async def interrupt(self, prompt_id: str | None = None) -> None:
        """Interrupt `prompt_id` if it is running (a no-op otherwise); without an id, whatever runs.

        Cooperative: ComfyUI stops at the next node boundary or progress step.
        """
        body = {"prompt_id": prompt_id} if prompt_id is not None else None
        await self._request("POST", "/interrupt", json=body)

    async def delete_from_queue(self, prompt_ids: Iterable[str]) -> None:
        """Drop prompts that are still waiting; running ones are untouched."""
        await self._request("POST", "/queue", json={"delete": list(prompt_ids)})

    async def settle(self, prompt_ids: list[str]) -> PromptResult | None:
        """Deal with the prompts of earlier attempts before a new one: stop those still queued or
        running, and return the result of the latest one that finished well, if any.

        Stopping first, so that one finishing meanwhile is found in the history after.
        """
        if not prompt_ids:
            return None
        queued = await self.queued_prompt_ids()
        live = [prompt_id for prompt_id in prompt_ids if prompt_id in queued]
        for prompt_id in live:
            await self._stop(prompt_id, "a newer attempt of its job starts")
        for prompt_id in reversed(prompt_ids):
            entry = await self.history(prompt_id)
            if entry is None:
                continue
            try:
                return history_outcome(prompt_id, entry)
            except ComfyUIError:  # it failed or was interrupted: nothing to reuse
                continue
        return None

    # --- Running a prompt

    async def run(
        self,
        workflow: Workflow,
        *,
        on_progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
        timeout: float | None = None,
        prompt_id: str | None = None,
    ) -> PromptResult:
        """Submit the graph (as `prompt_id`, else a fresh id) and follow it to its end.

        Follows the websocket (opened before submitting, so that ComfyUI routes the prompt's
        events to it) and falls back to polling `/history` when the socket cannot be opened or
        drops. When `timeout` passes or `cancel` is set, the prompt is removed from the queue and
        interrupted, then `ComfyUITimeout` / `ExecutionCancelled` is raised; when the calling
        task is cancelled, the same clean-up happens before the cancellation goes on.
        """
        client_id = uuid4().hex
        progress = ProgressTracker(workflow, on_progress)
        ws = await self._open_ws(client_id)
        try:
            if cancel is not None and cancel.is_set():
                raise ExecutionCancelled("cancelled before the prompt was submitted")
            # Our own prompt id: known even if the answer to POST /prompt never arrives.
            prompt_id = await self.submit(workflow, client_id, prompt_id=prompt_id or str(uuid4()))
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
        progress: ProgressTracker,
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
        self, prompt_id: str, ws: ClientConnection | None, progress: ProgressTracker
    ) -> PromptResult:
        if ws is not None:
            await self._watch(ws, prompt_id, progress)
        # After the final `executing` the history entry exists, so the first poll answers.
        return await self._poll(prompt_id)

    async def _watch(self, ws: ClientConnection, prompt_id: str, progress: ProgressTracker) -> None:
        """Read events until the prompt's final `executing` (node null), until the socket drops,
        or until a silence of `ws_silence` seconds finds the prompt over (finished, or gone).

        Raises on `execution_error` and `execution_interrupted`.
        """
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancel that
                # lands as a frame arrives, and a cancelled job would then follow its prompt to
                # the end instead of interrupting it.
                async with asyncio.timeout(self.ws_silence):
                    frame = await ws.recv()
            except TimeoutError:
                # Sockets can stay open and go quiet (a proxy, a ComfyUI bug): ask the history.
                if await self._over(prompt_id):
                    logger.warning(
                        "websocket to %s silent for %gs while prompt %s ended; reading /history",
                        self.base_url,
                        self.ws_silence,
                        prompt_id,
                    )
                    return
                continue
            except ConnectionClosed as exc:
                logger.warning(
                    "websocket to %s closed while prompt %s ran (%s); polling /history instead",
                    self.base_url,
                    prompt_id,
                    exc,
                )
                return
            message = decode_frame(frame)
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
                    str(data.get("node")), number(data.get("value")), number(data.get("max"))
                )
            elif kind == "progress_state":
                nodes = data.get("nodes")
                progress.states(nodes if isinstance(nodes, dict) else {})
            elif kind == "execution_error":
                raise execution_failed(prompt_id, data)
            elif kind == "execution_interrupted":
                raise interrupted(prompt_id, data)

    async def _over(self, prompt_id: str) -> bool:
        """Whether the prompt has a history entry or is no longer queued (`_poll` then tells)."""
        if await self.history(prompt_id) is not None:
            return True
        return prompt_id not in await self.queued_prompt_ids()

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
                return history_outcome(prompt_id, entry)
            await asyncio.sleep(self.poll_interval)


async def _cancel_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
