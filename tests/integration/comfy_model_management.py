"""Checks that need ComfyUI's own modules in-process: run with ComfyUI's interpreter, from its checkout.

    cd $COMFYUI_DIR && $COMFYUI_PYTHON <repo>/tests/integration/comfy_model_management.py <repo> <scratch dir>

ComfyUI runs on the CPU (as `main.py --cpu`). The pack is imported as ComfyUI imports it (a package; its nodes
import the core relatively), tiny models are written into `scratch` and registered as ComfyUI model folders,
and every check goes through the nodes and ComfyUI's public APIs (ModelPatcher, model_management, comfy.sd).
Prints one JSON object: check name -> its measurements; test_model_management.py asserts on them.
"""

from __future__ import annotations

import json
from pathlib import Path

from comfy_script import SCRATCH, import_pack  # first: ComfyUI on the path, on the CPU

# isort: split

import comfy.model_management as mm
import folder_paths
import torch
from safetensors.torch import save_file

import nodes as comfy_nodes  # (ComfyUI's core nodes)

torch.set_num_threads(1)
CPU = torch.device("cpu")


def write_models() -> dict[str, str]:
    from lumina_core import tiny
    from lumina_core.gguf.convert import convert

    folders = {name: SCRATCH / name for name in ("diffusion_models", "text_encoders", "vae")}
    for name, folder in folders.items():
        folder.mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(name, str(folder))
    files = {
        "lumina2": tiny.write_transformer(
            tiny.make_transformer(0), "original.safetensors", folders["diffusion_models"]
        ),
        "gemma2": tiny.write_text_encoder(
            tiny.make_gemma(0), tiny.train_tokenizer(), "comfy.safetensors", folders["text_encoders"]
        ),  # fmt: skip
        "vae": tiny.write_vae(tiny.make_vae(0), "ae.safetensors", folders["vae"]),
    }
    next_path = folders["diffusion_models"] / "next.safetensors"
    tiny.write_transformer(tiny.make_lumina_next(0), "original.safetensors", SCRATCH).rename(next_path)
    files["lumina_next"] = next_path
    ltxv = tiny.make_ltxv_transformer(0)
    files["ltxv"] = folders["diffusion_models"] / "ltxv.safetensors"
    save_file({k: v.contiguous() for k, v in ltxv.state_dict().items()}, files["ltxv"],
              metadata=tiny.ltxv_config_metadata(ltxv.config))  # fmt: skip
    files["gguf"] = folders["diffusion_models"] / "lumina2-Q8_0.gguf"
    convert(files["lumina2"], files["gguf"], "Q8_0")
    # A VAE of the FLUX `ae` architecture (ComfyUI builds that one shape for 16-channel VAEs), random weights.
    flux = tiny.make_vae(0, tiny.AutoencoderConfig(channels=128, channel_mult=(1, 2, 4, 4), num_res_blocks=2))
    (SCRATCH / "flux").mkdir(exist_ok=True)
    files["flux_vae"] = folders["vae"] / "flux_ae.safetensors"
    tiny.write_vae(flux, "ae.safetensors", SCRATCH / "flux").rename(files["flux_vae"])
    return {name: Path(path).name for name, path in files.items()}


def model_inputs(model) -> tuple:
    generator = torch.Generator().manual_seed(0)
    latent = (128, 2, 2, 3) if model.family == "ltxv" else (model.config.in_channels, 6, 8)
    width = model.config.caption_channels if model.family == "ltxv" else model.config.cap_feat_dim
    x, context = torch.randn(2, *latent, generator=generator), torch.randn(2, 5, width, generator=generator)
    mask = torch.arange(5)[None] < torch.tensor([[5], [3]])
    return x, torch.rand(2, generator=generator), context, mask


def cast_layers(module) -> tuple[int, int]:
    """(layers ComfyUI left where they were, to cast their weights per call; layers it loaded)."""
    left = sum(hasattr(m, "prev_comfy_cast_weights") for m in module.modules())  # ModelPatcher's low-VRAM mark
    loaded = sum(getattr(m, "comfy_patched_weights", False) is True for m in module.modules())
    return left, loaded


@torch.no_grad()
def partial_matches_full(handle) -> dict:
    """The same forward with the model loaded whole (load_models_gpu) and loaded with a third of its size as
    budget (ModelPatcher.patch_model with lowvram_model_memory): the rest stays where it is and casts per call."""
    patcher, model = handle.patcher, handle.model
    inputs = model_inputs(model)
    mm.load_models_gpu([patcher], force_full_load=True)
    full = model(*inputs)
    mm.unload_all_models()
    budget = patcher.model_size() // 3
    patcher.patch_model(device_to=CPU, lowvram_model_memory=budget)
    casting, loaded = cast_layers(model)
    partial = model(*inputs)
    result = {"lowvram": bool(patcher.model.model_lowvram), "casting_layers": casting, "loaded_layers": loaded,
              "loaded_bytes": patcher.loaded_size(), "model_bytes": patcher.model_size(),
              "max_abs_diff": (partial - full).abs().max().item(), "scale": full.abs().max().item()}  # fmt: skip
    patcher.unpatch_model(CPU)
    return result


@torch.no_grad()
def compiles_whole_under_partial_loading(handle) -> dict:
    """The forward through torch.compile(fullgraph=True) while ComfyUI casts part of the weights per call: it must
    trace into one graph (no break) and compute what the eager forward does. Traced by a backend that counts the
    graphs and runs them as traced (inductor's code generation is not what is tested)."""
    patcher, model = handle.patcher, handle.model
    inputs = model_inputs(model)
    patcher.patch_model(device_to=CPU, lowvram_model_memory=patcher.model_size() // 3)
    eager = model(*inputs)
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    out = torch.compile(model.forward, fullgraph=True, backend=counting)(*inputs)
    result = {"graphs": len(graphs), "casting_layers": cast_layers(model)[0],
              "max_abs_diff": (out - eager).abs().max().item(), "scale": eager.abs().max().item()}  # fmt: skip
    patcher.unpatch_model(CPU)
    torch._dynamo.reset()
    return result


@torch.no_grad()
def partial_text_encoder_matches_full(pack, files) -> dict:
    """The same for a text encoder: transformers' model with ComfyUI's cast Linear layers; its norms and Gemma's
    scaled embedding follow their input wherever ComfyUI leaves their weights."""
    handle = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadGemma"]().load(files["gemma2"], "auto")[0]
    patcher, encoder = handle.patcher, handle.model
    mm.load_models_gpu([patcher], force_full_load=True)
    full = encoder.encode(["a red fox in fresh snow"], device=CPU).embeds
    mm.unload_all_models()
    patcher.patch_model(device_to=CPU, lowvram_model_memory=patcher.model_size() // 3)
    casting, loaded = cast_layers(patcher.model)
    partial = encoder.encode(["a red fox in fresh snow"], device=CPU).embeds
    result = {"lowvram": bool(patcher.model.model_lowvram), "casting_layers": casting, "loaded_layers": loaded,
              "max_abs_diff": (partial - full).abs().max().item(), "scale": full.abs().max().item()}  # fmt: skip
    patcher.unpatch_model(CPU)
    return result


def graph_registers_and_free_unloads(pack, files) -> dict:
    """Our nodes run a graph; current_loaded_models then lists their models; unload_all_models (what POST /free with
    unload_models and the "Unload models" button call) releases them."""
    N = pack.nodes.NODE_CLASS_MAPPINGS
    model = N["LuminaLoadTransformer"]().load(files["lumina2"], "auto")[0]
    encoder = N["LuminaLoadGemma"]().load(files["gemma2"], "auto")[0]
    vae = N["LuminaLoadVAE"]().load(files["vae"])[0]
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a red fox", "real")[0]
    sampler = N["LuminaFlowSampler"]()
    defaults = {name: spec[1].get("default") for name, spec in sampler.INPUT_TYPES()["required"].items()
                if name not in ("model", "positive", "negative")}  # fmt: skip
    latent = sampler.sample(model, positive, positive, **{**defaults, "width": 64, "height": 48, "steps": 2})[0]
    N["LuminaVAEDecode"]().decode(vae, latent)
    ours = {"transformer": model.patcher, "text_encoder": encoder.patcher, "vae": vae.patcher}
    listed = {name: any(p is patcher for p in mm.loaded_models()) for name, patcher in ours.items()}
    kinds = {name: type(patcher.model).__name__ for name, patcher in ours.items()}
    mm.unload_all_models()
    left = {name: any(p is patcher for p in mm.loaded_models()) for name, patcher in ours.items()}
    return {"listed_after_run": listed, "listed_after_free": left, "managed_classes": kinds,
            "devices": {name: [str(p.load_device), str(p.offload_device)] for name, p in ours.items()}}  # fmt: skip


@torch.no_grad()
def second_model_offloads_ours(pack, files) -> dict:
    """Ours loaded whole, then room asked for a second model bigger than the free memory: ComfyUI's free_memory
    (what load_models_gpu runs for a GPU before it loads a model) takes weights back from ours, partially, and ours
    still computes the same (the offloaded layers cast per call)."""
    handle = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadTransformer"]().load(files["lumina2"], "auto")[0]
    inputs = model_inputs(handle.model)
    mm.load_models_gpu([handle.patcher], force_full_load=True)
    before, full = handle.patcher.loaded_size(), handle.model(*inputs)
    free = mm.get_free_memory(CPU)
    real_free_memory = mm.get_free_memory
    # The machine's free RAM moves while other processes run; held still here, asking for half of ours more than is
    # free must take exactly that half back, whatever else the machine does meanwhile.
    mm.get_free_memory = lambda device=None, torch_free_too=False: (free, free) if torch_free_too else free
    try:
        mm.free_memory(free + before // 2, CPU)
    finally:
        mm.get_free_memory = real_free_memory
    after = handle.patcher.loaded_size()
    again = handle.model(*inputs)
    mm.unload_all_models()
    return {"loaded_before": before, "loaded_after": after, "max_abs_diff": (again - full).abs().max().item()}


@torch.no_grad()
def core_vae_decode_reads_our_latent(pack, files) -> dict:
    """The README's promise: the sampler's LATENT decodes with ComfyUI's own VAELoader + VAEDecode as with ours."""
    N = pack.nodes.NODE_CLASS_MAPPINGS
    model = N["LuminaLoadTransformer"]().load(files["lumina2"], "auto")[0]
    encoder = N["LuminaLoadGemma"]().load(files["gemma2"], "auto")[0]
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a lighthouse", "real")[0]
    sampler = N["LuminaFlowSampler"]()
    defaults = {name: spec[1].get("default") for name, spec in sampler.INPUT_TYPES()["required"].items()
                if name not in ("model", "positive", "negative")}  # fmt: skip
    latent = sampler.sample(model, positive, positive, **{**defaults, "width": 96, "height": 64, "steps": 2})[0]
    ours = N["LuminaVAEDecode"]().decode(N["LuminaLoadVAE"]().load(files["flux_vae"])[0], latent)[0]
    core_vae = comfy_nodes.VAELoader().load_vae(files["flux_vae"])[0]
    theirs = comfy_nodes.VAEDecode().decode(core_vae, latent)[0]
    mm.unload_all_models()
    return {"shape_ours": list(ours.shape), "shape_core": list(theirs.shape),
            "max_abs_diff": (ours - theirs).abs().max().item(), "spread": (ours.max() - ours.min()).item()}  # fmt: skip


def main() -> None:
    files = write_models()
    pack = import_pack()
    pack.nodes.comfy_bridge.register_folders()
    loader, gguf = pack.nodes.NODE_CLASS_MAPPINGS["LuminaLoadTransformer"](), pack.nodes.NODE_CLASS_MAPPINGS[
        "LuminaGGUFLoader"]()  # fmt: skip
    results = {}
    for family in ("lumina2", "lumina_next", "ltxv"):
        results[f"partial_{family}"] = partial_matches_full(loader.load(files[family], "auto")[0])
    results["partial_gguf"] = partial_matches_full(gguf.load(files["gguf"], "auto")[0])
    for family in ("lumina2", "lumina_next", "ltxv"):
        results[f"compiled_{family}"] = compiles_whole_under_partial_loading(loader.load(files[family], "auto")[0])
    results["compiled_gguf"] = compiles_whole_under_partial_loading(gguf.load(files["gguf"], "auto")[0])
    results["partial_text_encoder"] = partial_text_encoder_matches_full(pack, files)
    results["graph"] = graph_registers_and_free_unloads(pack, files)
    results["second_model"] = second_model_offloads_ours(pack, files)
    results["core_vae_decode"] = core_vae_decode_reads_our_latent(pack, files)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
