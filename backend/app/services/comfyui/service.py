"""`ComfyUIService`: the restoration step the worker calls, one job's image in, the restored image out."""

import asyncio
import io
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import Self
from uuid import UUID, uuid5

from PIL import Image

from app.core import timing
from app.core.config import Settings, WorkflowName
from app.services.comfyui.client import ComfyUIClient
from app.services.comfyui.errors import ExecutionFailed, WorkflowRejected
from app.services.comfyui.models import ComfyUIHealth, ProgressCallback, RestoredImage
from app.workflows import NodeInputs, WorkflowError, build_workflow, output_node

logger = logging.getLogger(__name__)


def attempt_prompt_id(job_id: UUID, attempt: int) -> str:
    """The prompt id of one attempt at a job: known to every later attempt, which can then stop
    or reuse it (a worker that died leaves its prompt on ComfyUI)."""
    return str(uuid5(job_id, f"attempt-{attempt}"))


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
    """Restores one job's image with the workflow's host-wide parameters.

    What is the same for every job (scale, upscale model, time limit) is fixed when the service is
    built (`from_settings`); `restore` takes only what differs per job. `workflow_inputs` sets node
    inputs of a workflow on top of that (`build_workflow`'s `inputs`). Holds one client, so it
    belongs to the event loop it is used on: build it for that loop (the worker process's loop,
    the app's lifespan in the API) and `aclose()` it there.
    """

    def __init__(
        self,
        client: ComfyUIClient,
        *,
        scale: float = 2.0,
        upscale_model: str = "tiny_compact_x2.safetensors",
        timeout: float = 600.0,
        workflow_inputs: Mapping[WorkflowName, NodeInputs] | None = None,
    ) -> None:
        self.client = client
        self.scale = scale
        self.upscale_model = upscale_model
        self.timeout = timeout
        self.workflow_inputs = dict(workflow_inputs or {})

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> Self:
        """The service for `url`, one of the hosts in settings (default: the first)."""
        client = ComfyUIClient(
            url or settings.comfyui_hosts[0],
            request_timeout=settings.comfyui_request_timeout_seconds,
            poll_interval=settings.comfyui_poll_interval_seconds,
            spec_recheck_interval=settings.comfyui_spec_recheck_seconds,
            ws_silence=settings.comfyui_ws_silence_seconds,
        )
        return cls(
            client,
            scale=settings.comfyui_scale,
            upscale_model=settings.comfyui_upscale_model,
            timeout=settings.comfyui_job_timeout_seconds,
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
        await self.client.aclose()

    async def health(self) -> ComfyUIHealth:
        return await self.client.health()

    async def restore(
        self,
        *,
        job_id: UUID,
        attempt: int,
        image: bytes,
        extension: str,
        workflow: WorkflowName,
        on_progress: ProgressCallback | None = None,
        cancel: asyncio.Event | None = None,
    ) -> RestoredImage:
        """Run one job's image through the workflow and return the result.

        The output prefix is unique per job and attempt: ComfyUI answers an identical graph with
        its cached, earlier output. The service's `timeout` bounds the run from submission to the
        end of execution. One effect per job: earlier attempts' prompts still queued or running are
        stopped, and one that finished well is used instead of running the graph again.
        """
        client = self.client
        earlier = [attempt_prompt_id(job_id, n) for n in range(1, attempt)]
        if (timings := timing.current()) is not None:
            timings.attempt = attempt
        with timing.stage(timing.COMFYUI_UPLOAD):
            uploaded = await client.upload_image(
                image, f"input.{extension.lstrip('.').lower()}", f"jobs/{job_id}", overwrite=True
            )
        try:
            graph = build_workflow(
                workflow,
                image=uploaded.load_image_value,
                output_prefix=f"restored/{job_id}/a{attempt}",
                scale=self.scale,
                upscale_model=self.upscale_model,
                inputs=self.workflow_inputs.get(workflow),
            )
            save_node = output_node(graph)
        except WorkflowError as exc:
            raise WorkflowRejected(f"workflow {workflow.value} is unusable: {exc}") from exc
        result = await client.settle(earlier)
        if result is None or not result.outputs.get(save_node):
            with timing.stage(timing.COMFYUI_VALIDATE):
                await client.validate(graph)
            with timing.stage(timing.COMFYUI_EXECUTION):
                result = await client.run(
                    graph,
                    on_progress=on_progress,
                    cancel=cancel,
                    timeout=self.timeout,
                    prompt_id=attempt_prompt_id(job_id, attempt),
                )
        else:
            logger.info("job %s attempt %s reuses prompt %s", job_id, attempt, result.prompt_id)
        images = result.outputs.get(save_node)
        if not images:
            raise ExecutionFailed(
                f"prompt {result.prompt_id} finished without an image from node {save_node}",
                prompt_id=result.prompt_id,
            )
        with timing.stage(timing.COMFYUI_VIEW):
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
