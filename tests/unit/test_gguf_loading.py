"""Transformers from GGUF files through load_transformer: quantized layers stay packed, the forward matches the
float model within quantization error and never holds more than one dequantized weight."""

import weakref
from copy import deepcopy
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lumina_core import tiny
from lumina_core.gguf import quantized as quantized_module
from lumina_core.gguf.convert import convert
from lumina_core.gguf.quantized import QuantizedLinear
from lumina_core.loading.keymaps.lumina2 import to_diffusers
from lumina_core.loading.transformer import load_transformer
from tests.fixtures.gguf_files import Q, write_gguf
from tests.fixtures.metrics import relative_error

# Wide enough that every Linear input is whole K-quant super-blocks of 256; the RoPE split is the default one
# for head_dim 64, which files do not store.
WIDE = replace(tiny.TINY_TRANSFORMER, dim=256, n_heads=4, n_kv_heads=2, ffn_hidden=512, axes_dims=(24, 20, 20))


@pytest.fixture(scope="module")
def wide_model():
    return tiny.make_transformer(0, WIDE)


def inputs(batch: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 16, 6, 10, generator=generator)
    sigma = torch.rand(batch, generator=generator)
    context = torch.randn(batch, 7, 32, generator=generator)
    mask = torch.ones(batch, 7, dtype=torch.bool)
    mask[1, 4:] = False
    return x, sigma, context, mask


def quantized_layers(model: nn.Module) -> dict[str, Q]:
    return {name: m.qtype for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def dequantized_copy(model: nn.Module) -> nn.Module:
    """The same model with every QuantizedLinear replaced by an nn.Linear holding its dequantized weight."""
    copy = deepcopy(model)
    for name in quantized_layers(model):
        layer = copy.get_submodule(name)
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        linear.weight = nn.Parameter(layer.dequantized_weight(torch.float32, torch.device("cpu")))
        linear.bias = layer.bias
        parent, _, child = name.rpartition(".")
        setattr(copy.get_submodule(parent), child, linear)
    return copy


def test_q8_0_file_matches_the_float_model(wide_model, tmp_path):
    source = tiny.write_transformer(wide_model, "original.safetensors", tmp_path)
    convert(source, tmp_path / "model-Q8_0.gguf", "Q8_0")
    model = load_transformer(tmp_path / "model-Q8_0.gguf")
    layers = quantized_layers(model)
    assert set(layers.values()) == {Q.Q8_0} and "layers.0.attention.qkv" in layers and "x_embedder" not in layers
    assert model.x_embedder.weight.dtype == torch.float32  # embedders stay float (policy.FLOAT_MODULES)
    ours = model(*inputs())
    # Exactly the float model the file's values describe (to float32 rounding) ...
    assert relative_error(ours, dequantized_copy(model)(*inputs())) < 1e-5
    # ... and the original float model within Q8_0's error.
    reference = load_transformer(source)
    expected = reference(*inputs())
    error = relative_error(ours, expected)
    assert error < 0.02, error
    # The comparison can fail: another caption moves the output far more than the quantization error.
    x, sigma, context, mask = inputs()
    assert relative_error(reference(x, sigma, inputs(seed=1)[2], mask), expected) > 20 * error
    layers = {name: model.get_submodule(name) for name in layers}
    packed = sum(layer.packed.numel() for layer in layers.values())
    assert packed == sum(layer.in_features * layer.out_features * 34 // 32 for layer in layers.values())
    float_bytes = sum(p.numel() * 4 for p in reference.parameters())
    assert packed + sum(p.numel() * 4 for p in model.parameters()) < 0.75 * float_bytes


def test_forward_holds_one_dequantized_weight_at_a_time(wide_model, tmp_path, monkeypatch):
    source = tiny.write_transformer(wide_model, "original.safetensors", tmp_path)
    convert(source, tmp_path / "model.gguf", "Q4_0")
    model = load_transformer(tmp_path / "model.gguf")
    live, peak, calls = set(), [0], [0]
    real = quantized_module.dequantize

    def tracking(*args, **kwargs):
        weight = real(*args, **kwargs)
        calls[0] += 1
        key = id(weight)
        live.add(key)
        peak[0] = max(peak[0], len(live))
        weakref.finalize(weight, live.discard, key)
        return weight

    monkeypatch.setattr(quantized_module, "dequantize", tracking)
    model(*inputs())
    assert calls[0] >= len(quantized_layers(model))  # every quantized layer ran (the refiners' more than once)
    assert peak[0] == 1, f"{peak[0]} dequantized weights alive at once"


def test_mixed_types_prefix_and_placeholder_architecture(wide_model, tmp_path):
    # A city96-style Q4_K_M mixture: K-quants of three sizes, legacy types, BF16/F16 layers, F32 norms and a
    # quantized x_embedder (which the loader dequantizes anyway), under ComfyUI's prefix with the "pig" arch.
    types = {".qkv.": Q.Q5_K, ".w2.": Q.Q6_K, ".w1.": Q.Q4_K, ".w3.": Q.Q4_0, ".out.": Q.Q8_0,
             "adaLN_modulation": Q.BF16, "x_embedder": Q.Q8_0, "cap_embedder.1": Q.F16}  # fmt: skip
    state = tiny.transformer_tensors(wide_model)

    def type_of(name, value):
        if value.ndim != 2:
            return Q.F32
        return next((t for part, t in types.items() if part in name), Q.F16)

    tensors = {f"model.diffusion_model.{k}": (v, type_of(k, v)) for k, v in state.items()}
    path = write_gguf(tmp_path / "mixed.gguf", tensors, "pig")
    model = load_transformer(path)
    assert set(quantized_layers(model).values()) == {Q.Q5_K, Q.Q6_K, Q.Q4_K, Q.Q4_0, Q.Q8_0}
    assert isinstance(model.x_embedder, nn.Linear) and model.x_embedder.weight.dtype == torch.float32
    ours = model(*inputs())
    assert relative_error(ours, dequantized_copy(model)(*inputs())) < 1e-5
    assert relative_error(ours, wide_model(*inputs())) < 0.3  # 4-bit layers on a random model


def test_missing_architecture_and_bf16_compute(wide_model, tmp_path):
    tensors = {k: (v, Q.Q8_0 if v.ndim == 2 else Q.F32) for k, v in tiny.transformer_tensors(wide_model).items()}
    path = write_gguf(tmp_path / "noarch.gguf", tensors, None)
    model = load_transformer(path, dtype=torch.bfloat16)
    assert model.compute_dtype == torch.bfloat16 and quantized_layers(model)
    out = model(*inputs())
    assert out.dtype == torch.float32  # the model returns the input's dtype
    assert relative_error(out, wide_model(*inputs())) < 0.05


def test_diffusers_names_concatenate_packed_rows(wide_model, tmp_path):
    state = to_diffusers({k: v.contiguous() for k, v in wide_model.state_dict().items()}, WIDE.dim)
    tensors = {k: (v, Q.Q8_0 if v.ndim == 2 and v.shape[1] % 32 == 0 else Q.F32) for k, v in state.items()}
    model = load_transformer(write_gguf(tmp_path / "diffusers.gguf", tensors, "lumina2"))
    assert quantized_layers(model)["layers.0.attention.qkv"] == Q.Q8_0  # q, k, v rows joined still packed
    assert relative_error(model(*inputs()), dequantized_copy(model)(*inputs())) < 1e-5
    assert relative_error(model(*inputs()), wide_model(*inputs())) < 0.02


def test_ltx_video_file(tmp_path):
    model = tiny.make_ltxv_transformer(0)
    source = tmp_path / "ltxv.safetensors"
    tensors = {f"model.diffusion_model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, source, metadata=tiny.ltxv_config_metadata(model.config))
    convert(source, tmp_path / "ltxv-Q8_0.gguf", "Q8_0")
    loaded = load_transformer(tmp_path / "ltxv-Q8_0.gguf")
    assert loaded.family == "ltxv" and loaded.config == model.config  # the JSON config went through the GGUF
    layers = quantized_layers(loaded)
    assert layers and not any(n.startswith(("patchify_proj", "adaln_single")) for n in layers)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 128, 2, 2, 3, generator=generator)
    context = torch.randn(2, 5, model.config.caption_channels, generator=generator)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    sigma = torch.tensor([0.3, 0.9])
    ours = loaded(x, sigma, context, mask)
    assert relative_error(ours, dequantized_copy(loaded)(x, sigma, context, mask)) < 1e-5
    assert relative_error(ours, model(x, sigma, context, mask)) < 0.02


def test_lumina_next_file(tmp_path):
    from tests.fixtures import lumina_next_files

    source = lumina_next_files.write_layout(lumina_next_files.make_reference(0), "original.safetensors", tmp_path)
    convert(source, tmp_path / "next-Q8_0.gguf", "Q8_0")
    loaded = load_transformer(tmp_path / "next-Q8_0.gguf")
    assert loaded.family == "lumina_next" and quantized_layers(loaded)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 6, generator=generator)
    context = torch.randn(2, 5, 16, generator=generator)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    sigma = torch.tensor([0.3, 0.9])
    ours = loaded(x, sigma, context, mask)
    assert relative_error(ours, dequantized_copy(loaded)(x, sigma, context, mask)) < 1e-5
    assert relative_error(ours, load_transformer(source)(x, sigma, context, mask)) < 0.05
