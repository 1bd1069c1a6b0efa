"""Our LoRA node against ComfyUI's own LoraLoaderModelOnly, inside the real ComfyUI (its modules in-process, CPU).

    cd $COMFYUI_DIR && $COMFYUI_PYTHON <repo>/tests/integration/comfy_lora.py <repo> <scratch dir>

For Lumina-Image 2.0 and LTX-Video, one transformer file is loaded twice: by ComfyUI's UNETLoader (its own model
classes) and by our loader node. Each LoRA file (one per key style) goes through ComfyUI's LoraLoaderModelOnly on
the first and our LoRA node on the second; then, key by key, both ModelPatchers merge their patches the way they do
when they load a model (`patch_weight_to_device`) and the merged weights are compared. ComfyUI 0.3.64 hardcodes
Lumina-Image 2.0's width (2304, 24 heads over 8 kv heads, FFN 9216, two refiners of each kind), so that model is
the released width with one main layer; LTX-Video reads its sizes from the file. Also: the node on a GGUF model
(object patches) computes what the core's side path does, and the loader's cached model is left as it was.

Prints one JSON object; test_lora_comfyui.py asserts on it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

from comfy_script import SCRATCH, import_pack  # first: ComfyUI on the path, on the CPU

# isort: split

import comfy.model_management as mm
import comfy.utils
import folder_paths
import torch
from safetensors.torch import save_file

import nodes as comfy_nodes  # (ComfyUI's core nodes)

torch.set_num_threads(2)
CPU = torch.device("cpu")
RANK, ALPHA, STRENGTH = 4, 8.0, 0.7


def folders() -> dict[str, Path]:
    made = {name: SCRATCH / name for name in ("diffusion_models", "loras")}
    for name, folder in made.items():
        folder.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(name, str(folder))
    return made


def write_models(dirs: dict[str, Path]) -> dict[str, object]:
    """Both transformers in ComfyUI's own file layout, and a Lumina 2 GGUF, with the modules each family has."""
    from lumina_core import tiny
    from lumina_core.gguf.convert import convert

    released_attention = replace(tiny.TINY_TRANSFORMER, dim=2304, n_heads=24, n_kv_heads=8, ffn_hidden=9216,
                                 n_layers=1, n_refiner_layers=2, axes_dims=(32, 32, 32))  # fmt: skip
    lumina2 = tiny.make_transformer(0, released_attention)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in tiny.transformer_tensors(lumina2).items()},
              dirs["diffusion_models"] / "lumina2.safetensors")  # fmt: skip
    ltxv = tiny.make_ltxv_transformer(0, replace(tiny.TINY_LTXV, caption_channels=4096))  # ComfyUI's T5 width
    metadata = json.loads(tiny.ltxv_config_metadata(ltxv.config)["config"])
    metadata["transformer"].update(num_layers=ltxv.config.n_layers, cross_attention_dim=ltxv.config.dim)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in ltxv.state_dict().items()},
              dirs["diffusion_models"] / "ltxv.safetensors", metadata={"config": json.dumps(metadata)})  # fmt: skip
    small = tiny.make_transformer(0, replace(tiny.TINY_TRANSFORMER, dim=256, n_heads=4, n_kv_heads=2, ffn_hidden=512,
                                              axes_dims=(24, 20, 20)))  # fmt: skip
    tiny.write_transformer(small, "original.safetensors", SCRATCH)
    convert(SCRATCH / "original.safetensors", dirs["diffusion_models"] / "small-Q8_0.gguf", "Q8_0")
    zimage = tiny.make_transformer(0, tiny.TINY_ZIMAGE)  # ComfyUI 0.3.64 has no Z-Image model: ours only
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in tiny.transformer_tensors(zimage).items()},
              dirs["diffusion_models"] / "zimage.safetensors")  # fmt: skip
    return {"lumina2": (lumina2, "lumina2.safetensors"), "ltxv": (ltxv, "ltxv.safetensors"),
            "zimage": (zimage, "zimage.safetensors"), "gguf": (small, "small-Q8_0.gguf")}  # fmt: skip


# ---- LoRA files in every key style ----------------------------------------------------------------------------


def random(shape, generator, std=0.05) -> torch.Tensor:
    return torch.randn(shape, generator=generator) * std


def style_tensors(model, style: str, seed: int) -> dict[str, torch.Tensor]:
    """One LoRA file's tensors for `model` (original module paths) in `style`."""
    from lumina_core.loading.transformer import FAMILIES
    from lumina_core.lora.targets import Target, linear_layers, target_rows

    g = torch.Generator().manual_seed(seed)
    layers = linear_layers(model)
    family = FAMILIES[model.family]
    out: dict[str, torch.Tensor] = {}
    for path, layer in layers.items():
        fan_out, fan_in = layer.out_features, layer.in_features
        comfy = f"diffusion_model.{path}"
        kohya = "lora_unet_" + path.replace(".", "_")
        if style in ("comfy", "kohya", "dora_columns", "dora_rows", "comfy_checkpoint_prefix", "bare"):
            name = {"kohya": kohya, "comfy_checkpoint_prefix": f"model.{comfy}", "bare": path}.get(style, comfy)
            down, up = (".lora_down.weight", ".lora_up.weight") if style == "kohya" else (".lora_A.weight",
                                                                                          ".lora_B.weight")  # fmt: skip
            out[name + down], out[name + up] = random((RANK, fan_in), g), random((fan_out, RANK), g)
            out[name + ".alpha"] = torch.tensor(ALPHA)
            if style == "dora_columns":
                out[name + ".dora_scale"] = layer.weight.detach().norm(dim=0, keepdim=True) * 1.1
            if style == "dora_rows":
                out[name + ".dora_scale"] = layer.weight.detach().norm(dim=1, keepdim=True) * 0.9
        elif style == "loha":
            for half in ("1", "2"):
                out[f"{comfy}.hada_w{half}_a"] = random((fan_out, RANK), g, 0.2)
                out[f"{comfy}.hada_w{half}_b"] = random((RANK, fan_in), g, 0.2)
            out[f"{comfy}.alpha"] = torch.tensor(ALPHA)
        elif style == "lokr":
            out[f"{kohya}.lokr_w1"] = random((2, 2), g, 0.5)
            out[f"{kohya}.lokr_w2_a"] = random((fan_out // 2, RANK), g, 0.2)
            out[f"{kohya}.lokr_w2_b"] = random((RANK, fan_in // 2), g, 0.2)
        elif style == "diff" and path.startswith(("layers.0.", "transformer_blocks.0.", "x_embedder", "patchify")):
            out[f"{comfy}.diff"] = random((fan_out, fan_in), g, 0.01)
            if layer.bias is not None:
                out[f"{comfy}.diff_b"] = random((fan_out,), g, 0.01)
        elif style in ("diffusers", "split_qkv"):
            for alias, part in family.alternative_names(path + ".weight"):
                if (".attention.to_" in alias) != (style == "split_qkv"):  # trainers' names (Z-Image's naming)
                    continue
                rows = target_rows(Target(path, part), layer, model)
                name = f"transformer.{alias.removesuffix('.weight')}"
                if style == "split_qkv":
                    name = f"diffusion_model.{alias.removesuffix('.weight')}"
                out[name + ".lora_A.weight"] = random((RANK, fan_in), g)
                out[name + ".lora_B.weight"] = random((rows.stop - rows.start, RANK), g)
    if style == "diff":  # a norm's gain too: ComfyUI maps every weight, not just Linear ones
        norm = next(p for p, t in model.state_dict().items() if "norm" in p and p.endswith(".weight") and t.ndim == 1)
        out[f"diffusion_model.{norm.removesuffix('.weight')}.diff"] = random(model.state_dict()[norm].shape, g, 0.01)
    return out


COMFY_MAPS = ("comfy", "kohya", "dora_columns", "dora_rows", "loha", "lokr", "diff")
# Key styles ComfyUI 0.3.64 does not map for these models (LTX-Video has no split projections).
ONLY_OURS = {"lumina2": ("diffusers", "split_qkv", "comfy_checkpoint_prefix", "bare"),
             "ltxv": ("diffusers", "comfy_checkpoint_prefix", "bare")}  # fmt: skip
# Z-Image, which ComfyUI 0.3.64 cannot load: our node in ComfyUI against the core (LoRA and DoRA per column, which
# the core applies as ComfyUI does), and the formats only ComfyUI's code applies (patches on every layer).
ZIMAGE_AS_CORE = ("comfy", "kohya", "dora_columns", "diffusers", "split_qkv", "comfy_checkpoint_prefix", "bare")
ZIMAGE_COMFY_ONLY = ("loha", "lokr")


# ---- the comparison -------------------------------------------------------------------------------------------


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def merged(patcher, key: str) -> torch.Tensor:
    """The weight `key` as the patcher merges it when it loads the model (then put back)."""
    patcher.patch_weight_to_device(key, device_to=CPU)
    weight = comfy.utils.get_attr(patcher.model, key).detach().clone()
    patcher.unpatch_model()
    return weight


@torch.no_grad()
def compare(pack, loaded: tuple, lora: str) -> dict:
    """Key by key, the weights ComfyUI merges for its own model and for ours with our node, from one LoRA file."""
    core_model, base = loaded
    core = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(core_model, lora, STRENGTH)[0]
    ours = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadLoRA"]().load(base, lora, STRENGTH)[0].patcher
    core_keys = {k.removeprefix("diffusion_model."): k for k in core.patches}
    result = {
        "core_keys": len(core_keys), "our_keys": len(ours.patches), "same_keys": set(core_keys) == set(ours.patches),
        "equal_keys": 0, "max_abs_diff": 0.0, "dtypes": [],
    }  # fmt: skip
    for key in sorted(set(core_keys) & set(ours.patches)):
        theirs, mine = merged(core, core_keys[key]), merged(ours, key)
        result["dtypes"] = sorted({*result["dtypes"], str(theirs.dtype), str(mine.dtype)})
        result["equal_keys"] += torch.equal(theirs, mine)
        result["max_abs_diff"] = max(result["max_abs_diff"], (theirs.float() - mine.float()).abs().max().item())
    mm.unload_all_models()
    return result


@torch.no_grad()
def ours_match_the_core(pack, loaded: tuple, lora: str) -> dict:
    """For key styles ComfyUI does not map: how many keys each maps, and our node's merged weights against the
    core's apply_loras (which the parity tests hold to diffusers)."""
    core_model, base = loaded
    core = core_model and comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(core_model, lora, STRENGTH)[0]
    ours = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadLoRA"]().load(base, lora, STRENGTH)[0].patcher
    expected = pack.lumina_core.lora.apply_loras(base.model, [(folder_paths.get_full_path("loras", lora), STRENGTH)])
    worst = 0.0
    for key in ours.patches:
        want = expected.get_parameter(key)
        worst = max(worst, ((merged(ours, key) - want).abs().max() / want.abs().max()).item())
    mm.unload_all_models()
    core_keys = None if core is None else len(core.patches)
    return {"our_keys": len(ours.patches), "core_keys": core_keys, "max_rel_diff_vs_core_api": worst}


@torch.no_grad()
def comfy_only_format(pack, base, lora: str) -> dict:
    """A format only ComfyUI's code applies (LoHa, LoKr): how many layers our node patches, and that each merged
    weight moved."""
    ours = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadLoRA"]().load(base, lora, STRENGTH)[0].patcher
    moved = sum(not torch.equal(merged(ours, key), base.model.get_parameter(key)) for key in ours.patches)
    mm.unload_all_models()
    return {"our_keys": len(ours.patches), "moved": moved, "layers": len(pack.lumina_core.lora.targets.linear_layers(
        base.model))}  # fmt: skip


@torch.no_grad()
def gguf_side_path(pack, file: str, lora: str) -> dict:
    """The node on a GGUF model: object patches (the side path) on the clone, applied by load_models_gpu; the same
    output as the core's apply_loras on the same file; the base patcher's model runs without them afterwards."""
    N = pack.nodes.NODE_CLASS_MAPPINGS
    base = N["LuminaGGUFLoader"]().load(file, "auto")[0]  # (model, blocked text-encoder output)
    patched = N["LuminaLoadLoRA"]().load(base, lora, STRENGTH)[0]
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 16, 4, 6, generator=g), torch.rand(1, generator=g), torch.randn(1, 5, 32, generator=g),
              torch.ones(1, 5, dtype=torch.bool))  # fmt: skip
    plain = base.model(*inputs)
    mm.load_models_gpu([patched.patcher], force_full_load=True)
    swapped = sorted(patched.patcher.object_patches)
    with_lora = patched.model(*inputs)
    mm.load_models_gpu([base.patcher], force_full_load=True)
    after = base.model(*inputs)
    core = pack.lumina_core.load_transformer(folder_paths.get_full_path("diffusion_models", file))
    expected = pack.lumina_core.lora.apply_loras(core, [(folder_paths.get_full_path("loras", lora), STRENGTH)])(*inputs)
    mm.unload_all_models()
    return {"object_patches": len(swapped), "weight_patches": len(patched.patcher.patches),
            "rel_diff_vs_core": ((with_lora - expected).norm() / expected.norm()).item(),
            "lora_effect": ((with_lora - plain).norm() / plain.norm()).item(),
            "base_after": ((after - plain).abs().max()).item()}  # fmt: skip


def messages(pack, loaded: tuple, model, other_model) -> dict:
    """Inside ComfyUI, the node's refusals and its one warning: another family's LoRA, a file matching nothing, a
    partial match (one line with the count, none of ComfyUI's per-key lines)."""
    import logging

    base, lora_node = loaded[1], pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadLoRA"]()
    loras = SCRATCH / "loras"
    save_file(style_tensors(other_model, "comfy", seed=7), loras / "other_family.safetensors")
    save_file({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 4)},
              loras / "flux.safetensors")  # fmt: skip
    partial = {**style_tensors(model, "comfy", seed=8), "diffusion_model.not_a_layer.lora_A.weight": torch.zeros(4, 8),
               "diffusion_model.not_a_layer.lora_B.weight": torch.zeros(8, 4)}  # fmt: skip
    save_file(partial, loras / "partial.safetensors")
    found = {}
    for name in ("other_family", "flux"):
        try:
            lora_node.load(base, f"{name}.safetensors", 1.0)
            found[name] = None
        except Exception as err:  # what ComfyUI shows the user
            found[name] = f"{type(err).__name__}: {err}"

    class Lines(logging.Handler):
        def __init__(self):
            super().__init__()
            self.lines = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    lines = Lines()
    logging.getLogger().addHandler(lines)
    try:
        lora_node.load(base, "partial.safetensors", 1.0)
    finally:
        logging.getLogger().removeHandler(lines)
    found["partial"] = [line for line in lines.lines if "not loaded" in line or "match no layer" in line]
    return found


def zimage_results(pack, dirs: dict[str, Path], models: dict) -> dict:
    model, file = models["zimage"]
    base = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadTransformer"]().load(file, "auto")[0]
    before = {k: digest(v) for k, v in base.model.state_dict().items()}
    results = {}
    for number, style in enumerate(ZIMAGE_AS_CORE + ZIMAGE_COMFY_ONLY):
        lora = f"zimage_{style}.safetensors"
        save_file(style_tensors(model, style, seed=50 + number), dirs["loras"] / lora)
        check = ours_match_the_core if style in ZIMAGE_AS_CORE else lambda p, loaded, f: comfy_only_format(p, base, f)
        results[f"zimage/{style}"] = check(pack, (None, base), lora)
        (dirs["loras"] / lora).unlink()
    results["zimage/messages"] = messages(pack, (None, base), model, models["lumina2"][0])
    attention = {k: v for k, v in style_tensors(models["gguf"][0], "split_qkv", seed=9).items() if ".to_q." in k}
    save_file(attention, dirs["loras"] / "lumina2_width_256.safetensors")
    try:
        pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadLoRA"]().load(base, "lumina2_width_256.safetensors", 1.0)
        results["zimage/messages"]["other_width"] = None
    except Exception as err:
        results["zimage/messages"]["other_width"] = f"{type(err).__name__}: {err}"
    results["zimage/base"] = {
        "untouched": before == {k: digest(v) for k, v in base.model.state_dict().items()},
        "patches": len(base.patcher.patches), "object_patches": len(base.patcher.object_patches),
    }  # fmt: skip
    return results


def main() -> None:
    dirs = folders()
    pack = import_pack()  # after the folders: the pack's own folder keys copy ComfyUI's when it is imported
    models = write_models(dirs)
    results = {}
    for family in ("lumina2", "ltxv"):
        model, file = models[family]
        # Each loaded once: the LoRA nodes clone them, so every style starts from the same cached models.
        loaded = (comfy_nodes.UNETLoader().load_unet(file, "default")[0],
                  pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadTransformer"]().load(file, "auto")[0])  # fmt: skip
        before = {k: digest(v) for k, v in loaded[1].model.state_dict().items()}
        for style in COMFY_MAPS + ONLY_OURS[family]:
            lora = f"{family}_{style}.safetensors"
            save_file(style_tensors(model, style, seed=len(results)), dirs["loras"] / lora)
            check = compare if style in COMFY_MAPS else ours_match_the_core
            results[f"{family}/{style}"] = check(pack, loaded, lora)
            (dirs["loras"] / lora).unlink()
        results[f"{family}/messages"] = messages(
            pack, loaded, model, models["ltxv" if family == "lumina2" else "lumina2"][0]
        )
        results[f"{family}/base"] = {
            "untouched": before == {k: digest(v) for k, v in loaded[1].model.state_dict().items()},
            "patches": len(loaded[1].patcher.patches), "object_patches": len(loaded[1].patcher.object_patches),
        }  # fmt: skip
        del loaded
    results.update(zimage_results(pack, dirs, models))
    model, file = models["gguf"]
    save_file(style_tensors(model, "comfy", seed=99), dirs["loras"] / "gguf_comfy.safetensors")
    results["gguf"] = gguf_side_path(pack, file, "gguf_comfy.safetensors")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
