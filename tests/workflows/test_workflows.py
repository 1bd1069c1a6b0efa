"""Every shipped workflow: its UI and API files agree, its graph checks, and its API twin runs on tiny checkpoints."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.workflow_models import (
    WORKFLOW_FILES,
    qwen_tokenizer_stand_in,
    write_workflow_images,
    write_workflow_models,
)
from tests.pack import core, nodes
from tests.workflows.graph import (
    CORE_NODES,
    WorkflowError,
    check_api,
    load_api,
    load_ui,
    run_api_workflow,
    ui_to_api,
)

ROOT = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(ROOT.glob("*.json"))
API_FILES = sorted((ROOT / "api").glob("*.json"))
N = nodes.NODE_CLASS_MAPPINGS
InvalidInputError, comfy_bridge = core.InvalidInputError, nodes.comfy_bridge
first_frame_conditioning, encode_condition = core.vae.first_frame_conditioning, core.vae.encode_condition
LOADERS = ("LuminaLoadTransformer", "LuminaLoadGemma", "LuminaLoadT5", "LuminaLoadVAE")
ENCODERS = ("LuminaGemmaEncode", "LuminaT5Encode")
TINY_SETTINGS = {"width": 96, "height": 64, "steps": 2, "frames": 9}  # sizes valid for every family


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny checkpoints under exactly the file names the shipped workflows use, registered like ComfyUI's folders."""
    root = tmp_path_factory.mktemp("models")
    folders = {name: root / name for name in WORKFLOW_FILES}
    for folder in folders.values():
        folder.mkdir()
    for key, sources in comfy_bridge.FOLDERS.items():
        for source in sources:
            if source in folders:
                comfy_bridge.register_folder(key, folders[source])
    comfy_bridge.register_folder("loras", folders["loras"])  # ComfyUI's own folder key
    write_workflow_models(folders)
    qwen_tokenizer = qwen_tokenizer_stand_in(root / "qwen25_tokenizer")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LUMINA_MODEL_DIRS", raising=False)
        patch.setattr(CORE_NODES["LoadImage"], "input_dir", write_workflow_images(root / "input"))
        patch.setattr(comfy_bridge, "bundled_tokenizer_dirs", lambda: [str(qwen_tokenizer)])
        yield root
    comfy_bridge._standalone_folders.clear()


def shrink(api: dict) -> dict:
    """The same graph at a size and step count that runs in a second on the CPU."""
    for node in api.values():
        node["inputs"].update({k: v for k, v in TINY_SETTINGS.items() if k in node["inputs"]})
    return api


def test_workflows_are_shipped():
    shipped = {"lumina2_t2i.json", "lumina2_t2i_lora.json", "lumina_next_t2i.json", "ltxv_t2v.json",
               "ltxv_i2v_first_last.json", "zimage_turbo_t2i.json"}  # fmt: skip
    assert shipped <= {p.name for p in UI_FILES}


def test_the_lora_workflow_is_the_text_to_image_one_with_a_lora(model_dirs, tmp_path):
    """The LoRA workflow differs from lumina2_t2i only by the LoRA node between loader and sampler (and the file
    prefix), and the LoRA changes the picture."""
    plain, with_lora = (load_api(ROOT / "api" / name) for name in ("lumina2_t2i.json", "lumina2_t2i_lora.json"))
    (lora_id,) = [key for key, node in with_lora.items() if node["class_type"] == "LuminaLoadLoRA"]
    sampler = next(key for key, node in with_lora.items() if node["class_type"] == "LuminaFlowSampler")
    assert with_lora[sampler]["inputs"]["model"] == [lora_id, 0] and with_lora[lora_id]["inputs"]["model"] == ["1", 0]
    rest = {key: node for key, node in with_lora.items() if key != lora_id}
    rest[sampler] = {**rest[sampler], "inputs": {**rest[sampler]["inputs"], "model": ["1", 0]}}
    assert json.dumps(rest, sort_keys=True).replace("lumina2_t2i_lora", "lumina2_t2i") == json.dumps(
        plain, sort_keys=True
    )
    images = []
    for name in ("lumina2_t2i.json", "lumina2_t2i_lora.json"):
        folder = tmp_path / name
        folder.mkdir()
        outputs = run_api_workflow(shrink(load_api(ROOT / "api" / name)), N, folder)
        with Image.open(next(p for ui in outputs.values() for p in ui["images"])) as image:
            images.append(np.asarray(image, dtype=np.float32))
    assert np.abs(images[0] - images[1]).max() > 10


@pytest.mark.parametrize("path", UI_FILES + API_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_has_its_twin(path):
    twin = ROOT / "api" / path.name if path.parent == ROOT else ROOT / path.name
    assert twin.is_file(), f"{path.relative_to(ROOT)} has no twin at {twin.relative_to(ROOT)}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_file_converts_to_its_api_twin(path):
    ui = load_ui(path)
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui_to_api(ui, N) == load_api(ROOT / "api" / path.name)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_links_match_the_node_slots(path):
    """Each link appears on both ends: in the source's output `links` and on the target's input `link`."""
    ui = load_ui(path)
    by_id = {node["id"]: node for node in ui["nodes"]}
    for link_id, source, source_slot, target, target_slot, kind in ui["links"]:
        output = by_id[source]["outputs"][source_slot]
        target_input = by_id[target]["inputs"][target_slot]
        assert link_id in output["links"] and output["type"] == kind
        assert target_input["link"] == link_id and target_input["type"] == kind


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_graph_checks(path, model_dirs):
    api = load_api(path)
    assert {node["class_type"] for node in api.values()} <= N.keys() | CORE_NODES.keys()
    assert check_api(api, N) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_headless_overrides_are_plain_values(path):
    """A headless script sets the prompt (through FlowSampler.positive), the seed and the loader files."""
    api = load_api(path)
    for sampler in (node for node in api.values() if node["class_type"] == "LuminaFlowSampler"):
        assert isinstance(sampler["inputs"]["seed"], int)
        positive = api[sampler["inputs"]["positive"][0]]
        assert positive["class_type"] in ENCODERS and isinstance(positive["inputs"]["prompt"], str)
    loaders = [node for node in api.values() if node["class_type"] in LOADERS]
    assert loaders and all(isinstance(node["inputs"]["file"], str) for node in loaders)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_runs_on_tiny_checkpoints(path, model_dirs, tmp_path):
    outputs = run_api_workflow(shrink(load_api(path)), N, tmp_path)
    saved = [p for ui in outputs.values() for p in ui["images"]]
    assert saved and all(p.parent == tmp_path and p.stem.endswith("_00001_") for p in saved)
    for image_path in saved:
        with Image.open(image_path) as image:
            assert image.size == (TINY_SETTINGS["width"], TINY_SETTINGS["height"]) and image.mode == "RGB"
            frames = getattr(image, "n_frames", 1)
            assert frames == (TINY_SETTINGS["frames"] if image_path.suffix == ".webp" else 1)
            assert np.ptp(np.asarray(image)) > 0


def test_video_workflow_carries_the_frame_rate_to_the_saved_file(model_dirs, tmp_path):
    api = shrink(load_api(ROOT / "api" / "ltxv_t2v.json"))
    next(n for n in api.values() if n["class_type"] == "LuminaFlowSampler")["inputs"]["frame_rate"] = 10.0
    outputs = run_api_workflow(api, N, tmp_path)
    (path,) = [p for ui in outputs.values() for p in ui["images"]]
    with Image.open(path) as video:
        video.load()
        assert video.n_frames == TINY_SETTINGS["frames"] and video.info["duration"] == 100  # ms per frame at 10 fps


def test_size_off_the_grid_fails_validation(model_dirs, tmp_path):
    api = shrink(load_api(ROOT / "api" / "lumina2_t2i.json"))
    next(n for n in api.values() if n["class_type"] == "LuminaFlowSampler")["inputs"]["width"] = 1000
    with pytest.raises(WorkflowError, match="multiple of 16") as failure:
        run_api_workflow(api, N, tmp_path)
    assert "\n" not in str(failure.value) and "LuminaFlowSampler" in str(failure.value)
    assert not list(tmp_path.iterdir())  # validation runs before any node


@pytest.mark.parametrize("encoder", ["gemma_2_2b_fp16.safetensors", "gemma_2b.safetensors"])
def test_a_text_encoder_of_the_other_family_names_both(encoder, model_dirs, tmp_path):
    """Gemma-2 features into Lumina-Next, or Gemma features into Lumina 2: one line naming both models."""
    workflow = "lumina_next_t2i.json" if encoder.startswith("gemma_2_2b") else "lumina2_t2i.json"
    api = shrink(load_api(ROOT / "api" / workflow))
    next(n for n in api.values() if n["class_type"] == "LuminaLoadGemma")["inputs"]["file"] = encoder
    with pytest.raises(InvalidInputError) as failure:
        run_api_workflow(api, N, tmp_path)
    message = str(failure.value)
    assert "Lumina-Next" in message and "Lumina-Image 2.0" in message and "\n" not in message


def test_save_image_counts_on_from_existing_files(tmp_path):
    (tmp_path / "x_00007_.png").touch()
    save = type("SaveImage", (CORE_NODES["SaveImage"],), {"output_dir": tmp_path})
    paths = save().save_images(torch.rand(2, 8, 8, 3), "x")["ui"]["images"]
    assert [p.name for p in paths] == ["x_00008_.png", "x_00009_.png"]


def _render(workflow: str, sampler_inputs: dict, folder: Path) -> np.ndarray:
    api = shrink(load_api(ROOT / "api" / workflow))
    next(n for n in api.values() if n["class_type"] == "LuminaFlowSampler")["inputs"].update(sampler_inputs)
    folder.mkdir()
    outputs = run_api_workflow(api, N, folder)
    with Image.open(next(p for ui in outputs.values() for p in ui["images"])) as image:
        return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize(
    "option", [{"context_drop_ratio": 2}, {"rope_scaling": "none", "proportional_attention": False},
               {"next_guide_first_3_channels": False}],
    ids=lambda o: next(iter(o)),
)  # fmt: skip
def test_lumina_next_options_reach_lumina_next_and_lumina2_ignores_them(option, model_dirs, tmp_path):
    # At 64x48, far below the 1024 px training size, proportional attention changes the softmax scale.
    for workflow, should_change in (("lumina_next_t2i.json", True), ("lumina2_t2i.json", False)):
        name = workflow.removesuffix(".json")
        base = _render(workflow, {}, tmp_path / f"{name}_base")
        changed = _render(workflow, option, tmp_path / f"{name}_changed")
        assert (np.abs(base - changed).max() > 0) == should_change, workflow


def test_video_sampler_takes_a_core_empty_ltxv_latent(model_dirs):
    """EmptyLTXVLatentVideo's LATENT (zeros, B x 128 x (length-1)/8+1 x H/32 x W/32) sets the video's size."""
    model = N["LuminaLoadTransformer"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    encoder = N["LuminaLoadT5"]().load("t5xxl_fp16.safetensors")[0]
    positive, negative = (N["LuminaT5Encode"]().encode(encoder, text, 128)[0] for text in ("a fox", ""))
    empty = {"samples": torch.zeros(1, 128, 2, 2, 3)}  # 9 frames of 96 x 64
    settings = {
        **{
            name: spec[1].get("default")
            for name, spec in N["LuminaFlowSampler"].INPUT_TYPES()["required"].items()
            if name not in ("model", "positive", "negative")
        },
        "steps": 2,
        "schedule": "ltx",
        "shift": 0.0,
    }
    (out,) = N["LuminaFlowSampler"]().sample(model, positive, negative, latent=empty, frame_rate=12.0, **settings)
    assert out["samples"].shape == (1, 128, 2, 2, 3) and out["frame_rate"] == 12.0
    assert out["samples"].abs().sum() > 0


def test_video_sizes_are_checked_before_any_weight_moves(model_dirs, monkeypatch):
    model = N["LuminaLoadTransformer"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    encoder = N["LuminaLoadT5"]().load("t5xxl_fp16.safetensors")[0]
    positive = N["LuminaT5Encode"]().encode(encoder, "a fox", 128)[0]
    loads = []
    monkeypatch.setattr(type(model), "load", lambda self, memory: loads.append(memory))
    settings = {name: spec[1].get("default") for name, spec in N["LuminaFlowSampler"].INPUT_TYPES()["required"].items()
                if name not in ("model", "positive", "negative")}  # fmt: skip
    with pytest.raises(InvalidInputError, match="width 80 is not allowed: LTX-Video needs sizes that are positive "
                       "multiples of 32"):  # fmt: skip
        N["LuminaFlowSampler"]().sample(model, positive, positive, **{**settings, "width": 80, "height": 64})
    assert loads == []


def test_text_encoder_nodes_name_the_right_node_for_the_other_family(model_dirs):
    with pytest.raises(InvalidInputError, match="load it with Load Gemma / Qwen3 Text Encoder"):
        N["LuminaLoadT5"]().load("gemma_2b.safetensors")
    with pytest.raises(InvalidInputError, match="load it with Load T5 Text Encoder"):
        N["LuminaLoadGemma"]().load("t5xxl_fp16.safetensors")
    t5 = N["LuminaLoadT5"]().load("t5xxl_fp16.safetensors")[0]
    with pytest.raises(InvalidInputError, match="encode with T5 Encode"):
        N["LuminaGemmaEncode"]().encode(t5, "a fox", "real")
    gemma = N["LuminaLoadGemma"]().load("gemma_2b.safetensors")[0]
    with pytest.raises(InvalidInputError, match="encode with Gemma / Qwen3 Encode"):
        N["LuminaT5Encode"]().encode(gemma, "a fox", 128)


def test_each_decoder_refuses_the_other_kind_of_vae(model_dirs):
    ltx_vae = N["LuminaLoadVAE"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    flux_vae = N["LuminaLoadVAE"]().load("ae.safetensors")[0]
    with pytest.raises(InvalidInputError, match="LTX-Video Decode"):
        N["LuminaVAEDecode"]().decode(ltx_vae, {"samples": torch.zeros(1, 16, 8, 8)})
    with pytest.raises(InvalidInputError, match="not an LTX-Video VAE"):
        N["LuminaLTXVideoDecode"]().decode(flux_vae, {"samples": torch.zeros(1, 128, 2, 2, 2)}, 0.05, 0.025, 0, 0, 57)


def test_video_decode_tiles_on_request(model_dirs):
    vae = N["LuminaLoadVAE"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    samples = {"samples": torch.randn(1, 128, 3, 4, 5, generator=torch.Generator().manual_seed(0)), "frame_rate": 8.0}
    decode = N["LuminaLTXVideoDecode"]().decode
    whole, frame_rate = decode(vae, samples, 0.05, 0.025, 0, 0, 57)
    assert whole.shape == (17, 128, 160, 3) and frame_rate == 8.0
    tiled = decode(vae, samples, 0.05, 0.025, 0, 64, 17)[0]  # 2 x 2 latent tiles, 2 latent frames
    assert tiled.shape == whole.shape and not torch.equal(tiled, whole)


def test_first_frame_image_to_video_keeps_the_encoded_image(model_dirs):
    model = N["LuminaLoadTransformer"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    vae = N["LuminaLoadVAE"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    encoder = N["LuminaLoadT5"]().load("t5xxl_fp16.safetensors")[0]
    positive, negative = (N["LuminaT5Encode"]().encode(encoder, text, 128)[0] for text in ("a fox", ""))
    image = torch.rand(1, 80, 120, 3, generator=torch.Generator().manual_seed(0))  # (B, H, W, C), cropped to 96x64
    settings = {
        **{
            name: spec[1].get("default")
            for name, spec in N["LuminaFlowSampler"].INPUT_TYPES()["required"].items()
            if name not in ("model", "positive", "negative")
        },
        **TINY_SETTINGS,
        "schedule": "ltx",
        "shift": 0.0,
    }
    sampler = N["LuminaFlowSampler"]()
    (out,) = sampler.sample(model, positive, negative, first_frame=image, vae=vae, **settings)
    expected, _ = first_frame_conditioning(vae.model, image.permute(0, 3, 1, 2), out["samples"].shape)
    assert torch.equal(out["samples"][:, :, :1], expected[:, :, :1])  # strength 1 keeps the first latent frame
    assert not torch.equal(out["samples"][:, :, 1:], expected[:, :, 1:])
    with pytest.raises(InvalidInputError, match="needs the LTX-Video VAE"):
        sampler.sample(model, positive, negative, first_frame=image, **settings)


def _ltxv_nodes():
    model = N["LuminaLoadTransformer"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    vae = N["LuminaLoadVAE"]().load("ltx-video-2b-v0.9.5.safetensors")[0]
    encoder = N["LuminaLoadT5"]().load("t5xxl_fp16.safetensors")[0]
    positive, negative = (N["LuminaT5Encode"]().encode(encoder, text, 128)[0] for text in ("a fox", ""))
    return model, vae, positive, negative


def _video_settings(**overrides) -> dict:
    defaults = {name: spec[1].get("default") for name, spec in N["LuminaFlowSampler"].INPUT_TYPES()["required"].items()
                if name not in ("model", "positive", "negative")}  # fmt: skip
    return {**defaults, **TINY_SETTINGS, "schedule": "ltx", "shift": 0.0, **overrides}


def test_guides_keep_the_first_frame_and_reach_the_last(model_dirs):
    model, vae, positive, negative = _ltxv_nodes()
    first, last = torch.rand(2, 1, 64, 96, 3, generator=torch.Generator().manual_seed(0))
    guide = N["LuminaLTXVideoGuide"]()
    (guides,) = guide.add(vae, first, 0, 1.0)
    (guides,) = guide.add(vae, last, -1, 1.0, guides=guides)
    sampler = N["LuminaFlowSampler"]()
    (out,) = sampler.sample(model, positive, negative, guides=guides, condition_noise=0.0, **_video_settings())
    encoded = encode_condition(vae.model, guides.items[0], 64, 96).latent
    assert torch.equal(out["samples"][:, :, :1], encoded)  # strength 1, no conditioning noise: kept exactly
    (only_first,) = guide.add(vae, first, 0, 1.0)
    (without_last,) = sampler.sample(model, positive, negative, guides=only_first, condition_noise=0.0,
                                     **_video_settings())  # fmt: skip
    assert not torch.equal(without_last["samples"][:, :, 1:], out["samples"][:, :, 1:])  # the last frame acts
    (noised,) = sampler.sample(model, positive, negative, guides=guides, **_video_settings())  # noise 0.15
    assert not torch.equal(noised["samples"][:, :, :1], encoded)


def test_guides_refuse_another_vae_and_image_models(model_dirs):
    model, vae, positive, negative = _ltxv_nodes()
    flux_vae = N["LuminaLoadVAE"]().load("ae.safetensors")[0]
    image = torch.rand(1, 64, 96, 3)
    with pytest.raises(InvalidInputError, match="is not an LTX-Video VAE: a video guide is encoded with"):
        N["LuminaLTXVideoGuide"]().add(flux_vae, image, 0, 1.0)
    (guides,) = N["LuminaLTXVideoGuide"]().add(vae, image, 0, 1.0)
    other_vae = type(vae)(vae.model, vae.patcher, vae.kind, vae.family, "another_ltx_vae.safetensors")
    with pytest.raises(InvalidInputError, match="connect the same LTX-Video VAE to every guide"):
        N["LuminaLTXVideoGuide"]().add(other_vae, image, -1, 1.0, guides=guides)
    lumina = N["LuminaLoadTransformer"]().load("lumina_2_model_bf16.safetensors")[0]
    gemma = N["LuminaLoadGemma"]().load("gemma_2_2b_fp16.safetensors")[0]
    prompt = N["LuminaGemmaEncode"]().encode(gemma, "a fox", "real")[0]
    with pytest.raises(InvalidInputError, match="guides are for LTX-Video models"):
        N["LuminaFlowSampler"]().sample(lumina, prompt, prompt, guides=guides, **{**_video_settings(),
                                        "schedule": "auto", "shift": -1.0})  # fmt: skip


def test_latent_upsample_and_a_refining_recipe(model_dirs):
    model, vae, positive, negative = _ltxv_nodes()
    (upsampler,) = N["LuminaLoadLatentUpsampler"]().load("ltxv-spatial-upscaler-0.9.8.safetensors")
    sampler = N["LuminaFlowSampler"]()
    (small,) = sampler.sample(model, positive, negative, recipe="ltxv-0.9.8-distilled", **_video_settings())
    (big,) = N["LuminaLTXVideoLatentUpsample"]().upsample(upsampler, vae, small, 1.0)
    assert big["samples"].shape == (1, 128, 2, 4, 6) and big["frame_rate"] == small["frame_rate"]
    (refined,) = sampler.sample(model, positive, negative, latent=big, recipe="ltxv-13b-0.9.8-distilled-refine",
                                **_video_settings())  # fmt: skip
    assert refined["samples"].shape == big["samples"].shape
    assert refined["samples"].abs().max() < big["samples"].abs().max() + 10  # finite, tone-mapped
    flux_vae = N["LuminaLoadVAE"]().load("ae.safetensors")[0]
    with pytest.raises(InvalidInputError, match="needs the LTX-Video VAE's statistics"):
        N["LuminaLTXVideoLatentUpsample"]().upsample(upsampler, flux_vae, small, 1.0)
    with pytest.raises(InvalidInputError, match=r"takes a video latent \(B, 128, T, H, W\); got \(1, 16, 8, 8\)"):
        N["LuminaLTXVideoLatentUpsample"]().upsample(upsampler, vae, {"samples": torch.zeros(1, 16, 8, 8)}, 1.0)


def test_video_to_video_from_encoded_frames(model_dirs):
    model, vae, positive, negative = _ltxv_nodes()
    frames = torch.rand(10, 80, 100, 3, generator=torch.Generator().manual_seed(1))  # 10 frames, another size
    with pytest.warns(UserWarning) as caught:
        (latent,) = N["LuminaLTXVideoEncode"]().encode(vae, frames, 96, 64)
    assert [str(w.message) for w in caught] == [
        "the input video has 10 frames; LTX-Video encodes 8k + 1, so its first 9 are used",
        "the input video is 100x80; it was centre-cropped to the video's aspect ratio and resized to 96x64",
    ]
    assert latent["samples"].shape == (1, 128, 2, 2, 3)
    sampler = N["LuminaFlowSampler"]()
    (light,) = sampler.sample(model, positive, negative, latent=latent, **_video_settings(denoise=0.2))
    (heavy,) = sampler.sample(model, positive, negative, latent=latent, **_video_settings(denoise=0.9))
    change = [(out["samples"] - latent["samples"]).norm() for out in (light, heavy)]
    assert 0 < change[0] < change[1]  # denoise sets how far the video moves


def test_zimage_turbo_workflow_runs_the_turbo_recipe_without_a_negative(model_dirs, tmp_path, monkeypatch):
    """The shipped Z-Image-Turbo graph: Qwen3 through the Gemma / Qwen3 nodes, 8 euler steps at cfg 1 with no
    negative connected, shift and renorm on auto (3 and 0, the family's)."""
    seen = {}
    real_sample = core.sample

    def spy(model, positive, negative, **settings):
        seen.update(settings, family=model.family, negative=negative, text=positive.family)
        return real_sample(model, positive, negative, **settings)

    monkeypatch.setattr(core, "sample", spy)
    api = load_api(ROOT / "api" / "zimage_turbo_t2i.json")
    assert "negative" not in api["5"]["inputs"]
    run_api_workflow(shrink(api), {**N, **CORE_NODES}, tmp_path)
    assert (seen["family"], seen["text"], seen["negative"]) == ("zimage", "zimage", None)
    assert (seen["steps"], seen["cfg"], seen["shift"], seen["renorm_cfg"], seen["solver"]) == (
        2,
        1.0,
        3.0,
        0.0,
        "euler",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["zimage_turbo_t2i_00001_.png"]


def test_guidance_without_a_negative_is_named(model_dirs):
    model = N["LuminaLoadTransformer"]().load("z_image_turbo_bf16.safetensors")[0]
    encoder = N["LuminaLoadGemma"]().load("qwen_3_4b.safetensors")[0]
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a fox", "real")[0]
    settings = {name: spec[1].get("default") for name, spec in N["LuminaFlowSampler"].INPUT_TYPES()["required"].items()
                if name not in ("model", "positive")}  # fmt: skip
    with pytest.raises(InvalidInputError, match="cfg 4.0 guides away from a negative prompt, but none is connected"):
        N["LuminaFlowSampler"]().sample(model, positive, **{**settings, "width": 64, "height": 48, "steps": 1})


def test_a_gemma_conditioning_for_zimage_names_both_models(model_dirs):
    model = N["LuminaLoadTransformer"]().load("z_image_turbo_bf16.safetensors")[0]
    gemma = N["LuminaLoadGemma"]().load("gemma_2_2b_fp16.safetensors")[0]
    positive = N["LuminaGemmaEncode"]().encode(gemma, "a fox", "real")[0]
    settings = {name: spec[1].get("default") for name, spec in N["LuminaFlowSampler"].INPUT_TYPES()["required"].items()
                if name not in ("model", "positive")}  # fmt: skip
    with pytest.raises(InvalidInputError, match=r"Gemma-2-2B.*Lumina-Image 2\.0.*Z-Image.*Qwen3-4B"):
        N["LuminaFlowSampler"]().sample(model, positive, **{**settings, "cfg": 1.0, "width": 64, "height": 48})
