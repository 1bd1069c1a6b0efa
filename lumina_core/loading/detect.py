"""Recognise what a checkpoint holds from its tensor names, never from its file name.

Each signature lists keys that must all be present (after a container prefix such as ComfyUI's
`model.diffusion_model.` is removed) and keys that must be absent. Signatures are mutually exclusive,
so the answer does not depend on their order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..errors import CheckpointError
from .files import Checkpoint, preview
from .keymaps import ltxv_upsampler


@dataclass(frozen=True)
class Signature:
    family: str  # lumina_core family id, or a foreign model kind
    layout: str  # "original" (also ComfyUI) or "diffusers"
    description: str
    required: tuple[str, ...]
    absent: tuple[str, ...] = ()

    def matches(self, keys: set[str]) -> bool:
        return all(k in keys for k in self.required) and not any(k in keys for k in self.absent)


# Diffusion transformers and other models a user might hand to a transformer loader by mistake.
SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "lumina2",
        "original",
        "a Lumina-Image 2.0 transformer",
        ("cap_embedder.1.weight", "context_refiner.0.attention.qkv.weight"),
        # Z-Image keeps Lumina 2's names but modulates its blocks without SiLU: adaLN_modulation.0, not .1.
        ("layers.0.adaLN_modulation.0.weight",),
    ),
    Signature(
        "zimage",
        "original",
        "a Z-Image transformer",
        ("cap_embedder.1.weight", "context_refiner.0.attention.qkv.weight", "layers.0.adaLN_modulation.0.weight"),
    ),
    Signature(
        "zimage",
        "diffusers",
        "a Z-Image transformer (diffusers layout)",
        ("cap_embedder.1.weight", "context_refiner.0.attention.to_q.weight", "layers.0.adaLN_modulation.0.weight"),
    ),
    Signature(
        "lumina2",
        "diffusers",
        "a Lumina-Image 2.0 transformer (diffusers layout)",
        ("time_caption_embed.caption_embedder.1.weight", "context_refiner.0.attn.to_q.weight"),
    ),
    Signature(
        "lumina_next",
        "original",
        "a Lumina-Next transformer",
        ("cap_embedder.1.weight", "layers.0.attention.gate"),
        ("context_refiner.0.attention.qkv.weight",),
    ),
    Signature(
        "lumina_next",
        "diffusers",
        "a Lumina-Next transformer (diffusers layout)",
        ("time_caption_embed.caption_embedder.1.weight", "layers.0.gate"),
        ("context_refiner.0.attn.to_q.weight",),
    ),
    Signature(
        "ltxv",
        "original",
        "an LTX-Video transformer",
        # patchify_proj tells it from diffusers-keyed PixArt / Allegro, which share adaln_single and the blocks.
        ("patchify_proj.weight", "adaln_single.linear.weight", "transformer_blocks.0.attn1.to_q.weight"),
    ),
    Signature(
        "ltxv",
        "diffusers",
        "an LTX-Video transformer (diffusers layout)",
        ("proj_in.weight", "time_embed.linear.weight", "transformer_blocks.0.attn1.to_q.weight"),
    ),
    Signature("flux", "original", "a FLUX transformer", ("double_blocks.0.img_attn.qkv.weight",)),
    Signature("sd_unet", "original", "a Stable Diffusion / SDXL UNet", ("input_blocks.0.0.weight",)),
    Signature(
        "sd_unet",
        "diffusers",
        "a Stable Diffusion / SDXL UNet (diffusers layout)",
        ("conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"),
    ),
    Signature(
        "vae",
        "original",
        "a VAE (autoencoder)",
        ("decoder.conv_in.weight",),
        ("conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"),
    ),
    Signature(
        "vae",
        "diffusers",
        "a VAE (autoencoder, diffusers layout)",
        ("decoder.conv_in.weight", "decoder.up_blocks.0.resnets.0.conv1.weight"),
    ),
    # family "vae": load_vae reads these too (lumina_core.vae.load dispatches on loading/keymaps/ltx_vae.py).
    Signature("vae", "original", "an LTX-Video VAE", ("decoder.up_blocks.0.res_blocks.0.conv1.conv.weight",)),
    Signature(
        "vae", "diffusers", "an LTX-Video VAE (diffusers layout)", ("decoder.mid_block.resnets.0.conv1.conv.weight",)
    ),
    # The same names in the original and diffusers layouts (loading/keymaps/ltxv_upsampler.py).
    Signature("ltxv_upsampler", "original", "an LTX-Video latent upsampler", ltxv_upsampler.MARKERS),
    Signature("gemma2", "original", "a Gemma-2 text encoder", ("model.layers.0.post_feedforward_layernorm.weight",)),
    Signature(
        "qwen3",
        "original",
        "a Qwen3 text encoder",
        ("model.layers.0.self_attn.q_norm.weight",),
        ("model.layers.0.pre_feedforward_layernorm.weight",),  # Gemma-3 has q/k norms too
    ),
    # Gemma (v1), Lumina-Next's encoder: the decoder norms without Gemma-2's feed-forward pair or Gemma-3's q_norm,
    # the rule lumina_core.text.gemma loads it by.
    Signature(
        "gemma",
        "original",
        "a Gemma (v1) text encoder (Lumina-Next's)",
        ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.post_attention_layernorm.weight"),
        ("model.layers.0.post_feedforward_layernorm.weight", "model.layers.0.self_attn.q_norm.weight"),
    ),
    Signature("t5", "original", "a T5 text encoder", ("encoder.block.0.layer.0.SelfAttention.q.weight",)),
)

# Where each container puts a diffusion model, most specific first.
MODEL_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")

# GGUF files name their model in `general.architecture`: city96's converter and patched llama.cpp write
# "lumina2" (for Lumina-Image 2.0 and for Z-Image, which it does not tell apart) and "ltxv"; lumina_core's
# converter does the same and writes "lumina_next" for the Lumina-Next layout. calcuis' gguf-node writes the
# placeholder "pig"; other strings are language models (llama, gemma2, t5 ...). Architecture -> our families.
GGUF_ARCHITECTURE_KEY = "general.architecture"
GGUF_ARCHITECTURES = {
    "lumina2": ("lumina2", "zimage"), "ltxv": ("ltxv",), "lumina_next": ("lumina_next",),
}  # fmt: skip
# The architecture our converter writes for each family (city96's name where his converter has one).
GGUF_ARCHITECTURE_OF = {family: arch for arch, families in GGUF_ARCHITECTURES.items() for family in families}
GGUF_PLACEHOLDERS = frozenset({"", "pig", "none"})
GGUF_TEXT_ENCODERS = {"gemma": "a Gemma text encoder", "gemma2": "a Gemma-2 text encoder", "t5": "a T5 text encoder",
                      "t5encoder": "a T5 text encoder"}  # fmt: skip


@dataclass(frozen=True)
class Detected:
    signature: Signature
    part: Checkpoint  # the checkpoint restricted to this model, prefix removed


def matching_signatures(keys: set[str]) -> list[Signature]:
    return [s for s in SIGNATURES if s.matches(keys)]


def detect_model(checkpoint: Checkpoint, prefixes: tuple[str, ...] = MODEL_PREFIXES) -> Detected | None:
    """What the first prefix that holds a recognised model holds, or None if nothing is recognised.

    A GGUF file whose `general.architecture` names one of our families is that family: only its signatures
    are tried (the layout still comes from the keys), and tensors that fit none of them are an error.
    """
    architecture = checkpoint.metadata.get(GGUF_ARCHITECTURE_KEY, "")
    families = GGUF_ARCHITECTURES.get(architecture)
    for prefix in prefixes:
        if prefix and not checkpoint.has_prefix(prefix):
            continue
        part = checkpoint.subset(prefix) if prefix else checkpoint
        hits = [s for s in matching_signatures(set(part.keys)) if families is None or s.family in families]
        if len(hits) > 1:
            raise CheckpointError(
                f"{checkpoint.path}: the tensors under '{prefix}' look like several models at once "
                f"({'; '.join(h.description for h in hits)}): a merged or damaged file."
            )
        if hits:
            return Detected(hits[0], part)
    if families is not None:
        raise CheckpointError(
            f"{checkpoint.path}: its {GGUF_ARCHITECTURE_KEY} says '{architecture}' but its tensors are not such a "
            f"transformer (found: {describe_contents(checkpoint)}; e.g. {preview(sorted(checkpoint.keys))}): "
            "a mislabelled or incomplete file."
        )
    return None


def describe_contents(checkpoint: Checkpoint) -> str:
    """Everything recognisable in a file, for error messages (e.g. 'a VAE (autoencoder) under vae.')."""
    found = []
    for prefix in (
        "model.diffusion_model.",
        "diffusion_model.",
        "vae.",
        "first_stage_model.",
        "text_encoders.gemma2_2b.transformer.",
        "text_encoders.qwen3_4b.transformer.",
        "",
    ):
        if prefix and not checkpoint.has_prefix(prefix):
            continue
        keys = set((checkpoint.subset(prefix) if prefix else checkpoint).keys)
        found += [s.description + (f" under '{prefix}'" if prefix else "") for s in matching_signatures(keys)]
    architecture = checkpoint.metadata.get(GGUF_ARCHITECTURE_KEY, "")
    if not found and architecture in GGUF_TEXT_ENCODERS:
        found.append(f"{GGUF_TEXT_ENCODERS[architecture]} (GGUF, llama.cpp names)")
    elif not found and architecture not in GGUF_PLACEHOLDERS and architecture not in GGUF_ARCHITECTURES:
        found.append(f"a GGUF '{architecture}' model ({GGUF_ARCHITECTURE_KEY}), e.g. a language model")
    return "; ".join(dict.fromkeys(found)) or "no model this package recognises"


def find_marker(keys: Iterable[str], prefixes: Iterable[str], markers: Mapping[str, str]) -> tuple[str, str] | None:
    """(prefix, naming) of the first container prefix under which a naming's marker key exists, or None.

    markers: naming (e.g. "original", "diffusers") -> a key only that naming has, without the prefix.
    """
    key_set = set(keys)
    for prefix in prefixes:
        for naming, marker in markers.items():
            if prefix + marker in key_set:
                return prefix, naming
    return None
