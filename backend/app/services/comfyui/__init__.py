"""ComfyUI integration: an async HTTP + websocket client and the restoration service built on it.

Facts this package relies on (observed on ComfyUI 0.3.64):
- per-prompt events reach only the websocket whose `clientId` equals the prompt's `client_id`,
  so the socket is opened *before* submitting;
- the history entry appears only after the final `executing` message with `node: null`;
- identical graphs are cached and answer with the old output, hence a unique `filename_prefix`
  per job and attempt;
- V3 COMBO inputs are not validated at submit, hence the client-side check against `/object_info`.

Layout: `errors` (typed failures), `models` (values handed out), `validation` (a workflow against
node specs, pure), `messages` (websocket frames, history entries, progress), `client`
(`ComfyUIClient`, HTTP + websocket), `service` (`ComfyUIService`, one job's restoration).
"""

from app.services.comfyui.client import ComfyUIClient
from app.services.comfyui.errors import (
    ComfyUIError,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ExecutionCancelled,
    ExecutionFailed,
    WorkflowRejected,
)
from app.services.comfyui.models import (
    ComfyUIHealth,
    OutputImage,
    ProgressCallback,
    PromptResult,
    RestoredImage,
    UploadedImage,
)
from app.services.comfyui.service import ComfyUIService, attempt_prompt_id
from app.services.comfyui.validation import check_workflow

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIHealth",
    "ComfyUIService",
    "ComfyUITimeout",
    "ComfyUIUnavailable",
    "ExecutionCancelled",
    "ExecutionFailed",
    "OutputImage",
    "ProgressCallback",
    "PromptResult",
    "RestoredImage",
    "UploadedImage",
    "WorkflowRejected",
    "attempt_prompt_id",
    "check_workflow",
]
