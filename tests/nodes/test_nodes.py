"""The node classes called directly, as ComfyUI calls them, on tiny checkpoints in temporary model folders."""

import gc
import weakref

import numpy as np
import pytest
import torch

from lumina_core import tiny
from lumina_core.pipeline import ImageRequest, text_to_image
from tests.pack import core, nodes

InvalidInputError, UnsupportedModelError = core.InvalidInputError, core.UnsupportedModelError
comfy_bridge = nodes.comfy_bridge
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
    model = N["LuminaLoadTransformer"]().load(file_dit, weight_dtype="fp32")[0]
    encoder = N["LuminaLoadGemma"]().load(file_te, weight_dtype="fp32")[0]
    vae = N["LuminaLoadVAE"]().load(file_vae)[0]
    return model, encoder, vae


def encode(encoder, prompt="a red fox in snow"):
    return N["LuminaGemmaEncode"]().encode(encoder, prompt, "real")[0]


def run_graph(model, encoder, vae, **overrides):
    positive, negative = encode(encoder), encode(encoder, "")
    latent = N["LuminaFlowSampler"]().sample(model, positive, negative, **{**SETTINGS, **overrides})[0]
    return latent, N["LuminaVAEDecode"]().decode(vae, latent)[0]


def test_node_ids_follow_one_scheme():
    """Every node registers as "Lumina" + its class name without "Lumina", and every node class is registered."""
    assert {key: cls.__name__ for key, cls in N.items()} == {
        "Lumina" + cls.__name__.replace("Lumina", ""): cls.__name__ for cls in N.values()
    }
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS.keys() == N.keys()
    node_classes = {cls for module in (nodes.loaders, nodes.lora, nodes.sampling, nodes.decode, nodes.video)
                    for cls in vars(module).values()
                    if isinstance(cls, type) and hasattr(cls, "FUNCTION") and hasattr(cls, "DISPLAY_NAME")}  # fmt: skip
    assert node_classes == set(N.values())
    assert {"LuminaFlowSampler", "LuminaGGUFLoader", "LuminaLoadTransformer", "LuminaVAEDecode"} <= N.keys()


def test_no_device_widget(model_dirs):
    for cls in N.values():
        assert "device" not in cls.INPUT_TYPES().get("required", {}), cls.__name__


def test_dropdowns_list_model_files_only(model_dirs):
    files = N["LuminaLoadTransformer"].INPUT_TYPES()["required"]["file"][0]
    assert files == ["ae.safetensors", "lumina_aio.safetensors", "original.safetensors"]
    assert "comfy.safetensors" in N["LuminaLoadGemma"].INPUT_TYPES()["required"]["file"][0]


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


def test_img2img_follows_the_latent_contract(model_dirs):
    """The LATENT between nodes is raw VAE space: the sampler converts it to model space, runs sample(init_latent=...)
    with the node's denoise, and converts back."""
    model, encoder, vae = load_all()
    latent, _ = run_graph(model, encoder, vae)
    positive, negative = encode(encoder, "a fox"), encode(encoder, "")
    settings = {**SETTINGS, "denoise": 0.6, "seed": 5}
    ours = N["LuminaFlowSampler"]().sample(model, positive, negative, **settings, latent=latent)[0]["samples"]
    module, form = model.model, model.model.latent_format

    def sampled(init, denoise=0.6):
        options = dict(width=64, height=48, seed=5, steps=2, cfg=4.0, shift=6.0, solver="euler", renorm_cfg=1.0)
        return form.to_raw(core.sample(module, positive, negative, init_latent=init, denoise=denoise, **options))

    expected = sampled(form.to_model(latent["samples"]))
    assert torch.allclose(ours, expected, atol=1e-6)
    # What the comparison catches: a raw latent handed on as if it were model space, or denoise left at 1.
    assert (ours - sampled(latent["samples"])).abs().max() > 0.05
    assert (ours - sampled(form.to_model(latent["samples"]), denoise=1.0)).abs().max() > 0.05


def test_auto_settings_are_the_familys_recipe(model_dirs):
    model, encoder, _ = load_all()
    positive, negative = encode(encoder), encode(encoder, "")
    sampler = N["LuminaFlowSampler"]()
    defaults = {name: spec[1]["default"] for name, spec in sampler.INPUT_TYPES()["required"].items()
                if name in ("shift", "schedule", "cfg_renorm")}  # fmt: skip
    assert defaults == {"shift": -1.0, "schedule": "auto", "cfg_renorm": -1.0}
    auto = sampler.sample(model, positive, negative, **{**SETTINGS, **defaults})[0]["samples"]
    explicit = sampler.sample(model, positive, negative, **SETTINGS)[0]["samples"]  # 6, shifted_linear, 1
    assert torch.equal(auto, explicit)
    other = sampler.sample(model, positive, negative, **{**SETTINGS, "shift": 3.0})[0]["samples"]
    assert not torch.equal(auto, other)


def test_validate_inputs_says_the_rule():
    validate = N["LuminaFlowSampler"].VALIDATE_INPUTS
    assert validate(width=64, height=48) is True
    assert validate(width=1000, height=48) == "width 1000 is not a multiple of 16; try 992."
    # ComfyUI skips its own range checks for inputs VALIDATE_INPUTS takes, so ours must catch them
    assert validate(width=8192, height=48) == "width 8192 is outside 16..4096."
    assert validate(width=64, height=-16) == "height -16 is outside 16..4096."


def test_settings_are_checked_before_sampling(model_dirs):
    model, encoder, _ = load_all()
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a fox", "real")[0]
    with pytest.raises(InvalidInputError, match="cfg_trunc"):
        N["LuminaFlowSampler"]().sample(model, positive, positive, **{**SETTINGS, "cfg_trunc": -0.5})


def test_file_not_in_the_dropdown_is_refused(model_dirs):
    with pytest.raises(ValueError, match="not in the diffusion_models folders"):
        N["LuminaLoadTransformer"]().load("../../etc/passwd", weight_dtype="fp32")
    with pytest.raises(ValueError, match="not in the diffusion_models folders"):
        N["LuminaLoadTransformer"]().load("notes.txt", weight_dtype="fp32")


def test_file_of_another_kind_is_named(model_dirs):
    with pytest.raises(UnsupportedModelError, match="holds a VAE"):
        N["LuminaLoadTransformer"]().load("ae.safetensors", weight_dtype="fp32")


def test_conditioning_from_another_encoder_is_named(model_dirs):
    model, encoder, _ = load_all()
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a fox", "real")[0]
    wrong = type(positive)(torch.zeros(1, 4, 48), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(InvalidInputError, match="different widths \\[32, 48\\]"):
        N["LuminaFlowSampler"]().sample(model, positive, wrong, **SETTINGS)


def test_dropping_a_loader_output_frees_the_model(model_dirs):
    handle = N["LuminaLoadTransformer"]().load("original.safetensors", weight_dtype="fp32")[0]
    ref = weakref.ref(handle.model)
    del handle
    gc.collect()
    assert ref() is None


def test_cancel_stops_sampling_between_transformer_blocks(model_dirs, monkeypatch):
    model, encoder, _ = load_all()
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a fox", "real")[0]
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
        N["LuminaFlowSampler"]().sample(model, positive, positive, **{**SETTINGS, "steps": 5})
    hook.remove()
    assert len(calls) == 2 and finished_calls == []  # checked before each of the 4 blocks: it stopped in the first call


def test_vae_decode_of_a_nan_vae_fails_naming_the_stage_and_the_file(model_dirs):
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dirs / "vae" / "ae.safetensors")
    weights["decoder.conv_out.weight"][0] = float("nan")  # the red channel
    save_file(weights, model_dirs / "vae" / "ae_nan.safetensors")
    model, encoder, _ = load_all()
    vae = N["LuminaLoadVAE"]().load("ae_nan.safetensors")[0]
    positive = N["LuminaGemmaEncode"]().encode(encoder, "a fox", "real")[0]
    latent = N["LuminaFlowSampler"]().sample(model, positive, positive, **SETTINGS)[0]
    with pytest.raises(core.errors.DecodeError, match=r"^VAE decode \(.*ae_nan\.safetensors\) made NaN/inf pixels .* "
                       r"decoder\.conv_out\.weight holds 288 NaN"):  # fmt: skip
        N["LuminaVAEDecode"]().decode(vae, latent)


def test_compile_and_step_cache_options_reach_the_sampler(model_dirs, monkeypatch):
    model, encoder, vae = load_all()
    plain = run_graph(model, encoder, vae, steps=4)[0]["samples"]
    cached = run_graph(model, encoder, vae, steps=4, step_cache=100.0)[0]["samples"]  # skips both middle steps
    assert not torch.equal(cached, plain)
    assert torch.equal(run_graph(model, encoder, vae, steps=4, step_cache=0.0)[0]["samples"], plain)  # 0 = off
    backends = []  # compile=True asks for inductor; traced here by the eager backend (inductor takes minutes on a CPU)
    sampler = core.sampling.sampler
    monkeypatch.setattr(sampler, "compiled", lambda module, backend: backends.append(backend) or
                        sampler.CompiledModel(module, "eager"))  # fmt: skip
    compiled = run_graph(model, encoder, vae, steps=4, compile=True)[0]["samples"]
    assert backends == ["inductor"] and torch.equal(compiled, plain)
