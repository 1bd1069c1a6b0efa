"""`python -m lumina_core train-tiny`: train the shapes model's three files from scratch on the CPU.

1. Text: a tokenizer trained on the caption vocabulary and a random tiny Gemma-2 (never trained), written in
   ComfyUI's single-file layout and read back with `load_text_encoder`, which then encodes every caption.
2. Autoencoder: the FLUX layout at toy width (16 latent channels, 8x downscale), trained to reconstruct the
   scenes (L1 + squared error) from a slightly noised latent, with a penalty that keeps each latent channel near
   mean 0 and variance 1 in model space (after the FLUX scale and shift `load_vae` applies): first on the
   pictures shrunk to 32x32, then on whole ones (`vae_stages`). Written in the FLUX `ae.safetensors` layout and
   read back with `load_vae`, which encodes every scene.
3. Transformer: Lumina-Image 2.0's Next-DiT at toy size, trained with flow matching in our sigma convention
   (x_sigma = (1 - sigma)·data + sigma·noise, target velocity noise - data), sigma logit-normal, and
   caption dropout (the empty negative prompt's features) so classifier-free guidance works. adaLN-Zero
   initialisation; the exponential moving average of the weights is what gets written, in bf16, with the
   original / ComfyUI key names `load_transformer` reads.

Every random draw comes from generators seeded by `TrainingConfig.seed`, so on one machine with one thread
count a run reproduces the files bit for bit (a different thread count or CPU may round differently).
Captions of `dataset.held_out_scenes()` are never trained on.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .. import tiny
from ..models.lumina2 import Lumina2Config, Lumina2Transformer, default_axes_dims
from ..text import load_text_encoder
from ..vae.autoencoder import Autoencoder, AutoencoderConfig, load_vae
from . import FILES, dataset, text
from .draw import SYSTEM_PROMPT

# dim 256: every Linear of the main layers takes whole 256-value rows, so K-quants and IQ4_XS quantize them
# (narrower rows would fall back to F16 in the converter). The caption width is the tiny Gemma-2's. The timestep
# widths are Lumina-Image 2.0's rule (min(dim, 1024)) spelled out, as the loader reads them back from the file.
TRANSFORMER = Lumina2Config(
    in_channels=16, dim=256, n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=512,
    cap_feat_dim=text.GEMMA["hidden_size"], axes_dims=default_axes_dims(64), adaln_dim=256, t_hidden_dim=256,
)  # fmt: skip
# Four levels for the 8x downscale; widths of 32, the GroupNorm group count loaders assume for FLUX files.
AUTOENCODER = AutoencoderConfig(channels=32, channel_mult=(1, 1, 1, 1), num_res_blocks=1, z_channels=16)
RECORD = "training.json"


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 0
    threads: int = 1  # results are bit-identical only for the same thread count
    scenes: int = 8192  # rendered once; the autoencoder trains on them and the transformer on their latents
    # Autoencoder stages (pixels, batch, steps, peak learning rate): first the pictures at half size, a quarter of
    # the work per sample, where colours are learnt (instance-like GroupNorm makes that slow); then whole ones.
    vae_stages: tuple[tuple[int, int, int, float], ...] = ((32, 16, 1500, 2e-3), (64, 8, 300, 1e-3))
    latent_noise: float = 0.1  # model-space noise on the latent the decoder sees, so near misses decode cleanly
    latent_penalty: float = 0.1  # weight of the mean-0 / variance-1 penalty on each latent channel
    transformer_steps: int = 3000
    transformer_batch: int = 32
    transformer_lr: float = 1e-3
    caption_dropout: float = 0.1
    sigmas: str = "logit_normal"  # sigmoid of a standard normal: more of the middle noise levels; or "uniform"
    ema_decay: float = 0.998  # a window of about 500 steps, a sixth of the run
    warmup_steps: int = 100


# A run that checks the script end to end in seconds (CI); its files are not meant to draw anything.
QUICK = TrainingConfig(
    scenes=16, vae_stages=((32, 2, 1, 2e-3), (64, 2, 1, 1e-3)), transformer_steps=2, transformer_batch=4, warmup_steps=1
)

Log = Callable[[str], None]


def train_tiny(out: str | os.PathLike, config: TrainingConfig = TrainingConfig(), log: Log = print) -> dict:
    """Train and write the three files and `training.json` (config, sha256 of each file, timings) into out;
    returns that record."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    clock = _Clock(log)
    try:
        scenes = _training_scenes(config)
        images = torch.from_numpy(np.stack([dataset.render(s, _render_seed(config, i)) for i, s in enumerate(scenes)]))
        images = images.permute(0, 3, 1, 2).contiguous()  # (N, 3, 64, 64) uint8
        clock.lap(f"rendered {len(scenes)} scenes")

        spm_model = text.train_caption_tokenizer()
        gemma = text.make_text_encoder(_piece_count(spm_model), config.seed)
        _write(out / FILES["text_encoder"], lambda d: tiny.write_text_encoder(gemma, spm_model, "comfy.safetensors", d))
        features, mask, empty = _encode_captions(out / FILES["text_encoder"], [s.caption for s in scenes])
        clock.lap(f"tokenizer ({_piece_count(spm_model)} pieces), text encoder, {len(scenes)} captions encoded")

        vae = train_autoencoder(images, config, log)
        _write(out / FILES["vae"], lambda d: tiny.write_vae(vae, "ae.safetensors", d))
        latents = _encode_images(out / FILES["vae"], images)
        clock.lap(f"autoencoder: {'+'.join(str(stage[2]) for stage in config.vae_stages)} steps; scenes encoded")

        model, _ = train_transformer(latents, features, mask, empty, config, log)
        _write(out / FILES["transformer"], lambda d: _write_bf16_transformer(model, d))
        clock.lap(f"transformer: {config.transformer_steps} steps")
    finally:
        torch.set_num_threads(threads)
    record = {
        "config": asdict(config),
        "transformer": asdict(TRANSFORMER),
        "autoencoder": asdict(AUTOENCODER),
        "text_encoder": text.GEMMA,
        "files": {name: {"file": file, "sha256": sha256(out / file)} for name, file in FILES.items()},
        "seconds": clock.laps,
        "machine": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine()},
    }
    written = json.dumps(record, indent=2)
    (out / RECORD).write_text(written + "\n")
    log(f"wrote {', '.join(FILES.values())} and {RECORD} to {out} in {clock.total:.0f} s")
    return json.loads(written)


def _training_scenes(config: TrainingConfig) -> list[dataset.Scene]:
    held_out = frozenset(scene.key for scene in dataset.held_out_scenes())
    return [dataset.training_scene(config.seed, i, held_out) for i in range(config.scenes)]


def _render_seed(config: TrainingConfig, index: int) -> int:
    return config.seed * 1_000_003 + index


def _piece_count(spm_model: bytes) -> int:
    return tiny.sentencepiece.SentencePieceProcessor(model_proto=spm_model).get_piece_size()


def _encode_captions(path: Path, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features as users get them: (N, L, D) float32 zero-padded, (N, L) bool mask, and (1, D) for the empty
    negative prompt (BOS alone), which stands in for dropped captions."""
    encoder = load_text_encoder(path, dtype=torch.float32)
    chunks = [encoder.encode(captions[i : i + 256], system_prompt=SYSTEM_PROMPT) for i in range(0, len(captions), 256)]
    length = max(c.mask.shape[1] for c in chunks)
    features = torch.cat([F.pad(c.embeds, (0, 0, 0, length - c.embeds.shape[1])) for c in chunks])
    mask = torch.cat([F.pad(c.mask, (0, length - c.mask.shape[1])) for c in chunks])
    empty = encoder.encode([""], system_prompt=SYSTEM_PROMPT, negative=True)
    return features, mask, empty.embeds[0]


def train_autoencoder(images: torch.Tensor, config: TrainingConfig, log: Log = print) -> Autoencoder:
    """images (N, 3, 64, 64) uint8 -> a trained Autoencoder (float32, eval mode).

    Residual branches and the attention output start at zero, so every block starts as the identity.
    """
    torch.manual_seed(config.seed)
    vae = Autoencoder(AUTOENCODER)
    with torch.no_grad():
        for name, module in vae.named_modules():
            if name.endswith(("conv2", "proj_out")):
                module.weight.zero_()
                module.bias.zero_()
    generator = torch.Generator().manual_seed(config.seed + 1)
    vae.train()
    for size, batch_size, steps, lr in config.vae_stages:
        pictures = F.avg_pool2d(images.float(), dataset.SIZE // size) / 127.5 - 1  # (N, 3, size, size) in [-1, 1]
        optimiser = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
        schedule = _warmup_cosine(optimiser, config.warmup_steps, steps)
        for step in range(steps):
            x = pictures[torch.randint(len(pictures), (batch_size,), generator=generator)]
            mean = vae.encoder(x)[:, : AUTOENCODER.z_channels]  # the log-variance half is never used
            z = vae.latent_format.to_model(mean)  # model space, where the transformer works
            noisy = z + config.latent_noise * torch.randn(z.shape, generator=generator)
            error = vae.decoder(vae.latent_format.to_raw(noisy)) - x
            penalty = (z.mean(dim=(0, 2, 3)) ** 2 + (z.var(dim=(0, 2, 3)) - 1) ** 2).mean()
            loss = error.abs().mean() + error.square().mean() + config.latent_penalty * penalty
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            _report(log, f"autoencoder {size}x{size}", step, steps, loss)
    return vae.eval()


def _encode_images(path: Path, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, 64, 64) uint8 -> (N, 16, 8, 8) model-space latents, with the autoencoder as `load_vae` reads it."""
    vae = load_vae(path, dtype=torch.float32)
    with torch.inference_mode():
        return torch.cat([vae.encode(images[i : i + 64].float() / 255) for i in range(0, len(images), 64)])


def new_transformer(seed: int) -> Lumina2Transformer:
    """The untrained transformer: PyTorch's default init, then adaLN-Zero (every block starts as the identity
    and the output at zero: modulations, gates and the final projection are zero)."""
    torch.manual_seed(seed)
    model = Lumina2Transformer(TRANSFORMER)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("adaLN_modulation") or name == "final_layer.linear":
                for param in module.parameters():
                    param.zero_()
    return model


def train_transformer(
    latents: torch.Tensor,
    features: torch.Tensor,
    mask: torch.Tensor,
    empty: torch.Tensor,
    config: TrainingConfig,
    log: Log = print,
) -> tuple[Lumina2Transformer, Lumina2Transformer]:
    """Flow matching on (latent, caption) pairs; returns the EMA model and the last weights (float32, eval mode).

    latents (N, 16, 8, 8) model space; features (N, L, D) and mask (N, L) the captions; empty (1, D) the
    features of the empty prompt, which replace a caption with probability `caption_dropout`.
    """
    model = new_transformer(config.seed + 2)
    ema = copy.deepcopy(model).requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed + 3)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.transformer_lr, weight_decay=0.0)
    schedule = _warmup_cosine(optimiser, config.warmup_steps, config.transformer_steps)
    dropped_features = F.pad(empty[None], (0, 0, 0, features.shape[1] - 1))  # (1, L, D)
    dropped_mask = torch.zeros(1, mask.shape[1], dtype=torch.bool)
    dropped_mask[0, 0] = True
    model.train()
    for step in range(config.transformer_steps):
        index = torch.randint(len(latents), (config.transformer_batch,), generator=generator)
        data, context, context_mask = latents[index], features[index], mask[index]
        drop = torch.rand(len(index), generator=generator) < config.caption_dropout
        context = torch.where(drop[:, None, None], dropped_features, context)
        context_mask = torch.where(drop[:, None], dropped_mask, context_mask)
        if config.sigmas == "logit_normal":
            sigma = torch.sigmoid(torch.randn(len(index), generator=generator))
        else:
            sigma = torch.rand(len(index), generator=generator)
        noise = torch.randn(data.shape, generator=generator)
        s = sigma[:, None, None, None]
        velocity = model((1 - s) * data + s * noise, sigma, context, context_mask)
        loss = F.mse_loss(velocity, noise - data)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        _update_ema(ema, model, min(config.ema_decay, (1 + step) / (10 + step)))
        _report(log, "transformer", step, config.transformer_steps, loss)
    return ema.eval(), model.eval()


@torch.no_grad()
def _update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for average, param in zip(ema.parameters(), model.parameters(), strict=True):
        average.lerp_(param, 1 - decay)


def _warmup_cosine(optimiser: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then a cosine decay to a tenth of the peak at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimiser, factor)


def _report(log: Log, stage: str, step: int, total: int, loss: torch.Tensor) -> None:
    if step == 0 or (step + 1) % max(1, total // 20) == 0:
        log(f"  {stage} step {step + 1}/{total}: loss {loss.item():.4f}")


def _write_bf16_transformer(model: Lumina2Transformer, folder: Path) -> Path:
    """The original / ComfyUI layout in bf16 (as `lumina_2_model_bf16.safetensors`); returns its path."""
    path = Path(folder) / "transformer.safetensors"
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in tiny.transformer_tensors(model).items()}
    save_file(tensors, path)
    return path


def _write(target: Path, write: Callable[[Path], Path]) -> None:
    """Run a writer into a scratch folder beside target, then move its file into place."""
    scratch = target.with_name(f".{target.name}.part")
    scratch.mkdir(exist_ok=True)
    try:
        os.replace(write(scratch), target)
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Clock:
    """Wall and CPU seconds per stage, logged as each ends."""

    def __init__(self, log: Log) -> None:
        self.log, self.laps = log, {}
        self.start = self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self, what: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[what] = {"wall": round(wall - self.wall, 1), "cpu": round(cpu - self.cpu, 1)}
        self.log(f"{what}: {wall - self.wall:.1f} s ({cpu - self.cpu:.1f} s CPU)")
        self.wall, self.cpu = wall, cpu

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start
