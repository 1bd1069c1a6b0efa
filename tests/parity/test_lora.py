"""LoRA on our transformers against diffusers' `load_lora_weights` + `set_adapters` (peft) on diffusers' models.

Two files per family (four for Z-Image): one written by diffusers' own `save_lora_weights` with every Linear of
diffusers' model and its alpha in the adapter metadata (lora_alpha 8, rank 4: scale 2), and one in ComfyUI's names
(`diffusion_model.` + original module paths, lora_A / lora_B), which diffusers converts itself. Lumina-Image 2.0 runs at
the released width (2304, 24 heads over 8 kv heads, so the fused qkv is 2304 + 768 + 768 rows), because diffusers'
converter hard-codes those row counts when it splits a ComfyUI qkv change; layers and FFN are few and small to keep the
test light.

diffusers takes from a ComfyUI-named file only the modules whose original name is also a diffusers module: for LTX-Video
it drops `patchify_proj` and `adaln_single.*` with a warning ("unexpected keys"), so the ComfyUI file here leaves them
out; tests/unit/test_lora.py checks every layer in every key style against a hand merge.

Z-Image adds the names its trainers write, all converted by diffusers' Z-Image loader: ComfyUI names with the split
`attention.to_q/to_k/to_v`, `attention.out` and an `.alpha` per module (lora_down / lora_up factors: with lora_A /
lora_B diffusers renames the alpha of `attention.out` but not its factors, and refuses the file), the same as kohya
`lora_unet_` names, and the fused `attention.qkv` (lora.down / lora.up factors, which diffusers splits into q, k and v
thirds: Z-Image has no grouped kv heads). Its embedder and final layer are named differently on the two sides
(`x_embedder` / `all_x_embedder.2-1`), so only the diffusers-written file covers them.
"""

import pytest
import torch
from diffusers import LTXPipeline, Lumina2Pipeline, Lumina2Transformer2DModel, ZImagePipeline
from safetensors.torch import load_file, save_file

import lumina_core as lc
from lumina_core.tiny import randomise_parameters
from tests.fixtures import ltxv_files, lumina2_files, zimage_files
from tests.fixtures.diffusers_lumina2 import make_pipeline
from tests.fixtures.lora_files import linear_shapes, random_changes, save_diffusers_lora, write_lora
from tests.fixtures.metrics import relative_error

TOLERANCE = 1e-5
LORA_ALPHA, RANK = 8.0, 4
COMBINATIONS = {"diffusers": {"diffusers": 1.0}, "comfy": {"comfy": 0.8}, "both": {"diffusers": 0.7, "comfy": -0.4}}
ZIMAGE_COMBINATIONS = {
    "kohya": {"kohya": 0.9}, "fused": {"fused": 1.0},
    "all": {"diffusers": 0.7, "comfy": -0.4, "kohya": 0.5, "fused": 0.3},
}  # fmt: skip
FAMILIES = ("lumina2", "ltxv", "zimage")
BLOCKS = {
    "lumina2": ("layers.", "noise_refiner.", "context_refiner."), "ltxv": ("transformer_blocks.",),
    "zimage": ("layers.", "noise_refiner.", "context_refiner.", "t_embedder.", "cap_embedder."),
}  # fmt: skip

# The released Lumina-Image 2.0 attention and a small rest.
LUMINA2_RELEASED_WIDTH = dict(
    lumina2_files.TINY, hidden_size=2304, num_attention_heads=24, num_kv_heads=8, num_layers=1, ffn_dim_multiplier=0.01,
    axes_dim_rope=(32, 32, 32),
)  # fmt: skip


class Case:
    """Our model, diffusers' pipeline with both LoRAs loaded as adapters, the files, inputs and a snapshot of ours."""

    def __init__(self, ours, pipe, files, inputs, run_reference):
        self.ours, self.pipe, self.files, self.inputs, self.run_reference = ours, pipe, files, inputs, run_reference
        self.snapshot = {k: v.clone() for k, v in ours.state_dict().items()}

    def reference(self, strengths: dict[str, float]) -> torch.Tensor:
        self.pipe.set_adapters(list(strengths), list(strengths.values()))
        with torch.no_grad():
            return self.run_reference(self.pipe.transformer, *self.inputs)

    def patched(self, strengths: dict[str, float], files=None) -> torch.nn.Module:
        return lc.apply_loras(self.ours, [((files or self.files)[name], s) for name, s in strengths.items()])


def load_both(pipe, files) -> None:
    for name, path in files.items():
        pipe.load_lora_weights(str(path), adapter_name=name)


@pytest.fixture(scope="module")
def lumina2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lumina2_lora")
    torch.manual_seed(0)
    reference = randomise_parameters(Lumina2Transformer2DModel(**LUMINA2_RELEASED_WIDTH), seed=0)
    ours = lc.load_transformer(lumina2_files.write_layout(reference, "comfy.safetensors", folder))
    assert ours.config.n_heads == 24 and ours.config.n_kv_heads == 8
    changes = random_changes(linear_shapes(reference), RANK, seed=1, std=0.05)
    files = {"diffusers": save_diffusers_lora(Lumina2Pipeline, changes, folder, LORA_ALPHA)}
    comfy = random_changes(linear_shapes(ours, BLOCKS["lumina2"]), RANK, seed=2, std=0.05)
    files["comfy"] = write_lora(folder / "comfy_lora.safetensors", comfy, "comfy")
    pipe = make_pipeline(reference, shift=6.0)
    load_both(pipe, files)
    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(2, 4, 8, 6, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g),
              torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))  # fmt: skip
    return Case(ours, pipe, files, inputs, lambda t, x, sigma, c, m: -t(x, 1 - sigma, c, m).sample)


@pytest.fixture(scope="module")
def ltxv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ltxv_lora")
    reference = ltxv_files.make_reference(seed=0)
    ours = lc.load_transformer(ltxv_files.write_layout(reference, "lightricks.safetensors", folder))
    changes = random_changes(linear_shapes(reference), RANK, seed=1, std=0.2)
    files = {"diffusers": save_diffusers_lora(LTXPipeline, changes, folder, LORA_ALPHA)}
    top_level_same_name = ("caption_projection.", "proj_out")
    comfy = random_changes(linear_shapes(ours, BLOCKS["ltxv"] + top_level_same_name), RANK, seed=2, std=0.2)
    files["comfy"] = write_lora(folder / "comfy_lora.safetensors", comfy, "comfy")
    pipe = LTXPipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=reference)
    load_both(pipe, files)
    g = torch.Generator().manual_seed(3)
    inputs = (torch.randn(2, 8, 2, 3, 4, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 12, generator=g),
              torch.tensor([[True] * 5, [True] * 2 + [False] * 3]))  # fmt: skip

    def run(transformer, x, sigma, context, mask):
        frames, height, width = x.shape[2:]
        out = transformer(
            x.flatten(2).transpose(1, 2), context, sigma * 1000, mask.float(), num_frames=frames, height=height,
            width=width, rope_interpolation_scale=(8 / 25.0, 32, 32), return_dict=False,
        )[0]  # fmt: skip
        return out.transpose(1, 2).unflatten(2, (frames, height, width))

    return Case(ours, pipe, files, inputs, run)


def split_qkv(shapes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Each fused `attention.qkv` (out, in) as its trainers' `attention.to_q/to_k/to_v` parts (equal thirds)."""
    out = {}
    for name, (rows, width) in shapes.items():
        parts = ("to_q", "to_k", "to_v") if name.endswith(".attention.qkv") else (None,)
        out.update({name if p is None else name[: -len("qkv")] + p: (rows // len(parts), width) for p in parts})
    return out


@pytest.fixture(scope="module")
def zimage(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zimage_lora")
    reference = zimage_files.make_reference(seed=0)
    ours = lc.load_transformer(zimage_files.write_layout(reference, "comfy.safetensors", folder), axes_dims=(2, 2, 4))
    changes = random_changes(linear_shapes(reference), RANK, seed=1, std=0.2)
    files = {"diffusers": save_diffusers_lora(ZImagePipeline, changes, folder, LORA_ALPHA)}
    ours_shapes = linear_shapes(ours, BLOCKS["zimage"])
    styles = {"comfy": "comfy_down_up", "kohya": "kohya", "fused": "comfy_dotted_factors"}
    for seed, (name, style) in enumerate(styles.items()):
        shapes = ours_shapes if name == "fused" else split_qkv(ours_shapes)
        written = random_changes(shapes, RANK, seed=2 + seed, std=0.2, alpha=2.0 + seed)  # alpha 2, 3, 4 over rank 4
        files[name] = write_lora(folder / f"{name}_lora.safetensors", written, style)
    pipe = ZImagePipeline(scheduler=None, vae=None, text_encoder=None, tokenizer=None, transformer=reference)
    load_both(pipe, files)
    inputs = zimage_inputs()
    return Case(ours, pipe, files, inputs, lambda t, *args: zimage_files.DiffusersZImageVelocity(t)(*args))


def zimage_inputs(seed: int = 3):
    """An odd latent (5 x 3 patches) and captions of 5 and 3 tokens."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, 4, 10, 6, generator=g), torch.rand(2, generator=g), torch.randn(2, 5, 16, generator=g),
            torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))  # fmt: skip


CASES = [(f, c) for f in FAMILIES for c in COMBINATIONS] + [("zimage", c) for c in ZIMAGE_COMBINATIONS]


@pytest.mark.parametrize(("family", "combination"), CASES, ids=[f"{c}-{f}" for f, c in CASES])
@torch.no_grad()
def test_forward_matches_diffusers(family, combination, request):
    case = request.getfixturevalue(family)
    strengths = {**COMBINATIONS, **ZIMAGE_COMBINATIONS}[combination]
    expected = case.reference(strengths)
    assert relative_error(case.patched(strengths)(*case.inputs), expected) < TOLERANCE
    # The comparison can fail: the LoRAs move the output far beyond the tolerance.
    assert relative_error(case.ours(*case.inputs), expected) > 100 * TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_alpha_and_strength_matter(family, request, tmp_path):
    case = request.getfixturevalue(family)
    expected = case.reference({"diffusers": 1.0})
    tensors = load_file(case.files["diffusers"])
    save_file(tensors, tmp_path / "no_metadata.safetensors")  # the adapter config, and with it alpha 8, dropped
    no_alpha = {"diffusers": tmp_path / "no_metadata.safetensors"}
    assert relative_error(case.patched({"diffusers": 1.0}, no_alpha)(*case.inputs), expected) > 100 * TOLERANCE
    assert relative_error(case.patched({"diffusers": 0.9})(*case.inputs), expected) > 100 * TOLERANCE


@torch.no_grad()
def test_lumina2_split_qkv_rows_follow_the_head_counts(lumina2, tmp_path):
    """diffusers' to_k and to_v changes are 768 rows each: swapping them still fits, and must show."""
    expected = lumina2.reference({"diffusers": 1.0})
    tensors = load_file(lumina2.files["diffusers"])
    swapped = {
        k.replace("to_k.", "to_V.").replace("to_v.", "to_k.").replace("to_V.", "to_v."): v for k, v in tensors.items()
    }
    save_file(swapped, tmp_path / "swapped.safetensors")
    moved = lumina2.patched({"diffusers": 1.0}, {"diffusers": tmp_path / "swapped.safetensors"})(*lumina2.inputs)
    assert relative_error(moved, expected) > 100 * TOLERANCE


@torch.no_grad()
def test_zimage_qkv_parts_and_alphas_matter(zimage, tmp_path):
    """The fused qkv's k and v thirds swapped, or the `.alpha` keys dropped, must show."""
    for name, edit in (("fused", swap_k_and_v), ("comfy", drop_alphas)):
        expected = zimage.reference({name: 1.0})
        save_file(edit(load_file(zimage.files[name])), tmp_path / f"{name}.safetensors")
        moved = zimage.patched({name: 1.0}, {name: tmp_path / f"{name}.safetensors"})(*zimage.inputs)
        assert relative_error(moved, expected) > 100 * TOLERANCE


def swap_k_and_v(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    def edit(key, value):
        if not key.endswith(".qkv.lora.up.weight"):
            return value
        q, k, v = value.chunk(3)
        return torch.cat([q, v, k])

    return {key: edit(key, value) for key, value in tensors.items()}


def drop_alphas(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value for key, value in tensors.items() if not key.endswith(".alpha")}


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_removing_restores_the_base_bit_exactly(family, request):
    case = request.getfixturevalue(family)
    patched = case.patched(COMBINATIONS["both"])
    patched(*case.inputs)
    base = lc.remove_loras(patched)
    assert base is case.ours
    state = base.state_dict()
    assert state.keys() == case.snapshot.keys()
    assert all(torch.equal(state[k], v) for k, v in case.snapshot.items())
    assert torch.equal(base(*case.inputs), case.ours(*case.inputs))
