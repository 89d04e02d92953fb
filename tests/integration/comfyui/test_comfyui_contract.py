"""The ComfyUI contract against the stand-in: it must answer like a real ComfyUI 0.3.64.

The same tests run against a real host in the gpu tier; where the two disagree the stand-in is wrong.
"""

from tests.contracts.comfyui import ComfyUIContract


class TestStandinComfyUIContract(ComfyUIContract):
    """`comfyui_url` is the stand-in process started in conftest.py."""
