"""Our LoRA node against ComfyUI's own LoraLoaderModelOnly, inside the real ComfyUI (its modules in-process, CPU).

Runs `comfy_lora.py` once with ComfyUI's interpreter from its checkout and asserts on what it measured. For every
key style ComfyUI 0.3.64 maps on these models (its names `diffusion_model.<path>` and `lora_unet_<path>`: LoRA,
DoRA per column and per row, LoHa, LoKr, full diffs on weights, biases and a norm), our node patches the same keys
and ComfyUI merges bit-identical weights on our model and on its own (Lumina-Image 2.0 at the released width,
LTX-Video). For the styles ComfyUI does not map (diffusers names, trainers' split q/k/v, `model.diffusion_model.`,
bare names) it patches nothing, ours everything, equal to the core's apply_loras. On a GGUF model the node's
object patches compute what the core computes, and the loaders' models are never changed. ComfyUI 0.3.64 cannot
load Z-Image: there our node inside ComfyUI must merge what the core merges for every style the core applies, and
patch every layer for LoHa and LoKr (which only ComfyUI's code applies). Skipped unless
COMFYUI_DIR names a ComfyUI checkout (COMFYUI_PYTHON its interpreter).
"""

from __future__ import annotations

import pytest

from tests.integration.server import NEEDS_COMFYUI, run_comfyui_script

COMFY_MAPS = ("comfy", "kohya", "dora_columns", "dora_rows", "loha", "lokr", "diff")
ONLY_OURS = {"lumina2": ("diffusers", "split_qkv", "comfy_checkpoint_prefix", "bare"),
             "ltxv": ("diffusers", "comfy_checkpoint_prefix", "bare")}  # fmt: skip
ZIMAGE_AS_CORE = ("comfy", "kohya", "dora_columns", "diffusers", "split_qkv", "comfy_checkpoint_prefix", "bare")

pytestmark = NEEDS_COMFYUI


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    return run_comfyui_script("comfy_lora.py", tmp_path_factory.mktemp("comfy_lora"), timeout=1800)


@pytest.mark.parametrize("family", ["lumina2", "ltxv"])
@pytest.mark.parametrize("style", COMFY_MAPS)
def test_merged_weights_equal_comfyuis_own_lora_loader(measured, family, style):
    result = measured[f"{family}/{style}"]
    assert result["core_keys"] > 0 and result["same_keys"]
    assert result["equal_keys"] == result["core_keys"] and result["max_abs_diff"] == 0.0


@pytest.mark.parametrize(("family", "style"), [(f, s) for f, styles in ONLY_OURS.items() for s in styles])
def test_styles_comfyui_does_not_map_apply_as_in_the_core(measured, family, style):
    result = measured[f"{family}/{style}"]
    assert result["core_keys"] == 0 and result["our_keys"] >= 10
    assert result["max_rel_diff_vs_core_api"] < 1e-6


@pytest.mark.parametrize("style", ZIMAGE_AS_CORE)
def test_zimage_styles_apply_inside_comfyui_as_in_the_core(measured, style):
    result = measured[f"zimage/{style}"]
    assert result["core_keys"] is None and result["our_keys"] >= 8  # split q/k/v: 4 blocks x (qkv, out)
    assert result["max_rel_diff_vs_core_api"] < 1e-6


@pytest.mark.parametrize("style", ["loha", "lokr"])
def test_zimage_takes_the_formats_only_comfyui_applies(measured, style):
    result = measured[f"zimage/{style}"]
    assert result["our_keys"] == result["moved"] == result["layers"]


@pytest.mark.parametrize("family", ["lumina2", "ltxv", "zimage"])
def test_the_loaded_model_is_never_changed(measured, family):
    assert measured[f"{family}/base"] == {"untouched": True, "patches": 0, "object_patches": 0}


def test_gguf_layers_take_the_side_path_as_object_patches(measured):
    result = measured["gguf"]
    assert result["object_patches"] > 0 and result["weight_patches"] > 0  # packed layers / float-kept layers
    assert result["rel_diff_vs_core"] < 1e-6 and result["lora_effect"] > 0.01 and result["base_after"] == 0.0


@pytest.mark.parametrize("family", ["lumina2", "ltxv", "zimage"])
def test_messages_inside_comfyui(measured, family):
    found = measured[f"{family}/messages"]
    ours, other = {"lumina2": ("Lumina-Image 2.0", "LTX-Video"), "ltxv": ("LTX-Video", "Lumina-Image 2.0"),
                   "zimage": ("Z-Image", "Lumina-Image 2.0")}[family]  # fmt: skip
    assert found["other_family"].startswith("UnsupportedModelError") and f"a LoRA for {other}" in found["other_family"]
    assert f"this model is {ours}" in found["other_family"]
    assert "flux.safetensors: none of its 2 keys" in found["flux"] and "FLUX" in found["flux"]
    (line,) = found["partial"]  # one line, none of ComfyUI's per-key "lora key not loaded"
    assert line.startswith("LoRA partial.safetensors: 2 of its") and "diffusion_model.not_a_layer.lora_A" in line


def test_a_change_of_another_width_fails_inside_comfyui(measured):
    """ComfyUI would log a shape error per key and sample without the LoRA; the node says it in one line."""
    found = measured["zimage/messages"]["other_width"]
    assert found.startswith("CheckpointError") and "lumina2_width_256.safetensors" in found
    assert "input width 256 where this one has 64" in found
