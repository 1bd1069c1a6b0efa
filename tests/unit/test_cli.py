"""The command line and the end-to-end pipeline on tiny checkpoints, including its failure messages."""

import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

from lumina_core import tiny
from lumina_core.__main__ import main
from lumina_core.outputs import save_images
from tests.fixtures.lora_files import linear_shapes, random_changes, write_lora


@pytest.fixture(scope="module")
def all_in_one(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return tiny.write_all_in_one(
        tiny.make_transformer(0), tiny.make_gemma(0), tiny.train_tokenizer(), tiny.make_vae(0),
        folder / "lumina_aio.safetensors",
    )  # fmt: skip


def generate(path, out, *extra):
    return main(["generate", "--transformer", str(path), "--prompt", "a fox", "--steps", "2",
                 "--width", "64", "--height", "48", "--out", str(out), *extra])  # fmt: skip


def test_generate_writes_a_png_per_image(all_in_one, tmp_path):
    assert generate(all_in_one, tmp_path / "fox.png", "--batch-size", "2", "--solver", "heun") == 0
    for name in ("fox_0.png", "fox_1.png"):
        assert Image.open(tmp_path / name).size == (64, 48)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fox_0.png", "fox_1.png"]  # no temporary files left


def test_same_seed_same_picture(all_in_one, tmp_path):
    generate(all_in_one, tmp_path / "a.png", "--seed", "7")
    generate(all_in_one, tmp_path / "b.png", "--seed", "7")
    assert Image.open(tmp_path / "a.png").tobytes() == Image.open(tmp_path / "b.png").tobytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--width", "1000"], "width 1000 is not allowed"),
        (["--steps", "0"], "steps"),
        (["--solver", "euler", "--cfg", "-1"], "cfg"),
        (["--cache", "-1"], "step-cache threshold"),
    ],
)
def test_bad_settings_fail_with_one_readable_line(all_in_one, tmp_path, capsys, args, message):
    assert generate(all_in_one, tmp_path / "x.png", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_lora_option_changes_the_picture_and_strength_0_does_not(all_in_one, tmp_path, capsys):
    changes = random_changes(linear_shapes(tiny.make_transformer(0)), rank=4, seed=1, std=0.5)
    lora = write_lora(tmp_path / "style.safetensors", changes, "kohya")
    pictures = {}
    for name, extra in {"base": [], "off": ["--lora", f"{lora}:0"], "on": ["--lora", f"{lora}:0.9"]}.items():
        assert generate(all_in_one, tmp_path / f"{name}.png", *extra) == 0
        pictures[name] = Image.open(tmp_path / f"{name}.png").tobytes()
    assert pictures["off"] == pictures["base"] != pictures["on"]
    capsys.readouterr()  # the progress bars so far
    assert generate(all_in_one, tmp_path / "x.png", "--lora", str(all_in_one)) == 2
    assert "holds no LoRA factors" in one_line_error(capsys)


def test_step_cache_and_compile_options(all_in_one, tmp_path, monkeypatch):
    from lumina_core.sampling import sampler

    generate(all_in_one, tmp_path / "plain.png", "--steps", "4")
    generate(all_in_one, tmp_path / "zero.png", "--steps", "4", "--cache", "0")  # threshold 0 never skips
    generate(all_in_one, tmp_path / "cached.png", "--steps", "4", "--cache", "100")  # skips both middle steps
    pixels = {name: Image.open(tmp_path / f"{name}.png").tobytes() for name in ("plain", "zero", "cached")}
    assert pixels["zero"] == pixels["plain"] != pixels["cached"]

    backends = []  # --compile reaches sample(); traced here by the eager backend (inductor takes minutes on a CPU)
    monkeypatch.setattr(sampler, "compiled", lambda model, backend: backends.append(backend) or
                        sampler.CompiledModel(model, "eager"))  # fmt: skip
    assert generate(all_in_one, tmp_path / "compiled.png", "--steps", "4", "--compile") == 0
    assert backends == ["inductor"]
    assert Image.open(tmp_path / "compiled.png").tobytes() == pixels["plain"]


def test_wrong_file_for_the_text_encoder_names_it(all_in_one, tmp_path, capsys):
    vae_only = tiny.write_vae(tiny.make_vae(0), "ae.safetensors", tmp_path)
    assert generate(all_in_one, tmp_path / "x.png", "--text-encoder", str(vae_only)) == 2
    assert str(vae_only) in capsys.readouterr().err


def test_inspect_reports_family_and_config(all_in_one, capsys):
    assert main(["inspect", str(all_in_one)]) == 0
    out = capsys.readouterr().out
    assert "Lumina-Image 2.0 transformer under 'model.diffusion_model.'" in out
    assert "Gemma-2 text encoder" in out and "VAE" in out
    assert "transformer family: lumina2" in out and "dim=64" in out


@pytest.mark.parametrize(
    ("out", "saved", "image_format"), [("result", "result.png", "PNG"), ("a.JPG", "a.JPG", "JPEG")]
)
def test_save_images_format_follows_the_suffix_png_without_one(tmp_path, out, saved, image_format):
    assert save_images([Image.new("RGB", (8, 8))], tmp_path / out) == [tmp_path / saved]
    assert Image.open(tmp_path / saved).format == image_format


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    return err


def test_unsupported_out_suffix_fails_before_sampling(all_in_one, tmp_path, capsys):
    assert generate(all_in_one, tmp_path / "fox.tga") == 2
    err = one_line_error(capsys)
    assert "'.tga'" in err and ".png, .jpg, .jpeg, .webp" in err
    assert list(tmp_path.iterdir()) == []


def test_cuda_without_cuda_fails_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert generate(tmp_path / "never_read.safetensors", tmp_path / "x.png", "--device", "cuda") == 2
    err = one_line_error(capsys)
    assert "--device cuda asked for, but this torch has no CUDA device; use --device cpu or auto" in err


def test_unknown_device_name_fails_with_one_line(tmp_path, capsys):
    assert generate(tmp_path / "never_read.safetensors", tmp_path / "x.png", "--device", "gpu0") == 2
    assert "'gpu0' is not a device name" in one_line_error(capsys)


@pytest.fixture(scope="module")
def ltxv_files(tmp_path_factory):
    """The Lightricks single file (transformer + VAE) and a T5 file with its tokenizer beside it."""
    folder = tmp_path_factory.mktemp("ltxv")
    checkpoint = tiny.write_ltxv_all_in_one(tiny.make_ltxv_transformer(0), tiny.make_ltx_vae(0), folder / "ltx.sft")
    t5 = tiny.write_t5_text_encoder(tiny.make_t5(0), tiny.train_t5_tokenizer(), "comfy.safetensors", folder)
    return checkpoint, t5


def generate_video(files, out, *extra):
    checkpoint, t5 = files
    return main(["generate", "--transformer", str(checkpoint), "--text-encoder", str(t5), "--tokenizer",
                 str(t5.parent / "t5_tokenizer"), "--prompt", "a fox runs", "--steps", "2", "--width", "96",
                 "--height", "64", "--frames", "9", "--frame-rate", "12", "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize("suffix", [".webp", ".mp4"])
def test_generate_with_a_video_model_writes_a_video(ltxv_files, tmp_path, suffix):
    if suffix == ".mp4":
        av = pytest.importorskip("av")
    assert generate_video(ltxv_files, tmp_path / f"fox{suffix}") == 0
    path = tmp_path / f"fox{suffix}"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    if suffix == ".webp":
        with Image.open(path) as video:
            video.load()
            assert (video.size, video.n_frames, video.info["duration"]) == ((96, 64), 9, 83)  # 1000 / 12 fps
    else:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = [frame for frame in container.decode(stream)]
            assert (stream.width, stream.height, len(frames), float(stream.average_rate)) == (96, 64, 9, 12.0)


def test_video_size_off_the_rule_names_the_rule(ltxv_files, tmp_path, capsys):
    assert generate_video(ltxv_files, tmp_path / "x.webp", "--frames", "10") == 2
    err = one_line_error(capsys)
    assert "8k + 1" in err and "97" not in err or "nearest" in err
    assert list(tmp_path.iterdir()) == []


def test_image_suffix_for_a_video_model_fails_before_sampling(ltxv_files, tmp_path, capsys):
    assert generate_video(ltxv_files, tmp_path / "x.png") == 2
    assert ".mp4, .webp" in one_line_error(capsys)


def test_outputs_get_the_usual_file_permissions(tmp_path):
    import os

    image = Image.new("RGB", (8, 8))
    (path,) = save_images([image], tmp_path / "x.png")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_an_image_vae_for_a_video_model_fails_before_anything_runs(ltxv_files, all_in_one, tmp_path, capsys):
    assert generate_video(ltxv_files, tmp_path / "x.webp", "--vae", str(all_in_one)) == 2
    assert "holds an image VAE; this model needs LTX-Video's video VAE" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


# ---- LTX-Video: conditions, video-to-video, recipes, multi-scale ----


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    frames = [Image.new("RGB", (96, 64), (40 * i, 255 - 20 * i, 90)) for i in range(10)]
    frames[0].save(folder / "first.png")
    Image.new("RGB", (160, 90), (200, 30, 30)).save(folder / "last_wide.jpg")  # another size and aspect ratio
    frames[0].save(folder / "clip.webp", save_all=True, append_images=frames[1:], duration=40)  # 10 frames
    (folder / "notes.txt").write_text("not an image")
    upsampler = tiny.write_latent_upsampler(tiny.make_latent_upsampler(0), folder / "up.safetensors")
    return {name: folder / name for name in ("first.png", "last_wide.jpg", "clip.webp", "notes.txt")} | {
        "upsampler": upsampler
    }


def video_size(path) -> tuple[tuple[int, int], int]:
    with Image.open(path) as video:
        return video.size, video.n_frames


def test_first_and_last_frame_conditions(ltxv_files, media_files, tmp_path):
    with pytest.warns(UserWarning, match=r"condition 2 is 160x90; it was centre-cropped .* resized to 96x64"):
        code = generate_video(ltxv_files, tmp_path / "fl.webp", "--condition", str(media_files["first.png"]),
                              "--condition", str(media_files["last_wide.jpg"]), "-1", "0.9")  # fmt: skip
    assert code == 0 and video_size(tmp_path / "fl.webp") == ((96, 64), 9)


def test_video_to_video_and_a_recipe(ltxv_files, media_files, tmp_path):
    with pytest.warns(UserWarning, match="has 10 frames; LTX-Video encodes 8k \\+ 1, so its first 9 are used"):
        code = generate_video(ltxv_files, tmp_path / "v2v.webp", "--input-video", str(media_files["clip.webp"]),
                              "--denoise", "0.5", "--frames", "17")  # fmt: skip
    assert code == 0 and video_size(tmp_path / "v2v.webp") == ((96, 64), 9)  # the input's length
    assert generate_video(ltxv_files, tmp_path / "d.webp", "--recipe", "ltxv-0.9.8-distilled") == 0


def test_the_multiscale_recipe_renders_at_twice_the_small_size(ltxv_files, media_files, tmp_path):
    out = tmp_path / "ms.webp"
    with pytest.warns(UserWarning, match="condition 1 is 96x64; .* resized to 128x64"):  # then to 256x128
        code = generate_video(
            ltxv_files, out, "--width", "192", "--height", "96", "--upsampler", str(media_files["upsampler"]),
            "--recipe", "ltxv-0.9.8-distilled", "--refine-recipe", "ltxv-13b-0.9.8-distilled-refine",
            "--condition", str(media_files["first.png"]),
        )  # fmt: skip
    assert code == 0 and video_size(out) == ((256, 128), 9)  # 192x96 x 2/3 = 128x64, refined at x2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--condition", "@first.png", "9"], r"condition 1 \(image\) is at frame 9, outside the 9-frame video"),
        (["--condition", "@notes.txt"], r"notes.txt is neither an image nor a video"),
        (["--condition", "@first.png", "middle"], "--condition .* FRAME must be a whole number"),
        (["--upsampler", "@checkpoint"], r"holds an LTX-Video transformer .*; load_latent_upsampler loads"),
        (["--recipe", "ltxv-0.9.8-distilled", "--input-video", "@clip.webp", "--denoise", "0.5"],
         "denoise=0.5 and explicit sigmas were both given"),
    ],
)  # fmt: skip
def test_bad_video_inputs_fail_with_one_line(ltxv_files, media_files, tmp_path, capsys, extra, message):
    files = {**media_files, "checkpoint": ltxv_files[0]}
    extra = [str(files[arg[1:]]) if arg.startswith("@") else arg for arg in extra]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the input video's frame count
        assert generate_video(ltxv_files, tmp_path / "x.webp", *extra) == 2
    assert re.search(message, one_line_error(capsys))
    assert not (tmp_path / "x.webp").exists()


@pytest.fixture(scope="module")
def zimage_files(tmp_path_factory):
    """A Z-Image file, ComfyUI's single-file Qwen3 (its tokenizer in qwen_tokenizer/ beside it) and the FLUX VAE."""
    folder = tmp_path_factory.mktemp("zimage")
    transformer = tiny.write_transformer(tiny.make_transformer(0, tiny.TINY_ZIMAGE), "original.safetensors", folder)
    qwen3 = tiny.write_qwen3_text_encoder(tiny.make_qwen3(0), tiny.train_qwen_tokenizer(), "comfy.safetensors", folder)
    return transformer, qwen3, tiny.write_vae(tiny.make_vae(0), "ae.safetensors", folder)


def generate_zimage(files, out, *extra):
    transformer, qwen3, vae = files
    return main(["generate", "--transformer", str(transformer), "--text-encoder", str(qwen3), "--vae", str(vae),
                 "--tokenizer", str(qwen3.parent / "qwen_tokenizer"), "--prompt", "a fox", "--width", "64",
                 "--height", "48", "--out", str(out), *extra])  # fmt: skip


def test_generate_with_zimage_runs_the_turbo_recipe(zimage_files, tmp_path, monkeypatch):
    seen = {}
    original = __import__("lumina_core.pipeline", fromlist=["sample"]).sample

    def spy(model, positive, negative, **settings):
        seen.update(settings, negative=negative, family=model.family)
        return original(model, positive, negative, **settings)

    monkeypatch.setattr("lumina_core.pipeline.sample", spy)
    assert generate_zimage(zimage_files, tmp_path / "fox.png") == 0
    assert Image.open(tmp_path / "fox.png").size == (64, 48)
    assert (seen["family"], seen["steps"], seen["cfg"], seen["shift"], seen["negative"]) == (
        "zimage",
        8,
        1.0,
        3.0,
        None,
    )


def test_the_zimage_base_recipe_is_chosen_by_name(zimage_files, tmp_path, capsys):
    assert generate_zimage(zimage_files, tmp_path / "fox.png", "--recipe", "zimage_base", "--steps", "2") == 0
    capsys.readouterr()
    assert generate_zimage(zimage_files, tmp_path / "x.png", "--recipe", "lumina2") == 2
    assert "recipe 'lumina2' is not one of this zimage model's: zimage, zimage_base" in one_line_error(capsys)


def test_a_gemma_text_encoder_for_zimage_names_both_models(zimage_files, all_in_one, tmp_path, capsys):
    transformer, _, vae = zimage_files
    args = [
        "generate",
        "--transformer",
        str(transformer),
        "--text-encoder",
        str(all_in_one),
        "--vae",
        str(vae),
        "--prompt",
        "a fox",
        "--width",
        "64",
        "--height",
        "48",
        "--steps",
        "1",
        "--out",
        str(tmp_path / "x.png"),
    ]
    assert main(args) == 2
    err = one_line_error(capsys)
    assert "Gemma-2-2B" in err and "Lumina-Image 2.0" in err and "Z-Image" in err and "Qwen3-4B" in err


def test_inspect_names_lumina_nexts_gemma_file(tmp_path, capsys):
    path = tiny.write_text_encoder(tiny.make_gemma1(0), tiny.train_tokenizer(), "comfy.safetensors", tmp_path)
    assert main(["inspect", str(path)]) == 0
    assert "contains: a Gemma (v1) text encoder (Lumina-Next's)" in capsys.readouterr().out


def run_until_interrupted(code: str, ready: str) -> tuple[int, str, float]:
    """Run `python -c code` and press Ctrl-C (SIGINT) once `ready` is on its stderr.

    Returns the exit code, the stderr (the text read up to `ready`, then the rest, as pipes allow) and the seconds
    from Ctrl-C to the exit."""
    repo = Path(__file__).resolve().parents[2]
    # A shell starts background jobs with SIGINT ignored and children inherit that (CI may run us so): the child
    # gets the default disposition back, as a terminal's foreground process has.
    process = subprocess.Popen([sys.executable, "-c", code], cwd=repo, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    seen = ""
    while ready not in seen:
        char = process.stderr.read(1)
        assert char, f"exited before {ready!r}: {seen}"
        seen += char
    time.sleep(0.5)
    start = time.monotonic()
    process.send_signal(signal.SIGINT)
    err = seen + process.communicate(timeout=60)[1]
    return process.returncode, err, time.monotonic() - start


def test_ctrl_c_ends_the_process_within_seconds_even_inside_one_long_call():
    # pbkdf2 with 2**31 iterations is one C call of minutes; Python runs no signal handler until it returns
    code = (
        "import hashlib, sys\nfrom lumina_core.cli import prompt_interrupt\nwith prompt_interrupt(grace=1.0):\n"
        "    print('ready', file=sys.stderr, flush=True)\n    hashlib.pbkdf2_hmac('sha256', b'x', b'y', 2**31 - 1)\n"
    )
    exit_code, err, seconds = run_until_interrupted(code, "ready")
    assert exit_code == 130 and err.rstrip().endswith("interrupted") and "Traceback" not in err and seconds < 10


def test_ctrl_c_during_generate_exits_130_with_one_line_and_no_output(all_in_one, tmp_path):
    out = tmp_path / "fox.png"
    code = (
        "import sys\nfrom lumina_core.__main__ import main\nfrom lumina_core.cli import prompt_interrupt\n"
        f"with prompt_interrupt():\n    sys.exit(main(['generate', '--transformer', {str(all_in_one)!r}, '--prompt', "
        f"'a fox', '--steps', '500', '--width', '256', '--height', '256', '--out', {str(out)!r}]))\n"
    )
    exit_code, err, seconds = run_until_interrupted(code, "sampling:")
    assert exit_code == 130 and err.rstrip().splitlines()[-1] == "interrupted" and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [] and seconds < 30
