"""The stand-in as a real process, the way the e2e tier and ``nox -s serve`` start it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

from fixtures import REPO_ROOT
from fixtures.comfyui import StandinConfig, StandinServer
from fixtures.comfyui.process import run_standin, standin_command


def get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_run_standin_starts_a_healthy_process_and_stops_it(tmp_path):
    with run_standin(output_dir=tmp_path / "out", upscale_models={"m_x3.pth": 3}) as url:
        stats = get_json(f"{url}/system_stats")
        assert stats["devices"][0]["name"] == "standin-cpu"
        assert get_json(f"{url}/models/upscale_models") == ["m_x3.pth"]
    assert (tmp_path / "out").is_dir()
    with pytest.raises(urllib.error.URLError):
        get_json(f"{url}/system_stats")


def test_cli_options_reach_the_server(tmp_path):
    fault = {"kind": "http_error", "route": "/queue", "status": 502}
    with run_standin(faults=[fault], cache=False, save_metadata=False, max_upload_size_mb=1) as url:
        with pytest.raises(urllib.error.HTTPError) as error:
            get_json(f"{url}/queue")
        assert error.value.code == 502
        assert get_json(f"{url}/features") == {
            "supports_preview_metadata": True,
            "max_upload_size": 1048576,
        }


def test_process_is_stopped_when_the_body_fails():
    with pytest.raises(RuntimeError, match="boom"), run_standin() as url:
        raise RuntimeError("boom")
    with pytest.raises(urllib.error.URLError):
        get_json(f"{url}/system_stats")


def test_server_exits_when_its_parent_dies_without_cleaning_up():
    parent = textwrap.dedent(
        """
        import os, signal
        from fixtures.comfyui.process import run_standin
        with run_standin() as url:
            print(url, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", parent], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30
    )
    url = proc.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    deadline = time.monotonic() + 10
    while True:
        try:
            get_json(f"{url}/system_stats")
        except urllib.error.URLError:
            break
        assert time.monotonic() < deadline, "the orphaned stand-in kept running"
        time.sleep(0.1)


def test_a_process_that_cannot_start_is_reported():
    with pytest.raises(RuntimeError, match="exited"), run_standin(faults=[{"kind": "bogus"}]):
        pass


def test_command_line():
    cmd = standin_command(port=9000, upscale_models={}, cache=False)
    assert cmd[1:] == [
        "-m",
        "fixtures.comfyui",
        "--host",
        "127.0.0.1",
        "--port",
        "9000",
        "--upscale-models",
        "",
        "--cache-none",
    ]


@pytest.mark.anyio
async def test_stopping_closes_websockets_instead_of_waiting_for_them(tmp_path):
    server = StandinServer(
        StandinConfig(
            port=0, input_dir=tmp_path / "i", output_dir=tmp_path / "o", temp_dir=tmp_path / "t"
        )
    )
    url = await server.start()
    async with connect(url.replace("http", "ws", 1) + "/ws?clientId=c") as ws:
        await ws.recv()
        started = time.monotonic()
        await server.stop()
        assert time.monotonic() - started < 2
        with pytest.raises(ConnectionClosedOK) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1001
