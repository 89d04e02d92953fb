"""The values the client and the service hand out."""

from collections.abc import Callable
from dataclasses import dataclass, field


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
