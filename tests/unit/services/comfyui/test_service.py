"""Following a prompt: the websocket, the fallback to /history polling, timeouts, cancellation,
progress, and the restoration service on top.

A real websocket server on 127.0.0.1 replays message sequences recorded from ComfyUI 0.3.64;
HTTP answers (also recorded) come from respx.
"""

import asyncio
import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from uuid import UUID, uuid4

import httpx
import pytest
import respx
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from app.core.config import Settings, WorkflowName
from app.services.comfyui import (
    ComfyUIClient,
    ComfyUIService,
    ComfyUITimeout,
    ComfyUIUnavailable,
    ExecutionCancelled,
    ExecutionFailed,
    OutputImage,
    WorkflowRejected,
    attempt_prompt_id,
)
from app.workflows import WorkflowError
from fixtures.comfyui.specs import DATA_DIR
from fixtures.images import make_image
from fixtures.net import free_port


def recorded(name: str) -> Any:
    """A recording of the real server, from the one copy the stand-in serves too."""
    folder = DATA_DIR if name == "object_info_image_nodes.json" else DATA_DIR / "captures"
    return json.loads((folder / name).read_text("utf-8"))


def messages(recording: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Websocket messages as sent: the recorder's `_t` timestamps removed."""
    return [{"type": m["type"], "data": m["data"]} for m in recording]


OBJECT_INFO: dict[str, Any] = recorded("object_info_image_nodes.json")
RUN1 = messages(recorded("ws_run1.json")["messages"])
RUN1_ID = recorded("ws_run1.json")["prompt_id"]
HISTORY_RUN1: dict[str, Any] = recorded("history_run1.json")
ERROR_WS = recorded("exec_error_ws.json")
INTERRUPT = recorded("queue_interrupt.json")
FIRST_INTERRUPTED = "34f51142-e46f-4ada-a067-1c8394bf48e1"
SECOND_INTERRUPTED = "9453d141-b4c6-42b8-add0-6da6ff012bd5"
GRAPH = HISTORY_RUN1[RUN1_ID]["prompt"][2]


@dataclass
class FakeComfyWS:
    """ComfyUI's `/ws` endpoint: sends `script` to each client, then holds or drops the socket."""

    script: list[dict[str, Any] | str | bytes] = field(default_factory=list)
    drop: str | None = None  # "close" (clean close) or "abort" (TCP reset) after the script
    refuse: bool = False  # answer the handshake with 404
    log: list[tuple[str, str]] = field(default_factory=list)  # ("ws", clientId) per connection
    port: int = 0

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        client_id = parse_qs(urlsplit(request.path).query)["clientId"][0]
        self.log.append(("ws", client_id))
        if self.refuse:
            return connection.respond(404, "no websocket here\n")
        return None

    async def handler(self, ws: ServerConnection) -> None:
        for frame in self.script:
            await ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
        if self.drop == "close":
            await ws.close()
        elif self.drop == "abort":
            ws.transport.abort()
        else:
            await ws.wait_closed()

    @property
    def client_id(self) -> str:
        (entry,) = [client_id for kind, client_id in self.log if kind == "ws"]
        return entry


@pytest.fixture
async def ws() -> AsyncIterator[FakeComfyWS]:
    fake = FakeComfyWS()
    async with serve(fake.handler, "127.0.0.1", 0, process_request=fake.process_request) as server:
        fake.port = server.sockets[0].getsockname()[1]
        yield fake


@pytest.fixture
def base(ws: FakeComfyWS) -> str:
    return f"http://127.0.0.1:{ws.port}"


@pytest.fixture
def comfy(base: str) -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=base, assert_all_called=False) as router:
        yield router


@pytest.fixture
async def client(base: str) -> AsyncIterator[ComfyUIClient]:
    async with ComfyUIClient(base, request_timeout=2.0, poll_interval=0.01) as client:
        yield client


def accept_prompt(
    router: respx.MockRouter,
    ws: FakeComfyWS,
    prompt_id: str = RUN1_ID,
    on_submit: Callable[[], object] = lambda: None,
) -> respx.Route:
    """POST /prompt answering with the recorded prompt's id, so that its messages are ours."""

    def answer(request: httpx.Request) -> httpx.Response:
        ws.log.append(("submit", json.loads(request.content)["client_id"]))
        on_submit()
        return httpx.Response(200, json={"prompt_id": prompt_id, "number": 0, "node_errors": {}})

    return router.post("/prompt").mock(side_effect=answer)


def record_stops(router: respx.MockRouter, log: list[tuple[str, Any]]) -> None:
    def record(kind: str) -> Any:
        def answer(request: httpx.Request) -> httpx.Response:
            log.append((kind, json.loads(request.content)))
            return httpx.Response(200)

        return answer

    router.post("/queue").mock(side_effect=record("queue"))
    router.post("/interrupt").mock(side_effect=record("interrupt"))


# --- The websocket path


@pytest.mark.anyio
async def test_run_opens_the_websocket_before_submitting_and_ends_on_executing_null(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.script = RUN1
    submit = accept_prompt(comfy, ws)
    history = comfy.get(f"/history/{RUN1_ID}").respond(200, json=HISTORY_RUN1)
    queue = comfy.get("/queue").respond(200, json={"queue_running": [], "queue_pending": []})

    result = await client.run(GRAPH)

    assert result.prompt_id == RUN1_ID
    assert result.outputs == {"6": [OutputImage("probe_00001_.png", "restored", "output")]}
    assert ws.log == [("ws", ws.client_id), ("submit", ws.client_id)]
    sent = json.loads(submit.calls.last.request.content)
    assert sent["prompt"] == GRAPH
    UUID(sent["prompt_id"])  # our own id, so the prompt can be stopped even if the answer is lost
    # Completion came from the websocket: one history read, no polling.
    assert history.call_count == 1
    assert queue.call_count == 0


@pytest.mark.anyio
async def test_run_ignores_binary_frames_junk_and_other_prompts(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.script = [
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "x"}},
        b"\x00\x00\x00\x01preview",
        "not json",
        "[1, 2]",
        {"type": 5, "data": {}},
        *messages(ERROR_WS["messages"]),  # another prompt's failure, with its final executing
        *RUN1,
    ]
    accept_prompt(comfy, ws)
    comfy.get(f"/history/{RUN1_ID}").respond(200, json=HISTORY_RUN1)

    result = await client.run(GRAPH)

    assert result.outputs["6"][0].filename == "probe_00001_.png"


@pytest.mark.anyio
async def test_execution_error_on_the_websocket(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.script = messages(ERROR_WS["messages"])
    accept_prompt(comfy, ws, ERROR_WS["prompt_id"])
    history = comfy.get(url__startswith="/history/")

    with pytest.raises(ExecutionFailed) as caught:
        await client.run(GRAPH)

    failure = caught.value
    assert failure.prompt_id == ERROR_WS["prompt_id"]
    assert (failure.node_id, failure.node_type) == ("1", "LoadImage")
    assert failure.exception_type == "PIL.UnidentifiedImageError"
    assert (
        failure.exception_message == "cannot identify image file 'COMFYUI_ROOT/input/corrupt.png'"
    )
    assert "LoadImage" in str(failure)
    assert not failure.transient
    assert history.call_count == 0


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("prompt_id", "node"), [(FIRST_INTERRUPTED, "ImageBlur"), (SECOND_INTERRUPTED, "ImageSharpen")]
)
async def test_interrupted_on_the_websocket(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient, prompt_id: str, node: str
) -> None:
    # The recording holds two prompts, both interrupted: each client reacts to its own only.
    ws.script = messages(INTERRUPT["ws"])
    accept_prompt(comfy, ws, prompt_id)

    with pytest.raises(ExecutionCancelled, match=f"interrupted prompt {prompt_id} .*{node}"):
        await client.run(GRAPH)


# --- Falling back to /history


@pytest.mark.anyio
@pytest.mark.parametrize("drop", ["close", "abort"])
async def test_websocket_drop_mid_run_falls_back_to_polling(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient, drop: str
) -> None:
    ws.script, ws.drop = RUN1[:12], drop
    accept_prompt(comfy, ws)
    history = comfy.get(f"/history/{RUN1_ID}").mock(
        side_effect=[
            httpx.Response(200, json={}),
            httpx.Response(200, json={}),
            httpx.Response(200, json=HISTORY_RUN1),
        ]
    )
    queue = comfy.get("/queue").respond(
        200, json={"queue_running": [[0, RUN1_ID, {}, {}, ["6"]]], "queue_pending": []}
    )
    progress: list[float] = []

    result = await client.run(GRAPH, on_progress=progress.append)

    assert result.outputs["6"][0].filename == "probe_00001_.png"
    assert history.call_count == 3
    assert queue.call_count == 2
    assert progress == pytest.approx([1 / 6, 2 / 6, 1.0])


@pytest.fixture
def closed_port() -> int:
    return free_port()


@pytest.mark.anyio
@pytest.mark.parametrize("listening", [True, False], ids=["handshake-refused", "port-closed"])
async def test_no_websocket_means_polling(
    ws: FakeComfyWS, closed_port: int, listening: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ws.refuse = True
    base = f"http://127.0.0.1:{ws.port if listening else closed_port}"
    with respx.mock(base_url=base) as router:
        accept_prompt(router, ws)
        router.get(f"/history/{RUN1_ID}").mock(
            side_effect=[httpx.Response(200, json={}), httpx.Response(200, json=HISTORY_RUN1)]
        )
        router.get("/queue").respond(200, json={"queue_running": [[0, RUN1_ID]]})
        with caplog.at_level(logging.WARNING, "app.services.comfyui"):
            async with ComfyUIClient(base, poll_interval=0.01) as client:
                result = await client.run(GRAPH)

    assert result.prompt_id == RUN1_ID
    assert "will poll /history instead" in caplog.text


@pytest.mark.anyio
async def test_prompt_neither_queued_nor_in_history_is_unavailable(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.refuse = True
    accept_prompt(comfy, ws)
    comfy.get(f"/history/{RUN1_ID}").respond(200, json={})
    comfy.get("/queue").respond(200, json={"queue_running": [], "queue_pending": []})

    with pytest.raises(ComfyUIUnavailable, match="neither queued nor in the history") as caught:
        await client.run(GRAPH)

    assert caught.value.transient


@pytest.mark.anyio
async def test_prompt_finishing_between_history_and_queue_reads(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.refuse = True
    accept_prompt(comfy, ws)
    comfy.get(f"/history/{RUN1_ID}").mock(
        side_effect=[httpx.Response(200, json={}), httpx.Response(200, json=HISTORY_RUN1)]
    )
    comfy.get("/queue").respond(200, json={"queue_running": [], "queue_pending": []})

    result = await client.run(GRAPH)

    assert result.prompt_id == RUN1_ID


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("entry", "expected", "match"),
    [
        (
            recorded("exec_error_history.json"),
            ExecutionFailed,
            r"node 1 \(LoadImage\) failed: PIL\.UnidentifiedImageError",
        ),
        (INTERRUPT["history_interrupted"], ExecutionCancelled, r"at node 3 \(ImageBlur\)"),
        (
            {"p-1": {"status": {"status_str": "error", "messages": [["execution_start", {}], 1]}}},
            ExecutionFailed,
            "ended with an error it did not describe",
        ),
    ],
)
async def test_polled_history_errors(
    comfy: respx.MockRouter,
    ws: FakeComfyWS,
    client: ComfyUIClient,
    entry: dict[str, Any],
    expected: type[Exception],
    match: str,
) -> None:
    prompt_id = next(iter(entry))
    ws.refuse = True
    accept_prompt(comfy, ws, prompt_id)
    comfy.get(f"/history/{prompt_id}").respond(200, json=entry)

    with pytest.raises(expected, match=match):
        await client.run(GRAPH)


@pytest.mark.anyio
async def test_polled_history_outputs_keep_only_images(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.refuse = True
    accept_prompt(comfy, ws, "p-1")
    images = [{"filename": "a_00001_.png", "subfolder": "r"}, {"subfolder": "no name"}, "junk"]
    entry = {"outputs": {"6": {"images": images}, "7": {"text": ["hello"]}, "8": "junk"}}
    comfy.get("/history/p-1").respond(200, json={"p-1": entry})

    result = await client.run(GRAPH)

    assert result.outputs == {"6": [OutputImage("a_00001_.png", "r")], "7": [], "8": []}


# --- Timeouts and cancellation


@pytest.mark.anyio
async def test_timeout_removes_and_interrupts_the_prompt(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.script = RUN1[:6]  # started, then silence
    accept_prompt(comfy, ws)
    stops: list[tuple[str, Any]] = []
    record_stops(comfy, stops)

    with pytest.raises(ComfyUITimeout, match=r"did not finish within 0\.05s") as caught:
        await client.run(GRAPH, timeout=0.05)

    # Dropped from the queue first, so that a prompt starting in between is still interrupted.
    assert stops == [("queue", {"delete": [RUN1_ID]}), ("interrupt", {"prompt_id": RUN1_ID})]
    assert caught.value.transient


@pytest.mark.anyio
async def test_timeout_while_polling(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    ws.refuse = True
    accept_prompt(comfy, ws)
    comfy.get(f"/history/{RUN1_ID}").respond(200, json={})
    comfy.get("/queue").respond(200, json={"queue_pending": [[1, RUN1_ID]]})
    stops: list[tuple[str, Any]] = []
    record_stops(comfy, stops)

    with pytest.raises(ComfyUITimeout):
        await client.run(GRAPH, timeout=0.05)

    assert [kind for kind, _ in stops] == ["queue", "interrupt"]


@pytest.mark.anyio
async def test_cancel_event_interrupts_the_prompt(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    cancel = asyncio.Event()
    # Cancelled as ComfyUI accepts the prompt, not after a fixed delay that a loaded machine
    # can outlast before the prompt is even submitted.
    accept_prompt(comfy, ws, on_submit=cancel.set)
    stops: list[tuple[str, Any]] = []
    record_stops(comfy, stops)

    with pytest.raises(ExecutionCancelled, match="cancelled and interrupted") as caught:
        await client.run(GRAPH, cancel=cancel, timeout=5)

    assert stops == [("queue", {"delete": [RUN1_ID]}), ("interrupt", {"prompt_id": RUN1_ID})]
    assert not caught.value.transient


@pytest.mark.anyio
async def test_cancelled_before_submitting_submits_nothing(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    submit = accept_prompt(comfy, ws)
    cancel = asyncio.Event()
    cancel.set()

    with pytest.raises(ExecutionCancelled, match="before the prompt was submitted"):
        await client.run(GRAPH, cancel=cancel)

    assert submit.call_count == 0


@pytest.mark.anyio
async def test_task_cancellation_interrupts_then_propagates(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    accept_prompt(comfy, ws)
    stops: list[tuple[str, Any]] = []
    record_stops(comfy, stops)
    ws.script = RUN1[:7]  # up to node 1 finishing: the first progress report
    following = asyncio.Event()
    task = asyncio.create_task(
        client.run(GRAPH, on_progress=lambda _: following.set(), cancel=asyncio.Event())
    )
    await following.wait()

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert stops == [("queue", {"delete": [RUN1_ID]}), ("interrupt", {"prompt_id": RUN1_ID})]


@pytest.mark.anyio
async def test_failing_to_stop_still_reports_the_timeout(
    comfy: respx.MockRouter,
    ws: FakeComfyWS,
    client: ComfyUIClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    accept_prompt(comfy, ws)
    comfy.post("/queue").mock(side_effect=httpx.ConnectError("Connection refused"))

    with pytest.raises(ComfyUITimeout):
        await client.run(GRAPH, timeout=0.02)

    assert "could not stop prompt" in caplog.text


# --- Progress


def progress_message(node: str, value: int, maximum: int) -> dict[str, Any]:
    """Shaped like the recorded `progress` message of ImageUpscaleWithModel."""
    return {
        "type": "progress",
        "data": {"value": value, "max": maximum, "prompt_id": RUN1_ID, "node": node},
    }


@pytest.mark.anyio
async def test_progress_counts_nodes_and_steps_within_a_node(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    executing_4 = next(
        i for i, m in enumerate(RUN1) if m["type"] == "executing" and m["data"]["node"] == "4"
    )
    steps = [progress_message("4", value, 4) for value in (1, 2, 3, 4)]
    odd_state = {
        "type": "progress_state",
        "data": {"prompt_id": RUN1_ID, "nodes": {"3": "junk", "4": {"state": "pending"}}},
    }
    ws.script = [
        *RUN1[: executing_4 + 1],
        *steps,
        progress_message("9", 1, 2),  # not the running node
        odd_state,
        *RUN1[executing_4 + 1 :],
    ]
    accept_prompt(comfy, ws)
    comfy.get(f"/history/{RUN1_ID}").respond(200, json=HISTORY_RUN1)
    progress: list[float] = []

    await client.run(GRAPH, on_progress=progress.append)

    expected = [1 / 6, 2 / 6, 3 / 6, 3.25 / 6, 3.5 / 6, 3.75 / 6, 4 / 6, 5 / 6, 1.0]
    assert progress == pytest.approx(expected)


@pytest.mark.anyio
async def test_progress_of_the_recorded_model_upscale_run(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    recording = messages(recorded("ws_upscale_full.json")["messages"])
    prompt_id = recording[2]["data"]["prompt_id"]
    ws.script = recording
    accept_prompt(comfy, ws, prompt_id)
    comfy.get(f"/history/{prompt_id}").respond(200, json={prompt_id: {"outputs": {}}})
    graph = {node: {} for node in ("1", "2", "3", "10", "11", "5", "6")}
    progress: list[float] = []

    await client.run(graph, on_progress=progress.append)

    assert progress == pytest.approx([n / 7 for n in range(1, 8)])


@pytest.mark.anyio
async def test_progress_of_a_fully_cached_run_jumps_to_done(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    recording = recorded("ws_run2_cached.json")
    ws.script = messages(recording["messages"])
    accept_prompt(comfy, ws, recording["prompt_id"])
    comfy.get(f"/history/{recording['prompt_id']}").respond(
        200, json={recording["prompt_id"]: {"outputs": {}}}
    )
    progress: list[float] = []

    await client.run(GRAPH, on_progress=progress.append)

    assert progress == [1.0]


@pytest.mark.anyio
async def test_a_failing_progress_callback_does_not_fail_the_run(
    comfy: respx.MockRouter,
    ws: FakeComfyWS,
    client: ComfyUIClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ws.script = RUN1
    accept_prompt(comfy, ws)
    comfy.get(f"/history/{RUN1_ID}").respond(200, json=HISTORY_RUN1)

    def broken(fraction: float) -> None:
        raise RuntimeError("database down")

    result = await client.run(GRAPH, on_progress=broken)

    assert result.prompt_id == RUN1_ID
    assert "progress callback failed" in caplog.text


def test_websocket_url_follows_the_base_url() -> None:
    client = ComfyUIClient("https://gpu.example/comfy/")
    assert client._ws_url("abc") == "wss://gpu.example/comfy/ws?clientId=abc"


# --- The restoration service


def corrupted_crc(data: bytes) -> bytes:
    idat = data.index(b"IDAT")
    return data[: idat + 6] + bytes([data[idat + 6] ^ 0xFF]) + data[idat + 7 :]


def serve_object_info(router: respx.MockRouter, specs: dict[str, Any]) -> None:
    def answer(request: httpx.Request, name: str) -> httpx.Response:
        name = unquote(name)
        return httpx.Response(200, json={name: specs[name]} if name in specs else {})

    router.get(url__regex=r"/object_info/(?P<name>[^/?]+)$").mock(side_effect=answer)


def specs_with_model(model: str) -> dict[str, Any]:
    specs = copy.deepcopy(OBJECT_INFO)
    specs["UpscaleModelLoader"]["input"]["required"]["model_name"][1]["options"] = [model]
    return specs


@pytest.fixture
async def service(client: ComfyUIClient) -> ComfyUIService:
    return ComfyUIService(
        client, scale=1.5, upscale_model="tiny_compact_x2.safetensors", timeout=5.0
    )


@dataclass
class Job:
    id: UUID
    upload: respx.Route
    submit: respx.Route
    view: respx.Route


def serve_job(
    router: respx.MockRouter,
    ws: FakeComfyWS,
    *,
    result: bytes = b"",
    outputs: dict[str, Any] | None = None,
    model: str = "tiny_compact_x2.safetensors",
) -> Job:
    """A host that runs the job like the recorded run 1, writing `result` under the job's prefix."""
    job_id = uuid4()
    upload = router.post("/upload/image").respond(
        200, json={"name": "input (1).png", "subfolder": f"jobs/{job_id}", "type": "input"}
    )
    serve_object_info(router, specs_with_model(model))
    ws.script = RUN1
    submit = accept_prompt(router, ws)
    entry = copy.deepcopy(HISTORY_RUN1)
    image = {"filename": "a2_00001_.png", "subfolder": f"restored/{job_id}", "type": "output"}
    entry[RUN1_ID]["outputs"] = {"6": {"images": [image]}} if outputs is None else outputs
    router.get(f"/history/{RUN1_ID}").respond(200, json=entry)
    # Earlier attempts' prompts: unknown to this host unless a test says otherwise.
    router.get(path__startswith="/history/", name="earlier_history").respond(200, json={})
    router.get("/queue").respond(200, json={"queue_running": [], "queue_pending": []})
    view = router.get("/view").respond(200, content=result)
    return Job(job_id, upload, submit, view)


@pytest.mark.anyio
@pytest.mark.parametrize("workflow", list(WorkflowName))
async def test_restore_runs_the_job_and_returns_the_image(
    comfy: respx.MockRouter, ws: FakeComfyWS, service: ComfyUIService, workflow: WorkflowName
) -> None:
    job = serve_job(
        comfy, ws, result=make_image(size=(64, 48)), model="tiny_compact_x2.safetensors"
    )
    progress: list[float] = []

    restored = await service.restore(
        job_id=job.id,
        attempt=2,
        image=b"original bytes",
        extension=".PNG",
        workflow=workflow,
        on_progress=progress.append,
    )

    assert (restored.width, restored.height, restored.prompt_id) == (64, 48, RUN1_ID)
    assert restored.data == make_image(size=(64, 48))
    uploaded = job.upload.calls.last.request.content
    assert b'filename="input.png"' in uploaded
    assert f'name="subfolder"\r\n\r\njobs/{job.id}\r\n'.encode() in uploaded
    assert b'name="overwrite"\r\n\r\ntrue\r\n' in uploaded
    submitted = json.loads(job.submit.calls.last.request.content)
    assert submitted["prompt_id"] == attempt_prompt_id(job.id, 2)  # ours, per attempt
    graph = submitted["prompt"]
    # The name ComfyUI returned, not the one we asked for.
    assert graph["1"]["inputs"]["image"] == f"jobs/{job.id}/input (1).png"
    # Unique per job and attempt: ComfyUI would answer an identical graph from its cache.
    assert graph["6"]["inputs"]["filename_prefix"] == f"restored/{job.id}/a2"
    if workflow is WorkflowName.CORE:
        assert graph["4"]["inputs"]["scale_by"] == 1.5
    else:
        assert graph["10"]["inputs"]["model_name"] == "tiny_compact_x2.safetensors"
    assert dict(job.view.calls.last.request.url.params) == {
        "filename": "a2_00001_.png",
        "subfolder": f"restored/{job.id}",
        "type": "output",
    }
    assert progress[-1] == 1.0
    assert all(0 < fraction <= 1 for fraction in progress)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("result", "outputs", "match"),
    [
        (b"not an image", None, "not a readable image"),
        (make_image(size=(64, 48))[:-30], None, "not a readable image"),
        (corrupted_crc(make_image(size=(64, 48))), None, "not a readable image"),
        (make_image(size=(64, 48)), {"6": {"images": []}}, "without an image from node 6"),
        (make_image(size=(64, 48)), {}, "without an image from node 6"),
    ],
    ids=["garbage", "truncated", "bad-crc", "no-image", "no-output"],
)
async def test_restore_without_a_usable_result_fails(
    comfy: respx.MockRouter,
    ws: FakeComfyWS,
    service: ComfyUIService,
    result: bytes,
    outputs: dict[str, Any] | None,
    match: str,
) -> None:
    job = serve_job(comfy, ws, result=result, outputs=outputs)

    with pytest.raises(ExecutionFailed, match=match) as caught:
        await service.restore(
            job_id=job.id,
            attempt=1,
            image=b"x",
            extension="png",
            workflow=WorkflowName.CORE,
        )

    assert caught.value.prompt_id == RUN1_ID


@pytest.mark.anyio
async def test_restore_checks_the_workflow_before_submitting(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    job = serve_job(comfy, ws, model="installed.pth")
    service = ComfyUIService(client, upscale_model="missing.pth")

    with pytest.raises(WorkflowRejected, match=r"model_name: 'missing\.pth' not in") as caught:
        await service.restore(
            job_id=job.id,
            attempt=1,
            image=b"x",
            extension="png",
            workflow=WorkflowName.MODEL_UPSCALE,
        )

    assert list(caught.value.node_errors) == ["10"]
    assert job.submit.call_count == 0


@pytest.mark.anyio
async def test_restore_submits_the_workflow_inputs_of_that_workflow_only(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    job = serve_job(comfy, ws, result=make_image(size=(64, 48)))
    service = ComfyUIService(
        client,
        workflow_inputs={
            WorkflowName.CORE: {"5": {"alpha": 5.0}},
            WorkflowName.MODEL_UPSCALE: {"5": {"alpha": 0.0}},
        },
    )

    await service.restore(
        job_id=job.id, attempt=1, image=b"x", extension="png", workflow=WorkflowName.CORE
    )

    graph = json.loads(job.submit.calls.last.request.content)["prompt"]
    assert graph["5"]["inputs"]["alpha"] == 5.0
    assert graph["5"]["inputs"]["sigma"] == 1.0  # the rest as shipped


@pytest.mark.anyio
async def test_restore_with_inputs_the_workflow_lacks_is_rejected_before_submitting(
    comfy: respx.MockRouter, ws: FakeComfyWS, client: ComfyUIClient
) -> None:
    job = serve_job(comfy, ws)
    service = ComfyUIService(client, workflow_inputs={WorkflowName.CORE: {"5": {"alhpa": 5}}})

    with pytest.raises(WorkflowRejected, match="has no literal input 'alhpa'"):
        await service.restore(
            job_id=job.id, attempt=1, image=b"x", extension="png", workflow=WorkflowName.CORE
        )

    assert job.submit.call_count == 0


@pytest.mark.anyio
async def test_restore_with_an_unusable_shipped_workflow_is_rejected(
    comfy: respx.MockRouter,
    ws: FakeComfyWS,
    service: ComfyUIService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = serve_job(comfy, ws)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise WorkflowError("expected exactly one SaveImage node, found 0")

    monkeypatch.setattr("app.services.comfyui.service.build_workflow", broken)

    with pytest.raises(WorkflowRejected, match="workflow restore is unusable: expected exactly"):
        await service.restore(
            job_id=job.id,
            attempt=1,
            image=b"x",
            extension="png",
            workflow=WorkflowName.CORE,
        )


@pytest.mark.anyio
async def test_restore_times_out(comfy: respx.MockRouter, ws: FakeComfyWS, base: str) -> None:
    job = serve_job(comfy, ws)
    ws.script = RUN1[:6]
    stops: list[tuple[str, Any]] = []
    record_stops(comfy, stops)
    async with ComfyUIService(ComfyUIClient(base, poll_interval=0.01), timeout=0.05) as service:
        with pytest.raises(ComfyUITimeout, match=r"within 0\.05s"):
            await service.restore(
                job_id=job.id,
                attempt=1,
                image=b"x",
                extension="png",
                workflow=WorkflowName.CORE,
            )

    assert [kind for kind, _ in stops] == ["queue", "interrupt"]


@pytest.mark.anyio
async def test_a_new_attempt_stops_the_prompt_an_earlier_attempt_left_running(
    comfy: respx.MockRouter, ws: FakeComfyWS, service: ComfyUIService
) -> None:
    """A worker died mid-prompt; the next attempt must not leave that prompt to run on too."""
    job = serve_job(comfy, ws, result=make_image(size=(64, 48)))
    dead = attempt_prompt_id(job.id, 1)
    queued = {"queue_running": [[0, dead, {}, {}, ["6"]]], "queue_pending": []}
    comfy.get("/queue").respond(200, json=queued)
    stops: list[tuple[str, Any]] = []
    record_stops(comfy, stops)

    restored = await service.restore(
        job_id=job.id, attempt=2, image=b"x", extension="png", workflow=WorkflowName.CORE
    )

    assert stops == [("queue", {"delete": [dead]}), ("interrupt", {"prompt_id": dead})]
    assert restored.prompt_id == RUN1_ID
    assert job.submit.call_count == 1
    assert json.loads(job.submit.calls.last.request.content)["prompt_id"] == attempt_prompt_id(
        job.id, 2
    )


@pytest.mark.anyio
async def test_a_new_attempt_reuses_an_earlier_attempts_finished_prompt(
    comfy: respx.MockRouter, ws: FakeComfyWS, service: ComfyUIService
) -> None:
    """The prompt finished after its worker died: its output is the job's, nothing runs twice."""
    job = serve_job(comfy, ws, result=make_image(size=(64, 48)))
    finished = attempt_prompt_id(job.id, 2)
    entry = copy.deepcopy(HISTORY_RUN1[RUN1_ID])
    image = {"filename": "a2_00001_.png", "subfolder": f"restored/{job.id}", "type": "output"}
    entry["outputs"] = {"6": {"images": [image]}}
    history = comfy.routes["earlier_history"].mock(
        side_effect=lambda request: httpx.Response(
            200, json={finished: entry} if request.url.path.endswith(finished) else {}
        )
    )

    restored = await service.restore(
        job_id=job.id, attempt=3, image=b"x", extension="png", workflow=WorkflowName.CORE
    )

    # Latest first: attempt 2's prompt is the one found.
    assert [call.request.url.path for call in history.calls] == [f"/history/{finished}"]
    assert job.submit.call_count == 0
    assert (restored.prompt_id, restored.width, restored.height) == (finished, 64, 48)
    assert dict(job.view.calls.last.request.url.params)["filename"] == "a2_00001_.png"


@pytest.mark.anyio
async def test_a_silent_websocket_ends_when_the_history_says_the_prompt_finished(
    comfy: respx.MockRouter, ws: FakeComfyWS, base: str
) -> None:
    """The socket stays open and says nothing more; the prompt finishes on ComfyUI meanwhile."""
    ws.script = RUN1[:6]  # then silence, the socket held open
    accept_prompt(comfy, ws)
    history = comfy.get(f"/history/{RUN1_ID}").mock(
        side_effect=[httpx.Response(200, json={}), httpx.Response(200, json=HISTORY_RUN1)]
        + [httpx.Response(200, json=HISTORY_RUN1)] * 5
    )
    queue = comfy.get("/queue").respond(200, json={"queue_running": [[0, RUN1_ID]]})

    async with ComfyUIClient(base, poll_interval=0.01, ws_silence=0.05) as client:
        result = await client.run(GRAPH, timeout=10)

    assert result.outputs["6"][0].filename == "probe_00001_.png"
    assert history.call_count == 3  # silent once (not finished), silent again (finished), result
    assert queue.call_count == 1


@pytest.mark.anyio
async def test_service_health(comfy: respx.MockRouter, service: ComfyUIService) -> None:
    comfy.get("/system_stats").respond(200, json=recorded("get_system_stats.json")["body"])

    health = await service.health()

    assert (health.ok, health.version) == (True, "0.3.64")


@pytest.mark.anyio
async def test_service_from_settings() -> None:
    settings = Settings(
        comfyui_url="http://gpu-1:8188",
        comfyui_request_timeout_seconds=7,
        comfyui_job_timeout_seconds=99,
        comfyui_poll_interval_seconds=0.5,
        comfyui_ws_silence_seconds=4,
        comfyui_scale=3.0,
        comfyui_upscale_model="other_x4.pth",
    )

    async with ComfyUIService.from_settings(settings) as service:
        client = service.client
        assert (service.scale, service.upscale_model, service.timeout) == (3.0, "other_x4.pth", 99)
        assert (client.base_url, client.request_timeout, client.poll_interval) == (
            "http://gpu-1:8188",
            7,
            0.5,
        )
        assert client.ws_silence == 4
