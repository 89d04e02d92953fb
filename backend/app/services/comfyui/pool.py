"""`ComfyUIPool`: several ComfyUI hosts behind the one `restore` the worker calls.

For users who outgrow one GPU machine (`COMFYUI_URLS`). Each job goes to a healthy host with the
shortest queue (`GET /queue`: running + pending prompts; a host that does not answer is not
healthy). A host that stops answering during a job (`ComfyUIUnavailable`: refused, reset, 5xx,
gone from under its prompt) is taken out of rotation for `retry_after` seconds, and the job is
tried again at once on another host; when none is left, the error goes to the task, which retries
the job later. After `retry_after` a host is asked again and rejoins if it answers.

Each host keeps its own `ComfyUIService` (its client, connection pool and node-spec cache).
"""

import asyncio
import itertools
import logging
import random
import time
from uuid import UUID

from app.core.config import Settings, WorkflowName
from app.services.comfyui.errors import ComfyUIError, ComfyUIUnavailable
from app.services.comfyui.models import ComfyUIHealth, ProgressCallback, RestoredImage
from app.services.comfyui.service import ComfyUIService

logger = logging.getLogger(__name__)


class ComfyUIPool:
    def __init__(self, services: list[ComfyUIService], *, retry_after: float = 10.0) -> None:
        if not services:
            raise ValueError("a ComfyUI pool needs at least one host")
        self.services = services
        self.retry_after = retry_after
        self._down_until: dict[str, float] = {}
        # Ties go round-robin from a random start, so that workers that ask at the same moment
        # and see the same queues spread over the hosts instead of all picking the first.
        self._turn = itertools.count(random.randrange(len(services)))  # noqa: S311

    @classmethod
    def from_settings(cls, settings: Settings) -> "ComfyUIPool":
        return cls(
            [ComfyUIService.from_settings(settings, url) for url in settings.comfyui_hosts],
            retry_after=settings.comfyui_host_retry_seconds,
        )

    async def aclose(self) -> None:
        for service in self.services:
            await service.aclose()

    def _url(self, service: ComfyUIService) -> str:
        return service.client.base_url

    def in_rotation(self) -> list[ComfyUIService]:
        now = time.monotonic()
        return [s for s in self.services if self._down_until.get(self._url(s), 0.0) <= now]

    def take_out(self, service: ComfyUIService, reason: object) -> None:
        self._down_until[self._url(service)] = time.monotonic() + self.retry_after
        logger.warning(
            "ComfyUI at %s taken out of rotation for %g s: %s",
            self._url(service),
            self.retry_after,
            reason,
        )

    async def _queue_length(self, service: ComfyUIService) -> int | None:
        try:
            return await service.client.queue_length()
        except ComfyUIError as error:
            self.take_out(service, error)
            return None

    async def choose(self, exclude: frozenset[str] = frozenset()) -> ComfyUIService | None:
        """A healthy host with the shortest queue, or None when no host answers."""
        candidates = [s for s in self.in_rotation() if self._url(s) not in exclude]
        if not candidates:
            return None
        lengths = await asyncio.gather(*(self._queue_length(s) for s in candidates))
        answered = [(n, s) for n, s in zip(lengths, candidates, strict=True) if n is not None]
        if not answered:
            return None
        shortest = min(n for n, _ in answered)
        tied = [s for n, s in answered if n == shortest]
        return tied[next(self._turn) % len(tied)]

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
        tried: set[str] = set()
        while True:
            service = await self.choose(frozenset(tried))
            if service is None:
                where = ", ".join(self._url(s) for s in self.services)
                raise ComfyUIUnavailable(f"no ComfyUI host answers ({where})")
            tried.add(self._url(service))
            try:
                return await service.restore(
                    job_id=job_id,
                    attempt=attempt,
                    image=image,
                    extension=extension,
                    workflow=workflow,
                    on_progress=on_progress,
                    cancel=cancel,
                )
            except ComfyUIUnavailable as error:
                self.take_out(service, error)
                logger.warning("job %s: trying another ComfyUI host", job_id)

    async def health(self) -> ComfyUIHealth:
        """Ready when any host is: the pool can take jobs as long as one answers."""
        reports = await asyncio.gather(*(s.health() for s in self.services))
        up = [report for report in reports if report.ok]
        if not up:
            return ComfyUIHealth(
                ok=False,
                error="; ".join(
                    f"{self._url(s)}: {r.error}"
                    for s, r in zip(self.services, reports, strict=True)
                ),
            )
        return ComfyUIHealth(
            ok=True,
            version=up[0].version,
            devices=[device for report in up for device in report.devices],
            error=None
            if len(up) == len(reports)
            else f"{len(reports) - len(up)} of {len(reports)} hosts do not answer",
        )


def comfyui_from_settings(settings: Settings) -> ComfyUIService | ComfyUIPool:
    """One host: its service alone (nothing to choose). Several (`COMFYUI_URLS`): a pool."""
    hosts = settings.comfyui_hosts
    if len(hosts) == 1:
        return ComfyUIService.from_settings(settings, hosts[0])
    return ComfyUIPool.from_settings(settings)
