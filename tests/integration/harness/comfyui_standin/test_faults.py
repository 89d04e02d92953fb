"""Fault injection through /_standin/faults and the constructor options."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from fixtures.comfyui.testing import png_bytes

pytestmark = pytest.mark.anyio
AIOHTTP_500 = "500 Internal Server Error\n\nServer got itself in trouble"


def small(prefix: str = "f/x") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


@pytest.fixture
async def comfy(comfy):
    await comfy.upload("in.png", png_bytes())
    return comfy


async def add_fault(comfy, **fault: Any) -> dict[str, Any]:
    response = await comfy.post("/_standin/faults", fault)
    assert response.status_code == 200, response.text
    return response.json()


async def test_control_route_adds_lists_and_resets(comfy):
    added = await add_fault(comfy, kind="http_error", route="/queue", count=2)
    assert [(f["kind"], f["route"], f["count"]) for f in added["faults"]] == [
        ("http_error", "/queue", 2)
    ]
    assert (await comfy.get("/_standin/faults")).json() == added
    reset = await comfy.http.delete("/_standin/faults")
    assert reset.json() == {"faults": []}
    assert (await comfy.get("/queue")).status_code == 200


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "nope"},
        {"kind": "slow", "seconds": -1},
        {"kind": "http_error", "colour": "red"},
        [1],
    ],
)
async def test_invalid_faults_are_refused(comfy, bad):
    response = await comfy.post("/_standin/faults", bad)
    assert response.status_code == 400
    assert "error" in response.json()


async def test_one_shot_http_error(comfy):
    await add_fault(comfy, kind="http_error", route="/prompt", method="POST", count=1)
    failed = await comfy.submit(small())
    assert (failed.status_code, failed.text) == (500, AIOHTTP_500)
    assert (await comfy.get("/prompt")).status_code == 200  # GET is not matched
    assert (await comfy.submit(small())).status_code == 200
    assert (await comfy.get("/_standin/faults")).json() == {"faults": []}


async def test_persistent_http_error_with_status_and_prefix_under_api(comfy):
    await add_fault(comfy, kind="http_error", route="/history*", status=503)
    for path in ("/history", "/api/history/abc", "/history/abc"):
        response = await comfy.get(path)
        assert (response.status_code, response.text) == (503, "503: Service Unavailable")
    assert (await comfy.get("/queue")).status_code == 200
    assert len((await comfy.get("/_standin/faults")).json()["faults"]) == 1


async def test_dropped_connection_gets_no_response(comfy):
    await add_fault(comfy, kind="drop_connection", route="/upload/image", count=1)
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):  # no response, no status
        await comfy.upload("x.png", png_bytes())
    assert (await comfy.upload("x.png", png_bytes())).status_code == 200


async def test_refused_connections_for_a_while(comfy):
    await add_fault(comfy, kind="refuse_connections", seconds=0.5)
    async with httpx.AsyncClient(base_url=comfy.url, verify=False) as fresh:
        with pytest.raises(httpx.ConnectError):
            await fresh.get("/system_stats")
        with pytest.raises(httpx.TransportError):  # the open keep-alive connection is cut too
            await comfy.get("/queue")
        for _ in range(100):
            await asyncio.sleep(0.05)
            try:
                response = await fresh.get("/system_stats")
                break
            except httpx.ConnectError:
                continue
        assert response.status_code == 200


async def test_slow_nodes(comfy):
    await add_fault(comfy, kind="slow", seconds=0.2, node="ImageInvert")
    started = time.monotonic()
    _, _, entry = await comfy.run(small())
    assert time.monotonic() - started >= 0.2
    assert entry["status"]["status_str"] == "success"


async def test_node_error_is_a_real_shaped_execution_error(comfy):
    await add_fault(
        comfy,
        kind="node_error",
        node="2",
        exception_type="torch.OutOfMemoryError",
        message="Allocation on device",
        count=1,
    )
    _, messages, entry = await comfy.run(small())
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert error["node_id"] == "2"
    assert error["node_type"] == "ImageInvert"
    assert error["executed"] == ["1"]
    assert error["exception_type"] == "torch.OutOfMemoryError"
    assert error["exception_message"].startswith(
        "Allocation on device\nThis error means you ran out of memory"
    )
    assert error["traceback"]
    assert all(line.startswith("  File ") for line in error["traceback"])
    assert error["current_inputs"]["image"][0].startswith("tensor(")
    assert entry["status"]["status_str"] == "error"
    _, _, retry = await comfy.run(small("f/retry"))  # one-shot: the next run succeeds
    assert retry["status"]["status_str"] == "success"


async def test_websocket_drops_mid_run_and_the_run_still_completes(comfy):
    await add_fault(comfy, kind="ws_drop", after=3, count=1)
    async with comfy.listen("me") as listener:
        prompt_id = (await comfy.submit(small(), "me")).json()["prompt_id"]
        await asyncio.wait_for(listener.closed.wait(), 5)
    run_messages = listener.types()[listener.types().index("execution_start") :]
    assert run_messages == ["execution_start", "execution_cached", "progress_state"]
    for _ in range(100):
        history = (await comfy.get(f"/history/{prompt_id}")).json()
        if history:
            break
        await asyncio.sleep(0.02)
    assert history[prompt_id]["status"]["status_str"] == "success"


async def test_silent_websocket_stays_open_and_the_run_still_completes(comfy):
    await add_fault(comfy, kind="silent_websocket", after=2, count=1)
    async with comfy.listen("me") as listener:
        prompt_id = (await comfy.submit(small(), "me")).json()["prompt_id"]
        for _ in range(200):
            history = (await comfy.get(f"/history/{prompt_id}")).json()
            if history:
                break
            await asyncio.sleep(0.02)
        assert history[prompt_id]["status"]["status_str"] == "success"
        await asyncio.sleep(0.2)  # time for any message still in the pipe to arrive
        assert not listener.closed.is_set()
        run_messages = listener.types()[listener.types().index("execution_start") :]
        assert run_messages == ["execution_start", "execution_cached"]
    async with comfy.listen("me") as listener:  # a new socket under the id hears the next run
        prompt_id = (await comfy.submit(small("f/next"), "me")).json()["prompt_id"]
        await listener.wait_done(prompt_id)


async def test_hang_until_interrupted(comfy):
    await add_fault(comfy, kind="hang", node="3")
    async with comfy.listen("me") as listener:
        prompt_id = (await comfy.submit(small(), "me")).json()["prompt_id"]
        await listener.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] == "3")
        await asyncio.sleep(0.2)
        assert (await comfy.get(f"/history/{prompt_id}")).json() == {}
        await comfy.post("/interrupt", {"prompt_id": prompt_id})
        await listener.wait_done(prompt_id)
    interrupted = next(m["data"] for m in listener.messages if m["type"] == "execution_interrupted")
    assert (interrupted["node_id"], interrupted["executed"]) == ("3", ["1", "2"])


async def test_late_history(comfy):
    await add_fault(comfy, kind="history_delay", seconds=0.5, count=1)
    async with comfy.listen("me") as listener:
        prompt_id = (await comfy.submit(small(), "me")).json()["prompt_id"]
        await listener.wait_for(lambda m: m["type"] == "execution_success")
        assert (await comfy.get(f"/history/{prompt_id}")).json() == {}
        await listener.wait_done(prompt_id)
        assert prompt_id in (await comfy.get(f"/history/{prompt_id}")).json()


async def test_faults_from_the_constructor(start_comfy):
    faults = [{"kind": "http_error", "route": "/object_info/LoadImage"}]
    async with start_comfy(faults=faults) as comfy:
        assert (await comfy.get("/object_info/LoadImage")).status_code == 500
        assert (await comfy.get("/api/object_info/LoadImage")).status_code == 500
        assert (await comfy.get("/object_info/SaveImage")).status_code == 200


async def test_refusing_from_the_start(start_comfy):
    async with start_comfy(faults=[{"kind": "refuse_connections", "seconds": 0.3}]) as comfy:
        with pytest.raises(httpx.ConnectError):
            await comfy.get("/system_stats")
        assert comfy.server.faults.describe() == []
