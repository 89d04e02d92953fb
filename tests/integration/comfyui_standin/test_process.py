"""The stand-in as a real process, the way the e2e tier and ``nox -s serve`` start it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

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
