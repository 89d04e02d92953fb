"""Queue order, POST /queue, POST /interrupt, reconnecting and history, with a hanging node."""

from __future__ import annotations

from typing import Any

import pytest

from fixtures.comfyui.testing import capture, png_bytes

pytestmark = pytest.mark.anyio


def blur_chain(prefix: str) -> dict[str, Any]:
    """The shape of the recorded interrupt run: load, scale, blur, sharpen, save."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["1", 0], "upscale_method": "lanczos", "scale_by": 3.0},
        },
        "3": {
            "class_type": "ImageBlur",
            "inputs": {"image": ["2", 0], "blur_radius": 15, "sigma": 5.0},
        },
        "4": {
            "class_type": "ImageSharpen",
            "inputs": {"image": ["3", 0], "sharpen_radius": 15, "sigma": 5.0, "alpha": 1.0},
        },
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }


def executing(prompt_id: str, node: str) -> Any:
    return lambda m: (
        m["type"] == "executing"
        and m["data"] == {"node": node, "display_node": node, "prompt_id": prompt_id}
    )


@pytest.fixture
async def comfy(start_comfy):
    """A stand-in whose first ImageBlur hangs until interrupted."""
    async with start_comfy(faults=[{"kind": "hang", "node": "ImageBlur", "count": 1}]) as comfy:
        await comfy.upload("photo.png", png_bytes(40, 30))
        yield comfy


async def test_interrupting_the_running_prompt(comfy):
    recorded = capture("queue_interrupt")
    async with comfy.listen("me") as listener:
        first = (await comfy.submit(blur_chain("slow/a"), "me")).json()["prompt_id"]
        second = (await comfy.submit(blur_chain("slow/b"), "me")).json()["prompt_id"]
        await listener.wait_for(executing(first, "3"))
        response = await comfy.post("/interrupt", {"prompt_id": first})
        assert [response.status_code, response.text] == [
            recorded["interrupt_targeted_status"],
            recorded["interrupt_targeted_body"],
        ]
        await listener.wait_done(second)
    interrupted = next(m["data"] for m in listener.messages if m["type"] == "execution_interrupted")
    assert {k: v for k, v in interrupted.items() if k != "timestamp"} == {
        "prompt_id": first,
        "node_id": "3",
        "node_type": "ImageBlur",
        "executed": ["1", "2"],
    }
    entry = (await comfy.get(f"/history/{first}")).json()[first]
    ((_, expected),) = recorded["history_interrupted"].items()
    assert entry["outputs"] == expected["outputs"]
    assert entry["meta"] == expected["meta"]
    assert {k: v for k, v in entry["status"].items() if k != "messages"} == {
        "status_str": "error",
        "completed": False,
    }
    assert [m[0] for m in entry["status"]["messages"]] == [
        m[0] for m in expected["status"]["messages"]
    ]
    # The queue goes on; the next prompt reuses what the interrupted one had finished.
    after = (await comfy.get(f"/history/{second}")).json()[second]
    assert after["status"]["status_str"] == "success"
    assert after["status"]["messages"][1][1]["nodes"] == ["1", "2"]


async def test_interrupt_for_another_prompt_id_is_ignored_and_empty_body_is_global(comfy):
    async with comfy.listen("me") as listener:
        prompt_id = (await comfy.submit(blur_chain("slow/c"), "me")).json()["prompt_id"]
        await listener.wait_for(executing(prompt_id, "3"))
        assert (await comfy.post("/interrupt", {"prompt_id": "not-running"})).status_code == 200
        assert (await comfy.get("/queue")).json()["queue_running"][0][1] == prompt_id
        response = await comfy.http.post("/interrupt")  # no body at all
        assert (response.status_code, response.text) == (200, "")
        await listener.wait_done(prompt_id)
    assert "execution_interrupted" in listener.types()


async def test_queue_lists_deletes_and_clears_pending_prompts(comfy):
    recorded = capture("queue_busy")
    async with comfy.listen("me") as listener:
        ids = [
            (await comfy.submit(blur_chain(f"q/{i}"), "me")).json()["prompt_id"] for i in range(4)
        ]
        await listener.wait_for(executing(ids[0], "3"))
        queue = (await comfy.get("/queue")).json()
        assert list(queue) == recorded["raw_keys"]
        assert [entry[1] for entry in queue["queue_running"]] == ids[:1]
        assert [entry[1] for entry in queue["queue_pending"]] == ids[1:]
        running = queue["queue_running"][0]
        assert [type(v).__name__ for v in running] == ["int", "str", "dict", "dict", "list"]
        assert running[3:] == [{"client_id": "me"}, ["5"]]
        assert (await comfy.get("/prompt")).json() == recorded["prompt_get"] | {
            "exec_info": {"queue_remaining": 4}
        }

        deleted = await comfy.post("/queue", {"delete": [ids[2]]})
        assert (deleted.status_code, deleted.text) == (200, "")
        assert [e[1] for e in (await comfy.get("/queue")).json()["queue_pending"]] == [
            ids[1],
            ids[3],
        ]
        await comfy.post("/queue", {"clear": True})
        assert (await comfy.get("/queue")).json()["queue_pending"] == []

        await comfy.post("/interrupt", {"prompt_id": ids[0]})
        await listener.wait_done(ids[0])
    history = (await comfy.get("/history")).json()
    assert list(history) == ids[:1]  # deleted prompts never reach history


async def test_front_jumps_the_queue(comfy):
    async with comfy.listen("me") as listener:
        blocker = (await comfy.submit(blur_chain("front/x"), "me")).json()["prompt_id"]
        await listener.wait_for(executing(blocker, "3"))
        later = (await comfy.submit(blur_chain("front/later"), "me")).json()
        first = (await comfy.submit(blur_chain("front/first"), "me", front=True)).json()
        assert first["number"] < 0 < later["number"]
        await comfy.post("/interrupt", {})
        await listener.wait_done(later["prompt_id"])
    starts = [m["data"]["prompt_id"] for m in listener.messages if m["type"] == "execution_start"]
    assert starts == [blocker, first["prompt_id"], later["prompt_id"]]


async def test_reconnecting_client_is_told_the_current_node(comfy):
    async with comfy.listen("me") as first:
        prompt_id = (await comfy.submit(blur_chain("re/x"), "me")).json()["prompt_id"]
        await first.wait_for(executing(prompt_id, "3"))
        async with comfy.listen("me") as second:
            await second.wait_for(lambda m: m["type"] == "executing")
            assert second.messages[:2] == [
                {
                    "type": "status",
                    "data": {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "me"},
                },
                {"type": "executing", "data": {"node": "3"}},
            ]
            await comfy.post("/interrupt", {})
            await second.wait_done(prompt_id)  # the newest socket under the id gets the rest


async def test_history_window_and_deletion(comfy):
    ids = []
    for i in range(3):
        _, _, entry = await comfy.run(
            {
                "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
                "2": {
                    "class_type": "SaveImage",
                    "inputs": {"images": ["1", 0], "filename_prefix": f"h/{i}"},
                },
            }
        )
        ids.append(entry["prompt"][1])
    assert list((await comfy.get("/history", max_items=2)).json()) == ids[1:]
    assert list((await comfy.get("/history", max_items=1, offset=0)).json()) == ids[:1]
    assert (await comfy.post("/history", {"delete": [ids[0]]})).status_code == 200
    assert (await comfy.get(f"/history/{ids[0]}")).json() == capture("free_clear")[
        "history_after_delete"
    ]
    await comfy.post("/history", {"clear": True})
    assert (await comfy.get("/history")).json() == {}


async def test_execution_interrupted_is_broadcast_only_for_prompts_without_client(start_comfy):
    """Checked on a real 0.3.64: with a client_id, only that client hears of the interrupt."""
    async with start_comfy(faults=[{"kind": "hang", "node": "ImageBlur"}]) as comfy:
        await comfy.upload("photo.png", png_bytes(40, 30))
        for client, other_hears in (("owner", False), (None, True)):
            async with comfy.listen("owner") as owner, comfy.listen("other") as other:
                graph = blur_chain(f"bc/{client}")
                graph["3"]["inputs"]["sigma"] = 2.0 if client else 3.0  # nothing cached
                prompt_id = (await comfy.submit(graph, client)).json()["prompt_id"]
                await owner.wait_for(
                    lambda m: m["type"] == "progress_state" and "3" in m["data"]["nodes"]
                )
                await comfy.post("/interrupt", {"prompt_id": prompt_id})
                await owner.wait_event("execution_interrupted", prompt_id)
                await other.wait_idle()
            assert ("execution_interrupted" in other.types()) is other_hears
