"""LoRA key styles, the fused-qkv split, strengths, DoRA, the GGUF side path, removal and the error messages.

The ground truth for original / ComfyUI / kohya names is the model's own module paths: every Linear changed by a
file in each style must equal a merge written out here. diffusers' naming is parity-tested against diffusers itself
(tests/parity/test_lora.py); here its other spellings must mean the same as its plain one.
"""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lumina_core as lc
from lumina_core import tiny
from lumina_core.errors import CheckpointError, InvalidInputError, UnsupportedModelError
from lumina_core.gguf.convert import convert
from lumina_core.gguf.quantized import QuantizedLinear
from lumina_core.loading.keymaps.lumina2 import qkv_rows
from lumina_core.lora.side_path import LowRankLinear
from tests.fixtures import lumina2_files
from tests.fixtures.lora_files import Change, linear_shapes, lora_tensors, random_changes, write_lora
from tests.fixtures.metrics import relative_error

MODELS = {
    "lumina2": lambda: tiny.make_transformer(0),
    "lumina_next": lambda: tiny.make_lumina_next(0),
    "ltxv": lambda: tiny.make_ltxv_transformer(0),
    "zimage": lambda: tiny.make_transformer(0, tiny.TINY_ZIMAGE),
}
ORIGINAL_STYLES = ("comfy", "comfy_checkpoint_prefix", "bare", "kohya")
DIFFUSERS_STYLES = ("diffusers_unprefixed", "diffusers_old", "peft", "onetrainer")


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def hand_merged(weight: torch.Tensor, change: Change, strength: float, rank: int) -> torch.Tensor:
    scale = change.alpha / rank if change.alpha else 1.0
    return weight + strength * scale * change.up @ change.down


@pytest.mark.parametrize("style", ORIGINAL_STYLES)
def test_every_layer_in_every_original_style_equals_a_hand_merge(model, style, tmp_path):
    changes = random_changes(linear_shapes(model), rank=3, seed=1, alpha=6.0)
    patched = lc.apply_loras(model, [(write_lora(tmp_path / "lora.safetensors", changes, style), 0.6)])
    for name, change in changes.items():
        expected = hand_merged(model.get_submodule(name).weight, change, 0.6, rank=3)
        torch.testing.assert_close(patched.get_submodule(name).weight, expected, rtol=1e-6, atol=1e-6)
    untouched = {n: p for n, p in model.named_parameters() if not n.endswith(".weight") or n[:-7] not in changes}
    assert all(patched.get_parameter(n) is p for n, p in untouched.items())  # shared, not copied


@pytest.mark.parametrize("style", DIFFUSERS_STYLES)
def test_diffusers_spellings_mean_the_same(style, tmp_path):
    reference = lumina2_files.make_reference(seed=0)
    ours = lc.load_transformer(lumina2_files.write_layout(reference, "comfy.safetensors", tmp_path))
    changes = random_changes(linear_shapes(reference), rank=2, seed=1)
    plain = lc.apply_loras(ours, [(write_lora(tmp_path / "plain.safetensors", changes, "diffusers"), 1.0)])
    other = lc.apply_loras(ours, [(write_lora(tmp_path / "other.safetensors", changes, style), 1.0)])
    assert plain.state_dict().keys() == other.state_dict().keys()
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in plain.state_dict().items())


def test_split_qkv_names_slice_the_fused_qkv_by_head_counts(tmp_path):
    """Trainers' `attention.to_q/to_k/to_v` are row blocks of the fused qkv: 64 + 32 + 32 rows (4 heads, 2 kv heads
    of 16), not thirds. Three separate changes equal one fused change with stacked downs and block-diagonal ups."""
    model = tiny.make_transformer(0)
    qkv = model.layers[0].attention.qkv
    rows = qkv_rows(qkv.out_features, qkv.in_features)
    assert rows == [64, 32, 32]
    g = torch.Generator().manual_seed(0)
    parts = [Change(torch.randn(2, 64, generator=g), torch.randn(n, 2, generator=g)) for n in rows]
    split = {f"layers.0.attention.to_{p}": c for p, c in zip("qkv", parts)}
    fused = {
        "layers.0.attention.qkv": Change(torch.cat([c.down for c in parts]), torch.block_diag(*[c.up for c in parts]))
    }
    from_split = lc.apply_loras(model, [(write_lora(tmp_path / "split.safetensors", split, "comfy"), 1.0)])
    from_fused = lc.apply_loras(model, [(write_lora(tmp_path / "fused.safetensors", fused, "comfy"), 1.0)])
    torch.testing.assert_close(from_split.layers[0].attention.qkv.weight, from_fused.layers[0].attention.qkv.weight)


def test_strengths_add_stack_and_come_off(tmp_path):
    model = tiny.make_transformer(0)
    shapes = linear_shapes(model)
    a = write_lora(tmp_path / "a.safetensors", random_changes(shapes, 2, seed=1), "comfy")
    b = write_lora(tmp_path / "b.safetensors", random_changes(shapes, 2, seed=2), "kohya")
    assert lc.apply_loras(model, [(a, 0.0)]) is model  # strength 0 is the base model
    with pytest.raises(InvalidInputError, match="LoRA strength must be a finite number; got nan"):
        lc.apply_loras(model, [(a, float("nan"))])
    both = lc.apply_loras(model, [(a, 0.5), (b, -1.5)])
    stacked = lc.apply_loras(lc.apply_loras(model, [(a, 0.5)]), [(b, -1.5)])
    assert [s for _, s in lc.lora.applied_loras(stacked)] == [0.5, -1.5]
    assert lc.remove_loras(stacked) is model and lc.remove_loras(model) is model
    layer = "layers.1.feed_forward.w2"
    changes = [random_changes(shapes, 2, seed=s)[layer] for s in (1, 2)]
    expected = hand_merged(hand_merged(model.get_submodule(layer).weight, changes[0], 0.5, 2), changes[1], -1.5, 2)
    for patched in (both, stacked):
        torch.testing.assert_close(patched.get_submodule(layer).weight, expected, rtol=1e-6, atol=1e-6)


def test_base_model_is_never_written_and_removal_is_bit_exact(tmp_path):
    model = tiny.make_transformer(0)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    lora = write_lora(tmp_path / "a.safetensors", random_changes(linear_shapes(model), 2, seed=1), "comfy")
    x = torch.randn(1, 16, 4, 4), torch.rand(1), torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        base_out = model(*x)
        assert relative_error(lc.apply_loras(model, [(lora, 1.0)])(*x), base_out) > 1e-3
        base = lc.remove_loras(lc.apply_loras(model, [(lora, 1.0)], merge=False))
        assert torch.equal(base(*x), base_out)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())


def test_side_path_on_float_layers_equals_merging(tmp_path):
    model = tiny.make_ltxv_transformer(0)
    lora = write_lora(tmp_path / "a.safetensors", random_changes(linear_shapes(model), 3, seed=1), "comfy")
    merged, side = lc.apply_loras(model, [(lora, 0.7)]), lc.apply_loras(model, [(lora, 0.7)], merge=False)
    assert isinstance(side.transformer_blocks[0].attn1.to_q, LowRankLinear)
    assert side.transformer_blocks[0].attn1.to_q.layer is model.transformer_blocks[0].attn1.to_q
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 128, 2, 2, 3, generator=g), torch.rand(1, generator=g), torch.randn(1, 4, 32, generator=g)
    with torch.no_grad():
        out = side(*x, torch.ones(1, 4, dtype=torch.bool))
        assert relative_error(out, merged(*x, torch.ones(1, 4, dtype=torch.bool))) < 1e-5


# Every Linear input is whole K-quant super-blocks (256); as in tests/unit/test_gguf_loading.py.
WIDE = replace(tiny.TINY_TRANSFORMER, dim=256, n_heads=4, n_kv_heads=2, ffn_hidden=512, axes_dims=(24, 20, 20))


def dequantized(model: nn.Module) -> nn.Module:
    """A float model holding the values of `model`'s quantized layers (the test's stand-in for the GGUF file)."""
    float_model = tiny.make_transformer(0, WIDE)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            state[f"{name}.weight"] = module.dequantized_weight(torch.float32, torch.device("cpu"))
    state.update({k: v for k, v in model.state_dict().items() if not k.endswith(".packed")})
    float_model.load_state_dict(state)
    return float_model


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_gguf_layers_take_the_side_path_and_keep_their_bytes(qtype, tmp_path):
    source = tiny.write_transformer(tiny.make_transformer(0, WIDE), "original.safetensors", tmp_path)
    convert(source, tmp_path / "model.gguf", qtype)
    model = lc.load_transformer(tmp_path / "model.gguf")
    reference = dequantized(model)
    shapes = linear_shapes(reference)
    loras = [(write_lora(tmp_path / f"{i}.safetensors", random_changes(shapes, 4, seed=i), "comfy"), s)
             for i, s in ((1, 0.8), (2, -0.5))]  # fmt: skip
    patched = lc.apply_loras(model, loras)
    qkv = patched.layers[0].attention.qkv
    assert isinstance(qkv, LowRankLinear) and qkv.layer is model.layers[0].attention.qkv and qkv.down.shape[0] == 8
    assert isinstance(patched.x_embedder, nn.Linear)  # float layers of a GGUF model are merged
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, 6, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 32, generator=g)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        expected = lc.apply_loras(reference, loras)(*x, mask)
        assert relative_error(patched(*x, mask), expected) < 1e-5
        assert relative_error(model(*x, mask), expected) > 1e-2  # the LoRAs matter


def dora_weight(weight, change: Change, per_column: bool) -> torch.Tensor:
    changed = weight + change.up @ change.down
    norms = changed.norm(dim=0, keepdim=True) if per_column else changed.norm(dim=1, keepdim=True)
    return changed * change.dora_scale.reshape(norms.shape) / norms


@pytest.mark.parametrize("per_column", [True, False], ids=["per-input-column", "per-output-row"])
def test_dora_rescales_the_changed_weight_and_blends_by_strength(per_column, tmp_path):
    model = tiny.make_transformer(0)
    layer = "layers.0.feed_forward.w1"
    weight = model.get_submodule(layer).weight
    change = random_changes({layer: tuple(weight.shape)}, 2, seed=1)[layer]
    magnitude = torch.rand(1, weight.shape[1]) + 0.5 if per_column else torch.rand(weight.shape[0], 1) + 0.5
    change = replace(change, dora_scale=magnitude)
    patched = lc.apply_loras(model, [(write_lora(tmp_path / "dora.safetensors", {layer: change}, "kohya"), 0.4)])
    expected = weight + 0.4 * (dora_weight(weight, change, per_column) - weight)
    torch.testing.assert_close(patched.get_submodule(layer).weight, expected, rtol=1e-5, atol=1e-6)


def test_dora_on_a_gguf_layer_is_merged_once(tmp_path):
    source = tiny.write_transformer(tiny.make_transformer(0, WIDE), "original.safetensors", tmp_path)
    convert(source, tmp_path / "model.gguf", "Q8_0")
    model = lc.load_transformer(tmp_path / "model.gguf")
    layer = "layers.0.feed_forward.w2"
    weight = model.get_submodule(layer).dequantized_weight(torch.float32, torch.device("cpu"))
    change = replace(random_changes({layer: tuple(weight.shape)}, 2, seed=1)[layer], dora_scale=torch.rand(1, 512) + 1)
    patched = lc.apply_loras(model, [(write_lora(tmp_path / "dora.safetensors", {layer: change}, "comfy"), 1.0)])
    merged = patched.get_submodule(layer)
    assert isinstance(merged, nn.Linear) and merged.bias is None
    torch.testing.assert_close(merged.weight, dora_weight(weight, change, True), rtol=1e-5, atol=1e-6)


def test_diffusers_alpha_metadata(tmp_path):
    changes = random_changes({"layers.0.attn.to_q": (8, 8), "layers.0.attn.to_k": (8, 8)}, 4, seed=1)
    config = {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"attn.to_k": 2}}
    for rank_stabilised in (False, True):
        metadata = {"lora_adapter_metadata": json.dumps({**config, "transformer.use_rslora": rank_stabilised})}
        save_file(lora_tensors(changes, "diffusers"), tmp_path / "a.safetensors", metadata=metadata)
        modules = lc.load_lora(tmp_path / "a.safetensors").modules
        q, k = modules["transformer.layers.0.attn.to_q"], modules["transformer.layers.0.attn.to_k"]
        assert (q.scale, k.scale) == ((4.0, 1.0) if rank_stabilised else (2.0, 0.5))


def test_lumina_next_duplicated_query_applies_once(tmp_path):
    """diffusers keeps Lumina-Next's query projection twice (attn1.to_q, attn2.to_q); ours holds it once."""
    model = tiny.make_lumina_next(0)
    wq = model.layers[0].attention.wq.weight
    change = random_changes({"q": tuple(wq.shape)}, 2, seed=1)["q"]
    same = {"layers.0.attn1.to_q": change, "layers.0.attn2.to_q": change}
    patched = lc.apply_loras(model, [(write_lora(tmp_path / "same.safetensors", same, "diffusers"), 1.0)])
    torch.testing.assert_close(patched.layers[0].attention.wq.weight, hand_merged(wq, change, 1.0, 2))
    other = {**same, "layers.0.attn2.to_q": replace(change, up=-change.up)}
    with pytest.raises(CheckpointError, match="both change layers.0.attention.wq of this Lumina-Next model"):
        lc.apply_loras(model, [(write_lora(tmp_path / "other.safetensors", other, "diffusers"), 1.0)])


def test_partial_match_warns_once_with_a_count(tmp_path):
    model = tiny.make_transformer(0)
    changes = random_changes(linear_shapes(model, ("layers.0.",)), 2, seed=1)
    extra = {"diffusion_model.layers.0.attention.nope.lora_A.weight": torch.zeros(2, 4), "stray": torch.zeros(1)}
    path = write_lora(tmp_path / "partial.safetensors", changes, "comfy", extra)
    with pytest.warns(UserWarning) as caught:
        lc.apply_loras(model, [(path, 1.0)])
    assert len(caught) == 1
    assert f"LoRA partial.safetensors: 2 of its {2 * len(changes) + 2} keys match no layer" in str(caught[0].message)
    assert "diffusion_model.layers.0.attention.nope.lora_A.weight" in str(caught[0].message)


def test_a_lora_for_another_family_names_both(tmp_path):
    ltx_lora = random_changes(linear_shapes(tiny.make_ltxv_transformer(0)), 2, seed=1)
    path = write_lora(tmp_path / "ltx.safetensors", ltx_lora, "comfy")
    with pytest.raises(UnsupportedModelError, match="is a LoRA for LTX-Video .* but this model is Lumina-Image 2.0"):
        lc.apply_loras(tiny.make_transformer(0), [(path, 1.0)])


def test_keys_that_match_nothing_name_the_file_and_examples(tmp_path):
    flux = {"double_blocks.0.img_attn.qkv": Change(torch.zeros(2, 8), torch.zeros(24, 2))}
    path = write_lora(tmp_path / "flux.safetensors", flux, "kohya")
    with pytest.raises(CheckpointError, match=r"flux.safetensors: none of its 2 keys .* lora_unet_double_blocks_0_img"):
        lc.apply_loras(tiny.make_transformer(0), [(path, 1.0)])
    with pytest.raises(CheckpointError, match="looks like a LoRA for FLUX"):
        lc.apply_loras(tiny.make_transformer(0), [(path, 1.0)])
    text_only = write_lora(
        tmp_path / "te.safetensors", {"lora_te_layers_0_q": flux["double_blocks.0.img_attn.qkv"]}, "bare"
    )
    with pytest.raises(CheckpointError, match="changes only a text encoder"):
        lc.apply_loras(tiny.make_transformer(0), [(text_only, 1.0)])


def test_a_lora_for_another_width_says_so(tmp_path):
    wide = random_changes(linear_shapes(tiny.make_transformer(0, WIDE), ("layers.0.feed_forward.",)), 2, seed=1)
    path = write_lora(tmp_path / "wide.safetensors", wide, "comfy")
    with pytest.raises(CheckpointError, match=r"another size or family \(input width 256 where this one has 64\)"):
        lc.apply_loras(tiny.make_transformer(0), [(path, 1.0)])


def test_an_attention_lora_of_the_other_family_says_which_it_is(tmp_path):
    """Z-Image's and Lumina-Image 2.0's attention names are the same (trainers' to_q/to_k/to_v): the shapes tell.
    At the released widths the message names the family 3840 wide; at one width the rows differ (no grouped kv)."""
    g = torch.Generator().manual_seed(0)
    released_width = {"layers.0.attention.to_q": Change(torch.randn(2, 3840, generator=g), torch.randn(3840, 2))}
    path = write_lora(tmp_path / "zimage.safetensors", released_width, "comfy")
    with pytest.raises(CheckpointError, match=r"input width 3840 where this one has 64; Z-Image is 3840 wide\)"):
        lc.apply_loras(tiny.make_transformer(0), [(path, 1.0)])
    zimage = tiny.make_transformer(0, tiny.TINY_ZIMAGE)
    attention = random_changes(linear_shapes(zimage, ("layers.0.attention.",)), 2, seed=1)
    path = write_lora(tmp_path / "same_width.safetensors", attention, "comfy")
    with pytest.raises(CheckpointError, match=r"layers.0.attention.qkv, is \(128, 64\).*\(192 output rows where"):
        lc.apply_loras(tiny.make_transformer(0), [(path, 1.0)])


def test_files_without_lora_factors(tmp_path):
    model_file = tiny.write_transformer(tiny.make_transformer(0), "original.safetensors", tmp_path)
    with pytest.raises(CheckpointError, match="holds no LoRA factors .* a model checkpoint rather than a LoRA"):
        lc.load_lora(model_file)
    save_file({"lora_unet_layers_0_attention_qkv.hada_w1_a": torch.zeros(2, 2)}, tmp_path / "loha.safetensors")
    with pytest.raises(CheckpointError, match="holds LoHa changes .* the Lumina LoRA node applies these"):
        lc.load_lora(tmp_path / "loha.safetensors")
    bad = {"x.lora_A.weight": torch.zeros(2, 4), "x.lora_B.weight": torch.zeros(4, 3)}
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="are not a low-rank pair"):
        lc.load_lora(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("scaled", [False, True], ids=["fp8", "scaled-fp8"])
def test_fp8_layers_keep_their_weights_and_take_the_side_path(scaled, tmp_path):
    """fp8 weights (and ComfyUI's fp8 x scale_weight) would round if merged: the side path leaves them as stored;
    a DoRA layer is merged once from its effective weight."""
    model = tiny.make_transformer(0)
    state = tiny.transformer_tensors(model)
    float8 = torch.float8_e4m3fn
    effective = {}
    if scaled:
        tensors = {"scaled_fp8": torch.empty(0, dtype=float8)}
        for name, value in state.items():
            if name in {f"{m}.weight" for m in linear_shapes(model)}:
                scale = value.abs().max() / 448.0
                tensors[name] = (value / scale).to(float8)
                tensors[name.removesuffix("weight") + "scale_weight"] = scale.reshape(())
                effective[name] = tensors[name].float() * scale
            else:
                tensors[name] = value
        save_file(tensors, tmp_path / "model.safetensors")
        loaded = lc.load_transformer(tmp_path / "model.safetensors", compute_dtype=torch.float32)
    else:
        save_file(state, tmp_path / "model.safetensors")
        loaded = lc.load_transformer(tmp_path / "model.safetensors", dtype=float8, compute_dtype=torch.float32)
        effective = {k: v.float() for k, v in loaded.state_dict().items() if v.dtype == float8}
    assert loaded.layers[0].attention.qkv.weight.dtype == float8
    reference = tiny.make_transformer(0)
    reference.load_state_dict({**model.state_dict(), **effective})
    changes = random_changes(linear_shapes(model), 2, seed=1)
    dora_layer = "layers.1.feed_forward.w3"
    changes[dora_layer] = replace(changes[dora_layer], dora_scale=torch.rand(1, 64) + 0.5)
    lora = write_lora(tmp_path / "lora.safetensors", changes, "comfy")
    patched = lc.apply_loras(loaded, [(lora, 0.7)])
    assert isinstance(patched.layers[0].attention.qkv, LowRankLinear)
    assert patched.get_submodule(dora_layer).weight.dtype == torch.float32
    x = torch.randn(1, 16, 4, 4), torch.rand(1), torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        assert relative_error(patched(*x), lc.apply_loras(reference, [(lora, 0.7)])(*x)) < 1e-5
