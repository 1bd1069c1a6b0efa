"""The LoRA node outside ComfyUI (where it applies the LoRA with the core): strength, chaining, the untouched input
model, and its messages. Inside ComfyUI it goes through ComfyUI's LoRA code: tests/integration/test_lora_comfyui.py."""

import warnings

import pytest
import torch

from lumina_core import tiny
from tests.fixtures.lora_files import linear_shapes, random_changes, write_lora
from tests.pack import core, nodes

N = nodes.NODE_CLASS_MAPPINGS
comfy_bridge = nodes.comfy_bridge


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for key, sub in (("lumina_diffusion_models", "diffusion_models"), ("loras", "loras")):
        (root / sub).mkdir()
        comfy_bridge.register_folder(key, root / sub)
    transformer = tiny.make_transformer(0)
    tiny.write_transformer(transformer, "original.safetensors", root / "diffusion_models")
    shapes = linear_shapes(transformer)
    write_lora(root / "loras" / "style.safetensors", random_changes(shapes, 4, seed=1), "comfy")
    write_lora(root / "loras" / "detail.safetensors", random_changes(shapes, 2, seed=2), "kohya")
    partial = random_changes(linear_shapes(transformer, ("layers.0.",)), 2, seed=3)
    write_lora(
        root / "loras" / "partial.safetensors", partial, "comfy", {"diffusion_model.nothing.alpha": torch.ones(())}
    )
    ltx = random_changes(linear_shapes(tiny.make_ltxv_transformer(0)), 2, seed=4)
    write_lora(root / "loras" / "ltx.safetensors", ltx, "comfy")
    yield root
    comfy_bridge._standalone_folders.clear()


def load_model():
    return N["LuminaLoadTransformer"]().load("original.safetensors", weight_dtype="fp32")[0]


def run(handle):
    g = torch.Generator().manual_seed(0)
    x, sigma, context = (
        torch.randn(1, 16, 4, 4, generator=g),
        torch.rand(1, generator=g),
        torch.randn(1, 3, 32, generator=g),
    )
    with torch.no_grad():
        return handle.model(x, sigma, context, torch.ones(1, 3, dtype=torch.bool))


def test_lora_node_patches_a_copy_and_chains(folders):
    base = load_model()
    before = {k: v.clone() for k, v in base.model.state_dict().items()}
    lora = N["LuminaLoadLoRA"]()
    assert lora.load(base, "style.safetensors", 0.0)[0] is base  # strength 0 is the base model
    styled = lora.load(base, "style.safetensors", 0.8)[0]
    both = lora.load(styled, "detail.safetensors", -0.5)[0]
    assert styled.family == both.family == "lumina2"
    expected = core.lora.apply_loras(base.model, [(folders / "loras" / "style.safetensors", 0.8),
                                                  (folders / "loras" / "detail.safetensors", -0.5)])  # fmt: skip
    assert torch.equal(run(both), run(type(both)(expected, None, "diffusion", "lumina2", "")))
    assert not torch.equal(run(styled), run(base)) and not torch.equal(run(both), run(styled))
    assert all(torch.equal(base.model.state_dict()[k], v) for k, v in before.items())  # the input is untouched


def test_lora_node_messages(folders):
    base, lora = load_model(), N["LuminaLoadLoRA"]()
    with pytest.raises(core.UnsupportedModelError, match="is a LoRA for LTX-Video .* this model is Lumina-Image 2.0"):
        lora.load(base, "ltx.safetensors", 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lora.load(base, "partial.safetensors", 1.0)
    assert [str(w.message) for w in caught if "match no layer" in str(w.message)] == [
        "LoRA partial.safetensors: 1 of its 13 keys match no layer of this Lumina-Image 2.0 model and are "
        "not applied (e.g. diffusion_model.nothing.alpha)"
    ]
    with pytest.raises(core.InvalidInputError, match="strength must be a finite number"):
        lora.load(base, "style.safetensors", float("inf"))
    assert N["LuminaLoadLoRA"].INPUT_TYPES()["required"]["lora_name"][0] == [
        "detail.safetensors", "ltx.safetensors", "partial.safetensors", "style.safetensors"
    ]  # fmt: skip
