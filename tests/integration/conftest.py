"""The `server` fixture: one real ComfyUI per integration module (see server.py)."""

import pytest

from tests.integration.server import comfyui_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with comfyui_server(tmp_path_factory.mktemp("comfyui_base")) as running:
        yield running
