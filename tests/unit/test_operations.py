"""Layers a host supplies (`operations`), fp8 weights kept fp8, and weights in another dtype than the input.

Every model the package builds takes its Linear / Conv / norm / embedding classes from an `operations` namespace;
a counting namespace shows that none is left out. fp8 files stay fp8 in memory and compute in bf16 exactly as the
same weights upcast at load do. Models whose weights sit in another dtype than their input (float64 here, the CPU
stand-in for "on another device") compute like the float32 model: every parameter is cast where it is used.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from lumina_core import sample, tiny
from lumina_core.common.ops import CASTABLE_WEIGHT_LAYERS, adopt_operations, cast_ops
from lumina_core.conditioning import Conditioning
from lumina_core.gguf.quantize import quantize
from lumina_core.gguf.quantized import QuantizedLinear, QuantizedTensor
from lumina_core.loading.transformer import load_transformer
from lumina_core.text import load_text_encoder
from lumina_core.vae import load_vae
from tests.fixtures.gguf_files import Q
from tests.fixtures.metrics import relative_error

FP8 = torch.float8_e4m3fn
LAYERS = (nn.Linear, nn.Conv2d, nn.Conv3d, nn.LayerNorm, nn.GroupNorm, nn.Embedding)
KINDS = ("Linear", "Conv2d", "Conv3d", "LayerNorm", "GroupNorm", "Embedding")


def make_model(family: str) -> nn.Module:
    makers = {"lumina2": tiny.make_transformer, "lumina_next": tiny.make_lumina_next,
              "ltxv": tiny.make_ltxv_transformer}  # fmt: skip
    return makers[family](0)


def inputs(family: str, batch: int = 2) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(1)
    latent = {"lumina2": (16, 4, 6), "lumina_next": (4, 4, 6), "ltxv": (128, 2, 2, 3)}[family]
    x = torch.randn(batch, *latent, generator=generator)
    context = torch.randn(batch, 5, 32, generator=generator)
    mask = torch.arange(5)[None] < torch.tensor([5, 3])[:batch, None]
    return x, torch.rand(batch, generator=generator), context, mask


def write_file(model: nn.Module, path, convert=lambda name, tensor: tensor):
    """The model's original-keyed tensors under ComfyUI's prefix, each passed through convert(name, tensor)."""
    tensors = tiny.transformer_tensors(model) if model.family != "ltxv" else dict(model.state_dict())
    tensors = {f"model.diffusion_model.{k}": convert(k, v.contiguous()) for k, v in tensors.items()}
    metadata = tiny.ltxv_config_metadata(model.config) if model.family == "ltxv" else None
    save_file(tensors, path, metadata=metadata)
    return path


def castable_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, CASTABLE_WEIGHT_LAYERS)]


def other_parameters(model: nn.Module) -> list[torch.Tensor]:
    castable = {id(w) for w in castable_weights(model)}
    return [p for p in model.parameters() if id(p) not in castable]


def counting_ops() -> SimpleNamespace:
    """`cast_ops` whose layer classes count the instances they make."""
    created = Counter()

    def counted(kind: str) -> type[nn.Module]:
        base = getattr(cast_ops, kind)

        def __init__(self, *args, **kwargs):  # noqa: N807
            base.__init__(self, *args, **kwargs)
            created[kind] += 1

        return type(f"Counted{kind}", (base,), {"__init__": __init__})

    return SimpleNamespace(**{kind: counted(kind) for kind in KINDS}, created=created)


def torch_layer_counts(module: nn.Module) -> Counter:
    return Counter(next(kind for kind, cls in zip(KINDS, LAYERS) if isinstance(m, cls))
                   for m in module.modules() if isinstance(m, LAYERS))  # fmt: skip


# fp8


@pytest.mark.parametrize("family", ["lumina2", "lumina_next", "ltxv"])
def test_fp8_file_stays_fp8_and_computes_like_the_upcast_model(family, tmp_path):
    model = make_model(family)
    path = write_file(model, tmp_path / "fp8.safetensors", lambda name, t: t.to(FP8))
    kept, upcast = load_transformer(path), load_transformer(path, dtype=torch.bfloat16)
    assert {w.dtype for w in castable_weights(kept)} == {FP8}  # Linear weights stay as stored
    assert {p.dtype for p in other_parameters(kept)} == {torch.bfloat16}  # norms, tables, biases: compute dtype
    assert kept.compute_dtype == upcast.compute_dtype == torch.bfloat16
    size = lambda m: sum(p.nbytes for p in m.parameters())  # noqa: E731
    assert size(kept) < 0.6 * size(upcast)
    args = inputs(family)
    with torch.no_grad():
        ours, theirs, full = kept(*args), upcast(*args), model(*args)
    assert ours.dtype == torch.float32  # the input's dtype
    assert torch.equal(ours, theirs)  # fp8 -> bf16 is exact, so casting per layer is casting at load
    assert relative_error(ours, full) > 1e-3  # the comparison sees fp8 rounding: it would see a wrong cast


def test_scaled_fp8_file_applies_its_scales(tmp_path):
    """ComfyUI's scaled-fp8 layout: each Linear weight / scale in fp8 beside a float32 scale_weight."""
    model = make_model("lumina2")
    scales = {}

    def scaled(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.ndim != 2:
            return tensor.to(torch.bfloat16)
        scales[name] = tensor.abs().max().float() / 448
        return (tensor / scales[name]).to(FP8)

    path = write_file(model, tmp_path / "scaled.safetensors", scaled)
    stored = load_file(path)
    prefix = "model.diffusion_model."
    extra = {prefix + "scaled_fp8": torch.empty(0, dtype=FP8)}
    extra |= {f"{prefix}{name.removesuffix('.weight')}.scale_weight": s.reshape(()) for name, s in scales.items()}
    extra |= {f"{prefix}{name.removesuffix('.weight')}.scale_input": torch.ones(()) for name in scales}
    save_file({**stored, **extra}, path)
    dequantised = {k: (v.float() * scales[k[len(prefix):]]).to(torch.bfloat16) if k[len(prefix):] in scales else v
                   for k, v in stored.items()}  # fmt: skip
    save_file(dequantised, tmp_path / "dequantised.safetensors")

    kept, reference = load_transformer(path), load_transformer(tmp_path / "dequantised.safetensors")
    assert kept.layers[0].attention.qkv.weight.dtype == FP8 and kept.layers[0].attention.qkv.scale_weight > 0
    args = inputs("lumina2")
    with torch.no_grad():
        assert torch.equal(kept(*args), reference(*args))  # scale x weight in float32, rounded once to bf16
        unscaled = load_transformer(write_file(model, tmp_path / "plain.safetensors", scaled))(*args)
    assert relative_error(unscaled, reference(*args)) > 0.5


def test_fp8_storage_can_be_asked_for(tmp_path):
    model = make_model("lumina2")
    kept = load_transformer(write_file(model, tmp_path / "f32.safetensors"), dtype=FP8)
    assert {w.dtype for w in castable_weights(kept)} == {FP8} and kept.compute_dtype == torch.bfloat16
    with torch.no_grad():
        assert relative_error(kept(*inputs("lumina2")), model(*inputs("lumina2"))) < 0.2


# operations: a counting namespace sees every layer


@pytest.mark.parametrize("family", ["lumina2", "lumina_next", "ltxv"])
def test_transformers_take_every_layer_from_operations(family, tmp_path):
    model = make_model(family)
    path = write_file(model, tmp_path / "model.safetensors")
    counting = counting_ops()
    ours = load_transformer(path, operations=counting)
    assert counting.created == torch_layer_counts(model) and counting.created["Linear"] > 0
    assert all(type(m).__name__.startswith("Counted") for m in ours.modules() if isinstance(m, LAYERS))
    with torch.no_grad():
        assert torch.equal(ours(*inputs(family)), load_transformer(path)(*inputs(family)))


@pytest.mark.parametrize("kind", ["flux", "sdxl", "ltx"])
def test_vaes_take_every_layer_from_operations(kind, tmp_path):
    if kind == "ltx":
        vae = tiny.make_ltx_vae(0)
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp_path / "vae.safetensors")
        latent = torch.randn(1, 128, 2, 2, 2)
    else:
        vae = tiny.make_vae(0, tiny.TINY_VAE if kind == "flux" else tiny.TINY_SDXL_VAE)
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp_path / "vae.safetensors")
        latent = torch.randn(1, vae.latent_channels, 4, 4)
    counting = counting_ops()
    ours = load_vae(tmp_path / "vae.safetensors", operations=counting)
    assert counting.created == torch_layer_counts(vae) and counting.created["Conv2d" if kind != "ltx" else "Conv3d"]
    with torch.no_grad():
        assert torch.equal(ours.decode(latent), load_vae(tmp_path / "vae.safetensors").decode(latent))


@pytest.mark.parametrize("kind", ["gemma2", "gemma1", "t5"])
def test_text_encoders_take_their_linear_and_embedding_layers_from_operations(kind, tmp_path):
    if kind == "t5":
        model = tiny.make_t5(0)
        path = tiny.write_t5_text_encoder(model, tiny.train_t5_tokenizer(), "comfy.safetensors", tmp_path)
        options = {"tokenizer_dirs": [tmp_path / "t5_tokenizer"]}
    else:
        model = tiny.make_gemma(0) if kind == "gemma2" else tiny.make_gemma1(0)
        path = tiny.write_text_encoder(model, tiny.train_tokenizer(), "comfy.safetensors", tmp_path)
        options = {}
    counting = counting_ops()
    ours = load_text_encoder(path, operations=counting, **options)
    linears = sum(type(m) is nn.Linear for m in model.modules())
    embeddings = sum(type(m) is nn.Embedding for m in model.modules())  # T5's; Gemma's own class follows its input
    assert counting.created == Counter({"Linear": linears, "Embedding": embeddings} if embeddings else
                                       {"Linear": linears})  # fmt: skip
    assert not any(type(m) in (nn.Linear, nn.Embedding) for m in ours.model.modules())
    plain = load_text_encoder(path, **options)
    assert torch.equal(ours.encode(["a red fox"]).embeds, plain.encode(["a red fox"]).embeds)


def test_t5_weights_stored_narrower_than_the_compute_dtype(tmp_path):
    """fp16 T5 weights computed in float32 (ComfyUI's auto choice on a CPU): the same as the weights upcast at load;
    transformers' feed-forward would round `wo`'s input to its fp16 weight dtype."""
    model = tiny.make_t5(0).half()
    path = tiny.write_t5_text_encoder(model, tiny.train_t5_tokenizer(), "comfy.safetensors", tmp_path)
    options = {"tokenizer_dirs": [tmp_path / "t5_tokenizer"]}
    kept = load_text_encoder(path, compute_dtype=torch.float32, **options)
    upcast = load_text_encoder(path, dtype=torch.float32, **options)
    assert kept.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float16
    prompts = ["a red fox trots through fresh snow", "a lighthouse"]
    assert torch.equal(kept.encode(prompts).embeds, upcast.encode(prompts).embeds)


# weights in another dtype than the input


def with_float64_weights(model: nn.Module, every_other: bool = False) -> nn.Module:
    """The model rebuilt with cast layers and its weights (all, or every other leaf module's) in float64."""
    rebuilt = type(model)(model.config, operations=cast_ops)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval().requires_grad_(False)
    if not every_other:
        return rebuilt.double()
    for i, module in enumerate(m for m in rebuilt.modules() if any(True for _ in m.parameters(recurse=False))):
        if i % 2 == 0:
            for param in module.parameters(recurse=False):
                param.data = param.data.double()
    return rebuilt


@pytest.mark.parametrize("every_other", [False, True], ids=["all", "mixed"])
@pytest.mark.parametrize("family", ["lumina2", "lumina_next", "ltxv"])
def test_transformers_compute_in_their_inputs_dtype_whatever_the_weights(family, every_other):
    model = make_model(family)
    wide = with_float64_weights(model, every_other)
    assert {p.dtype for p in wide.parameters()} >= {torch.float64}
    args = inputs(family)
    with torch.no_grad():
        out = wide(*args)
        assert out.dtype == torch.float32 and torch.equal(out, model(*args))  # float32 weights, widened: exact
        wide.compute_dtype = torch.float64  # a host's choice of compute dtype is taken
        assert wide(*args).dtype == torch.float32 and relative_error(wide(*args), out) < 1e-5


def test_sample_runs_in_the_hosts_compute_dtype_not_the_weights():
    model = make_model("lumina2")
    wide = with_float64_weights(model)
    wide.compute_dtype = torch.float32
    positive = Conditioning(torch.randn(1, 5, 32), torch.ones(1, 5, dtype=torch.bool), "lumina2")
    settings = dict(width=48, height=32, steps=2, seed=3, device="cpu")
    assert torch.equal(sample(wide, positive, positive, **settings), sample(model, positive, positive, **settings))


@pytest.mark.parametrize("kind", ["flux", "ltx"])
def test_vaes_compute_in_the_asked_dtype_whatever_the_weights(kind):
    vae = tiny.make_ltx_vae(0) if kind == "ltx" else tiny.make_vae(0)
    wide = type(vae)(vae.config, operations=cast_ops)
    wide.load_state_dict(vae.state_dict())
    wide = wide.eval().double()
    if kind == "ltx":
        latent, frames = torch.randn(1, 128, 2, 2, 2), torch.rand(1, 3, 9, 64, 64)
    else:
        latent, frames = torch.randn(1, 16, 4, 4), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(wide.decode(latent, dtype=torch.float32), vae.decode(latent))
        assert torch.equal(wide.encode(frames, dtype=torch.float32), vae.encode(frames))


def test_quantized_linear_casts_its_bias():
    packed = torch.from_numpy(quantize(torch.randn(8, 32).numpy(), Q.Q8_0))
    layer = QuantizedLinear.from_linear(
        nn.Linear(32, 8, device="meta"), QuantizedTensor(packed, Q.Q8_0, (8, 32)), "cpu"
    )
    layer.bias = nn.Parameter(torch.randn(8, dtype=torch.float64))
    x = torch.randn(3, 32)
    expected = x @ layer.dequantized_weight(torch.float32, x.device).T + layer.bias.float()
    assert layer(x).dtype == torch.float32 and torch.allclose(layer(x), expected, atol=1e-5)


def test_foreign_modules_follow_their_input():
    """adopt_operations on a module from elsewhere: Linear layers become the host's, other layers with parameters
    of their own compute wherever their input is (float64 weights stand for another device here)."""

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.full((4,), 2.0))

        def forward(self, x):
            assert self.gain.device == x.device
            return x * self.gain

    with torch.device("meta"):
        module = adopt_operations(nn.Sequential(nn.Linear(4, 4), Scale()), cast_ops)
    assert type(module[0]) is cast_ops.Linear and isinstance(module[1], Scale)
    module.to_empty(device="cpu").double()
    torch.nn.init.normal_(module[0].weight)
    assert module(torch.randn(2, 4)).dtype == torch.float64  # Scale keeps its own dtype arithmetic
