"""`python -m lumina_core demo`: tiny random checkpoints in every supported layout, run end to end.

The same random weights are saved in each layout a user may download (original safetensors and
.pth, ComfyUI bf16 and all-in-one, diffusers folder and single file; Gemma-2 as a ComfyUI file and a
Hugging Face folder; the VAE as FLUX `ae.safetensors` and a diffusers folder). Text-to-image runs from
each, and the pictures must agree: the same weights give the same image whatever the file layout.
Lumina-Next (with Gemma and the SDXL VAE) then renders with its reference settings and with the few-step
sigmoid schedule and context drop; Z-Image (with Qwen3 and the FLUX VAE) with Z-Image-Turbo's recipe from its
original and ComfyUI bf16 files and a GGUF made by the converter, and with Z-Image base's recipe; and LTX-Video
(its single file with the VAE inside, and T5) renders a short clip as an animated WEBP and, with PyAV
installed, an MP4; then a clip between a first and a last frame, and the distilled multi-scale recipe through a
tiny latent upsampler.
"""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import tiny
from .errors import InvalidInputError
from .outputs import save_images, save_videos, to_pil
from .pipeline import GuideFile, ImageRequest, VideoRequest, text_to_image, text_to_video

TRANSFORMER_LAYOUTS = (
    "original.safetensors", "original.pth", "comfy_bf16.safetensors", "diffusers_single.safetensors",
    "diffusers_pipeline",
)  # fmt: skip


def build_checkpoints(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write every layout under folder, replacing what an earlier run left there; returns name -> path."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    transformer, gemma, vae = tiny.make_transformer(seed), tiny.make_gemma(seed), tiny.make_vae(seed)
    spm_model = tiny.train_tokenizer()
    paths = {f"transformer/{layout}": tiny.write_transformer(transformer, layout, folder) for layout in
             TRANSFORMER_LAYOUTS}  # fmt: skip
    for layout in ("comfy.safetensors", "hf_folder"):
        paths[f"text_encoder/{layout}"] = tiny.write_text_encoder(gemma, spm_model, layout, folder / "gemma")
    for layout in ("ae.safetensors", "diffusers_vae"):
        paths[f"vae/{layout}"] = tiny.write_vae(vae, layout, folder)
    paths["all_in_one"] = tiny.write_all_in_one(transformer, gemma, spm_model, vae, folder / "all_in_one.safetensors")
    next_folder = folder / "lumina_next"
    next_folder.mkdir(exist_ok=True)
    paths["lumina_next/transformer"] = tiny.write_transformer(
        tiny.make_lumina_next(seed), "original.safetensors", next_folder
    )
    paths["lumina_next/text_encoder"] = tiny.write_text_encoder(
        tiny.make_gemma1(seed), spm_model, "comfy.safetensors", next_folder
    )
    paths["lumina_next/vae"] = tiny.write_vae(tiny.make_vae(seed, tiny.TINY_SDXL_VAE), "ae.safetensors", next_folder)
    paths |= _build_zimage(folder / "zimage", seed, paths["vae/ae.safetensors"])
    ltxv_folder = folder / "ltxv"
    ltxv_folder.mkdir(exist_ok=True)
    paths["ltxv/checkpoint"] = tiny.write_ltxv_all_in_one(
        tiny.make_ltxv_transformer(seed), tiny.make_ltx_vae(seed), ltxv_folder / "ltx-video.safetensors"
    )
    paths["ltxv/text_encoder"] = tiny.write_t5_text_encoder(
        tiny.make_t5(seed), tiny.train_t5_tokenizer(), "comfy.safetensors", ltxv_folder
    )
    paths["ltxv/upsampler"] = tiny.write_latent_upsampler(
        tiny.make_latent_upsampler(seed), ltxv_folder / "ltxv-spatial-upscaler.safetensors"
    )
    return paths


def run_demo(out: Path, steps: int = 4, width: int = 128, height: int = 96) -> list[Path]:
    """Build the checkpoints under out/checkpoints, render with each, write PNGs; returns their paths."""
    out = Path(out)
    paths = build_checkpoints(out / "checkpoints")
    request = ImageRequest(
        prompt="a photograph of a red fox sitting in fresh snow", negative_prompt="blurry, low quality",
        width=width, height=height, steps=steps, seed=42, solver="midpoint",
    )  # fmt: skip
    encoder, vae = paths["text_encoder/comfy.safetensors"], paths["vae/ae.safetensors"]
    runs = {_run_name(layout): (paths[f"transformer/{layout}"], encoder, vae) for layout in TRANSFORMER_LAYOUTS}
    runs["t2i_hf_text_encoder_diffusers_vae"] = (
        paths["transformer/diffusers_pipeline"],
        paths["text_encoder/hf_folder"],
        paths["vae/diffusers_vae"],
    )
    runs["t2i_all_in_one"] = (paths["all_in_one"],) * 3

    written, pixels = [], {}
    for name, (transformer, encoder, vae) in runs.items():
        start = time.perf_counter()
        images = text_to_image(transformer, encoder, vae, request)
        written += save_images(images, out / f"{name}.png")
        pixels[name] = np.asarray(images[0], dtype=np.float32)
        print(f"{name:40s} {time.perf_counter() - start:5.2f} s  -> {written[-1]}")

    batch = ImageRequest(**{**request.__dict__, "batch_size": 2, "cfg_trunc": 0.5, "solver": "heun"})
    written += save_images(text_to_image(*runs["t2i_all_in_one"], batch), out / "t2i_batch.png")
    print(f"{'t2i_batch (2 images, cfg truncation 0.5)':40s} -> {written[-2]}, {written[-1]}")
    _report_agreement(pixels)
    written += _run_lumina_next(paths, request, out)
    written += _run_zimage(paths, request, out)
    written += _run_ltxv(paths, steps, out)
    written += _run_ltxv_conditions(paths, steps, out)
    return written


def _run_lumina_next(paths: dict[str, Path], request: ImageRequest, out: Path) -> list[Path]:
    files = [paths[f"lumina_next/{part}"] for part in ("transformer", "text_encoder", "vae")]
    few_step = {"schedule": "sigmoid", "steps": 3, "model_options": {"context_drop_ratio": 2}}
    runs = {
        "t2i_lumina_next": request,  # shift 4 and no renormalisation: the family's defaults
        "t2i_lumina_next_sigmoid_context_drop": ImageRequest(**{**request.__dict__, **few_step}),
    }
    written = []
    for name, settings in runs.items():
        start = time.perf_counter()
        written += save_images(text_to_image(*files, settings), out / f"{name}.png")
        print(f"{name:40s} {time.perf_counter() - start:5.2f} s  -> {written[-1]}")
    return written


def _build_zimage(folder: Path, seed: int, vae: Path) -> dict[str, Path]:
    """Z-Image as Tongyi-MAI's original file, ComfyUI's bf16 repack and a Q8_0 GGUF; Qwen3 as a Hugging Face folder
    and as ComfyUI's single file (its tokenizer in qwen_tokenizer/ beside it); the FLUX VAE is Lumina 2's."""
    from .gguf.convert import convert

    folder.mkdir(parents=True)
    transformer, qwen3 = tiny.make_transformer(seed, tiny.TINY_ZIMAGE), tiny.make_qwen3(seed)
    tokenizer = tiny.train_qwen_tokenizer()
    paths = {f"zimage/{layout}": tiny.write_transformer(transformer, layout, folder)
             for layout in ("original.safetensors", "comfy_bf16.safetensors")}  # fmt: skip
    paths["zimage/q8_0.gguf"] = folder / "z_image_turbo-Q8_0.gguf"
    convert(paths["zimage/original.safetensors"], paths["zimage/q8_0.gguf"], "Q8_0")
    for layout in ("hf_folder", "comfy.safetensors"):
        paths[f"zimage/qwen3_{layout}"] = tiny.write_qwen3_text_encoder(qwen3, tokenizer, layout, folder / "qwen3")
    paths["zimage/vae"] = vae
    return paths


def _run_zimage(paths: dict[str, Path], request: ImageRequest, out: Path) -> list[Path]:
    """Z-Image-Turbo's recipe (steps, cfg, shift left None) from three transformer layouts and both text-encoder
    layouts, which must agree, then Z-Image base's recipe (guided, shift 6)."""
    turbo = ImageRequest(**{**request.__dict__, "steps": None, "solver": "euler"})
    qwen_tokenizer = str(paths["zimage/qwen3_comfy.safetensors"].parent / "qwen_tokenizer")
    runs = {
        "t2i_zimage_turbo": ("original.safetensors", "hf_folder", turbo),
        "t2i_zimage_turbo_comfy_bf16": ("comfy_bf16.safetensors", "comfy.safetensors",
                                        ImageRequest(**{**turbo.__dict__, "tokenizer": qwen_tokenizer})),
        "t2i_zimage_turbo_gguf_q8_0": ("q8_0.gguf", "hf_folder", turbo),
        "t2i_zimage_base_recipe": ("original.safetensors", "hf_folder",
                                   ImageRequest(**{**turbo.__dict__, "recipe": "zimage_base", "steps": 4})),
    }  # fmt: skip
    written, pixels = [], {}
    for name, (transformer, encoder, settings) in runs.items():
        start = time.perf_counter()
        files = (paths[f"zimage/{transformer}"], paths[f"zimage/qwen3_{encoder}"], paths["zimage/vae"])
        images = text_to_image(*files, settings)
        written += save_images(images, out / f"{name}.png")
        pixels[name] = np.asarray(images[0], dtype=np.float32)
        print(f"{name:40s} {time.perf_counter() - start:5.2f} s  -> {written[-1]}")
    _report_agreement({k: v for k, v in pixels.items() if "turbo" in k}, "t2i_zimage_turbo")
    return written


def _run_ltxv(paths: dict[str, Path], steps: int, out: Path) -> list[Path]:
    """Text-to-video with LTX-Video (the Lightricks single file, T5 with its tokenizer beside it)."""
    checkpoint, text_encoder = paths["ltxv/checkpoint"], paths["ltxv/text_encoder"]
    request = VideoRequest(
        prompt="a red fox trots through fresh snow, the camera follows", negative_prompt="worst quality, blurry",
        width=128, height=96, frames=17, frame_rate=12.0, steps=steps, seed=42,
        tokenizer=str(text_encoder.parent / "t5_tokenizer"),
    )  # fmt: skip
    start = time.perf_counter()
    video = text_to_video(checkpoint, text_encoder, checkpoint, request)
    written = save_videos(video, out / "t2v_ltxv.webp", request.frame_rate)
    try:
        written += save_videos(video, out / "t2v_ltxv.mp4", request.frame_rate)
    except InvalidInputError as err:  # PyAV is optional
        print(f"  (no .mp4: {err})")
    seconds = time.perf_counter() - start
    print(f"{'t2v_ltxv (17 frames, 12 fps)':40s} {seconds:5.2f} s  -> {', '.join(map(str, written))}")
    return written


def _run_ltxv_conditions(paths: dict[str, Path], steps: int, out: Path) -> list[Path]:
    """A clip from a first to a last frame (two gradients), and the distilled multi-scale recipe from the first."""
    checkpoint, text_encoder = paths["ltxv/checkpoint"], paths["ltxv/text_encoder"]
    ramp = np.linspace(0, 255, 128, dtype=np.float32)[None, :, None] * np.ones((96, 1, 3), np.float32)
    first, last = out / "first_frame.png", out / "last_frame.png"
    save_images(to_pil(torch.from_numpy(ramp / 255).permute(2, 0, 1)[None]), first)
    save_images(to_pil(torch.from_numpy(ramp[:, ::-1] / 255).permute(2, 0, 1)[None]), last)
    base = dict(prompt="a red fox trots through fresh snow", width=128, height=96, frames=17, frame_rate=12.0,
                seed=42, tokenizer=str(text_encoder.parent / "t5_tokenizer"))  # fmt: skip
    runs = {
        "i2v_first_last_ltxv (17 frames)": ("i2v_first_last_ltxv.webp", VideoRequest(
            **base, steps=steps, conditions=(GuideFile(str(first), 0), GuideFile(str(last), -1)))),
        "multiscale_ltxv (128x64 -> 256x128)": ("multiscale_ltxv.webp", VideoRequest(
            **{**base, "width": 192}, recipe="ltxv-0.9.8-distilled", refine_recipe="ltxv-0.9.8-distilled-refine",
            upsampler=str(paths["ltxv/upsampler"]), conditions=(GuideFile(str(first), 0),))),
    }  # fmt: skip
    written = []
    for name, (file, request) in runs.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the multi-scale passes resize the first frame, saying so
            video = text_to_video(checkpoint, text_encoder, checkpoint, request)
        written += save_videos(video, out / file, request.frame_rate)
        print(f"{name:40s} {time.perf_counter() - start:5.2f} s  -> {written[-1]}")
    return written


def _run_name(layout: str) -> str:
    return "t2i_" + layout.removesuffix(".safetensors").replace(".", "_")


def _report_agreement(pixels: dict[str, np.ndarray], reference_name: str = "t2i_original") -> None:
    reference = pixels[reference_name]
    for name, image in pixels.items():
        # bf16 weights (and Q8_0 blocks) round every tensor, so those layouts may differ by a few grey levels.
        limit = 40.0 if "bf16" in name or "q8_0" in name else 1.0
        difference = float(np.abs(image - reference).max())
        status = "same picture" if difference <= limit else "DIFFERENT"
        print(f"  {name:38s} max |difference| vs original layout: {difference:5.1f}/255  {status}")
        if difference > limit:
            raise RuntimeError(f"{name} differs from the original layout by {difference}/255: a loader bug.")


def main(out: str = "demo_out", steps: int = 4) -> None:
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    written = run_demo(Path(out), steps=steps)
    print(f"wrote {len(written)} files under {out}/")
