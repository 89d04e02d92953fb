"""The ComfyUI contract against the stand-in: it must answer like a real ComfyUI 0.3.64.

The same tests run against a real host in the gpu tier; where the two disagree the stand-in is wrong.
"""

import pytest

from tests.contracts.comfyui import ComfyUIContract


class TestStandinComfyUIContract(ComfyUIContract):
    @pytest.fixture
    def comfyui_url(self, standin_url: str) -> str:
        """The tier's one stand-in process per xdist worker (conftest.py's `standin_url`)."""
        return standin_url
