"""The node classes called directly, as ComfyUI calls them, on tiny checkpoints in temporary model folders."""

import gc
import weakref

import numpy as np
import pytest
import torch

import nodes
from lumina_core import tiny
from lumina_core.errors import InvalidInputError, UnsupportedModelError
from lumina_core.pipeline import ImageRequest, text_to_image
from nodes import comfy_bridge

N = nodes.NODE_CLASS_MAPPINGS
SETTINGS = dict(width=64, height=48, batch_size=1, seed=3, steps=2, cfg=4.0, shift=6.0, solver="euler",
                schedule="shifted_linear", cfg_trunc=1.0, cfg_renorm=1.0, denoise=1.0)  # fmt: skip


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """models/{diffusion_models,text_encoders,vae,checkpoints} with tiny files, registered like ComfyUI's."""
    root = tmp_path_factory.mktemp("models")
    transformer, gemma, vae = tiny.make_transformer(0), tiny.make_gemma(0), tiny.make_vae(0)
    spm = tiny.train_tokenizer()
    for key, sub in (("lumina_diffusion_models", "diffusion_models"), ("lumina_text_encoders", "text_encoders"),
                     ("lumina_vae", "vae"), ("lumina_diffusion_models", "checkpoints"),
                     ("lumina_text_encoders", "checkpoints"), ("lumina_vae", "checkpoints")):  # fmt: skip
        (root / sub).mkdir(exist_ok=True)
        comfy_bridge.register_folder(key, root / sub)
    tiny.write_transformer(transformer, "original.safetensors", root / "diffusion_models")
    tiny.write_text_encoder(gemma, spm, "comfy.safetensors", root / "text_encoders")
    tiny.write_vae(vae, "ae.safetensors", root / "vae")
    tiny.write_all_in_one(transformer, gemma, spm, vae, root / "checkpoints" / "lumina_aio.safetensors")
    tiny.write_vae(vae, "ae.safetensors", root / "diffusion_models")  # a VAE in the wrong folder
    (root / "diffusion_models" / "notes.txt").write_text("not a model")
    yield root
    comfy_bridge._standalone_folders.clear()


def load_all(file_dit="original.safetensors", file_te="comfy.safetensors", file_vae="ae.safetensors"):
    model = N["LoadLuminaTransformer"]().load(file_dit, weight_dtype="fp32", device="cpu")[0]
    encoder = N["LoadGemma"]().load(file_te, weight_dtype="fp32", device="cpu")[0]
    vae = N["LoadLuminaVAE"]().load(file_vae, device="cpu")[0]
    return model, encoder, vae


def run_graph(model, encoder, vae, **overrides):
    positive = N["GemmaEncode"]().encode(encoder, "a red fox in snow", "real")[0]
    negative = N["GemmaEncode"]().encode(encoder, "", "real")[0]
    latent = N["FlowSampler"]().sample(model, positive, negative, **{**SETTINGS, **overrides})[0]
    return latent, N["LuminaVAEDecode"]().decode(vae, latent)[0]


def test_dropdowns_list_model_files_only(model_dirs):
    files = N["LoadLuminaTransformer"].INPUT_TYPES()["required"]["file"][0]
    assert files == ["ae.safetensors", "lumina_aio.safetensors", "original.safetensors"]
    assert "comfy.safetensors" in N["LoadGemma"].INPUT_TYPES()["required"]["file"][0]


def test_graph_matches_the_plain_python_pipeline(model_dirs):
    latent, image = run_graph(*load_all())
    assert latent["samples"].shape == (1, 16, 6, 8)
    assert image.shape == (1, 48, 64, 3) and image.min() >= 0 and image.max() <= 1
    request = ImageRequest(prompt="a red fox in snow", width=64, height=48, seed=3, steps=2)
    expected = text_to_image(model_dirs / "diffusion_models" / "original.safetensors",
                             model_dirs / "text_encoders" / "comfy.safetensors", model_dirs / "vae" / "ae.safetensors",
                             request)[0]  # fmt: skip
    # The LATENT between nodes is in VAE space: one round trip of float rounding may move a pixel by 1/255.
    ours = (image[0] * 255).round().to(torch.uint8).numpy().astype(int)
    assert np.abs(np.asarray(expected).astype(int) - ours).max() <= 1


def test_all_in_one_file_feeds_every_loader(model_dirs):
    _, from_parts = run_graph(*load_all())
    _, from_one_file = run_graph(*load_all(*(["lumina_aio.safetensors"] * 3)))
    assert torch.equal(from_parts, from_one_file)


def test_img2img_from_a_latent(model_dirs):
    model, encoder, vae = load_all()
    latent, _ = run_graph(model, encoder, vae)
    positive = N["GemmaEncode"]().encode(encoder, "a fox", "real")[0]
    img2img = N["FlowSampler"]().sample(model, positive, positive, **{**SETTINGS, "denoise": 0.3}, latent=latent)[0]
    assert img2img["samples"].shape == latent["samples"].shape


def test_validate_inputs_says_the_rule():
    validate = N["FlowSampler"].VALIDATE_INPUTS
    assert validate(width=64, height=48) is True
    assert validate(width=1000, height=48) == "width 1000 is not a multiple of 16; try 992."
    # ComfyUI skips its own range checks for inputs VALIDATE_INPUTS takes, so ours must catch them
    assert validate(width=8192, height=48) == "width 8192 is outside 16..4096."
    assert validate(width=64, height=-16) == "height -16 is outside 16..4096."


def test_settings_are_checked_before_sampling(model_dirs):
    model, encoder, _ = load_all()
    positive = N["GemmaEncode"]().encode(encoder, "a fox", "real")[0]
    with pytest.raises(InvalidInputError, match="cfg_trunc"):
        N["FlowSampler"]().sample(model, positive, positive, **{**SETTINGS, "cfg_trunc": -0.5})


def test_file_not_in_the_dropdown_is_refused(model_dirs):
    with pytest.raises(ValueError, match="not in the diffusion_models folders"):
        N["LoadLuminaTransformer"]().load("../../etc/passwd", weight_dtype="fp32", device="cpu")
    with pytest.raises(ValueError, match="not in the diffusion_models folders"):
        N["LoadLuminaTransformer"]().load("notes.txt", weight_dtype="fp32", device="cpu")


def test_file_of_another_kind_is_named(model_dirs):
    with pytest.raises(UnsupportedModelError, match="holds a VAE"):
        N["LoadLuminaTransformer"]().load("ae.safetensors", weight_dtype="fp32", device="cpu")


def test_conditioning_from_another_encoder_is_named(model_dirs):
    model, encoder, _ = load_all()
    positive = N["GemmaEncode"]().encode(encoder, "a fox", "real")[0]
    wrong = type(positive)(torch.zeros(1, 4, 48), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="different widths \\[32, 48\\]"):
        N["FlowSampler"]().sample(model, positive, wrong, **SETTINGS)


def test_dropping_a_loader_output_frees_the_model(model_dirs):
    handle = N["LoadLuminaTransformer"]().load("original.safetensors", weight_dtype="fp32", device="cpu")[0]
    ref = weakref.ref(handle.model)
    del handle
    gc.collect()
    assert ref() is None


def test_cancel_stops_sampling_between_transformer_blocks(model_dirs, monkeypatch):
    model, encoder, _ = load_all()
    positive = N["GemmaEncode"]().encode(encoder, "a fox", "real")[0]
    calls = []

    class Interrupted(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted

    monkeypatch.setattr(comfy_bridge, "check_interrupted", interrupt)
    finished_calls = []
    hook = model.model.final_layer.register_forward_hook(lambda *args: finished_calls.append(1))
    with pytest.raises(Interrupted):
        N["FlowSampler"]().sample(model, positive, positive, **{**SETTINGS, "steps": 5})
    hook.remove()
    assert len(calls) == 2 and finished_calls == []  # checked before each of the 4 blocks: it stopped in the first call


def test_vae_decode_of_a_nan_vae_fails_naming_the_stage_and_the_file(model_dirs):
    from safetensors.torch import load_file, save_file

    from lumina_core.errors import DecodeError

    weights = load_file(model_dirs / "vae" / "ae.safetensors")
    weights["decoder.conv_out.weight"][0] = float("nan")  # the red channel
    save_file(weights, model_dirs / "vae" / "ae_nan.safetensors")
    model, encoder, _ = load_all()
    vae = N["LoadLuminaVAE"]().load("ae_nan.safetensors", device="cpu")[0]
    positive = N["GemmaEncode"]().encode(encoder, "a fox", "real")[0]
    latent = N["FlowSampler"]().sample(model, positive, positive, **SETTINGS)[0]
    with pytest.raises(DecodeError, match=r"^VAE decode \(.*ae_nan\.safetensors\) made NaN/inf pixels .* "
                       r"decoder\.conv_out\.weight holds 288 NaN"):  # fmt: skip
        N["LuminaVAEDecode"]().decode(vae, latent)
