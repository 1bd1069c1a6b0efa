"""Our models as ComfyUI's memory manager sees them, inside the real ComfyUI (its modules in-process, on the CPU).

Runs `comfy_model_management.py` once with ComfyUI's interpreter from its checkout and asserts on what it
measured: partial loading computes what full loading does (three families, GGUF, a text encoder), and compiles into
one graph (torch.compile fullgraph) with ComfyUI's cast layers; after a run
`current_loaded_models` lists our three models and what `POST /free` calls unloads them; asking room for a
second model takes weights back from ours; core VAEDecode reads our LATENT. Skipped unless COMFYUI_DIR names a
ComfyUI checkout (COMFYUI_PYTHON its interpreter), like test_comfyui.py.
"""

from __future__ import annotations

import pytest

from tests.integration.server import NEEDS_COMFYUI, run_comfyui_script

FAMILIES = ("lumina2", "lumina_next", "ltxv", "gguf")

pytestmark = NEEDS_COMFYUI


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    return run_comfyui_script("comfy_model_management.py", tmp_path_factory.mktemp("comfy_models"), timeout=900)


@pytest.mark.parametrize("family", FAMILIES)
def test_partial_loading_computes_like_full_loading(measured, family):
    result = measured[f"partial_{family}"]
    assert result["lowvram"] and result["casting_layers"] > 0 and result["loaded_layers"] > 0
    assert result["loaded_bytes"] < result["model_bytes"] / 2
    assert result["max_abs_diff"] <= 1e-6 * result["scale"]  # float32 rounding at most (CPU: the same bits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_partially_loaded_model_compiles_into_one_graph(measured, family):
    """Our forward with ComfyUI's cast layers (part of the weights cast per call) traces without a graph break."""
    result = measured[f"compiled_{family}"]
    assert result["graphs"] == 1 and result["casting_layers"] > 0
    assert result["max_abs_diff"] <= 1e-6 * result["scale"]


def test_partial_loading_of_a_text_encoder(measured):
    result = measured["partial_text_encoder"]
    assert result["lowvram"] and result["casting_layers"] > 0 and result["loaded_layers"] > 0
    assert result["max_abs_diff"] <= 1e-6 * result["scale"]


def test_our_models_are_listed_and_free_unloads_them(measured):
    graph = measured["graph"]
    assert graph["listed_after_run"] == {"transformer": True, "text_encoder": True, "vae": True}
    assert graph["listed_after_free"] == {"transformer": False, "text_encoder": False, "vae": False}
    assert graph["devices"] == dict.fromkeys(("transformer", "text_encoder", "vae"), ["cpu", "cpu"])  # --cpu


def test_room_for_a_second_model_offloads_ours(measured):
    result = measured["second_model"]
    assert 0 < result["loaded_after"] < result["loaded_before"] and result["max_abs_diff"] == 0.0


def test_core_vae_decode_reads_our_latent(measured):
    result = measured["core_vae_decode"]
    assert result["shape_ours"] == result["shape_core"] == [1, 64, 96, 3]
    assert result["max_abs_diff"] < 1e-4 and result["spread"] > 0.1
