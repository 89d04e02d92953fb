"""The ComfyUI contract against the real host named by COMFYUI_URL (see conftest.py)."""

from tests.contracts.comfyui import ComfyUIContract


class TestRealComfyUIContract(ComfyUIContract):
    """`comfyui_url` comes from tests/gpu/conftest.py: COMFYUI_URL, checked before any test."""
