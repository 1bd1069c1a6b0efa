"""Tiny random checkpoints in every file layout the loaders read, for the demo and the tests.

Nothing here downloads anything: the tokenizer is a SentencePiece model trained in milliseconds on a
few sentences, and every model is built from a small config with random weights.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

import sentencepiece
import torch
from safetensors.torch import save_file
from torch import nn

from .loading.keymaps import ldm_vae
from .loading.keymaps.lumina2 import to_diffusers
from .models.ltxv import LTXVideoConfig, LTXVideoTransformer
from .models.ltxv_upsampler import LatentUpsampler, LatentUpsamplerConfig
from .models.lumina2 import Lumina2Config, Lumina2Transformer
from .models.lumina_next import LuminaNextConfig, LuminaNextTransformer
from .models.zimage import ZImageConfig, ZImageTransformer
from .text.prompts import PROMPT_START, SYSTEM_PROMPTS
from .vae.autoencoder import Autoencoder, AutoencoderConfig
from .vae.ltx_video import BlockSpec, LTXVideoVAE, LTXVideoVAEConfig

# cap_feat_dim equals the tiny Gemma's hidden size; 16 latent channels like the FLUX VAE.
TINY_TRANSFORMER = Lumina2Config(
    in_channels=16, dim=64, n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden=256,
    cap_feat_dim=32, axes_dims=(8, 4, 4),
)  # fmt: skip
# GQA, and a head_dim that is not hidden / heads, as Gemma-2 itself has.
TINY_GEMMA = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
}  # fmt: skip
# Gemma (v1) as Gemma-2B has it: multi-query attention (one KV head); head_dim is not hidden / heads, as in
# Gemma-7B, so loading must take it from the config rather than guess.
TINY_GEMMA1 = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 1, "head_dim": 16,
}  # fmt: skip
# Lumina-Next with GQA, learn-sigma output and the tiny Gemma (v1) width.
TINY_LUMINA_NEXT = LuminaNextConfig(
    dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, cap_feat_dim=32,
)  # fmt: skip
TINY_VOCAB = 384  # byte fallback alone takes 256 pieces
# Four levels give the 8x downscale Lumina-Image 2.0 expects; widths divide the 32 GroupNorm groups.
TINY_VAE = AutoencoderConfig(channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=16)
# The SDXL autoencoder's shape (Lumina-Next): 4 latent channels, quant convs, scale 0.13025.
TINY_SDXL_VAE = AutoencoderConfig(
    channels=32, channel_mult=(1, 1, 2, 2), num_res_blocks=1, z_channels=4, use_quant_conv=True,
    use_post_quant_conv=True, scale=0.13025, shift=0.0,
)  # fmt: skip

TOKENIZER_CORPUS = [
    *(text for text in SYSTEM_PROMPTS.values() if text),
    f"{PROMPT_START} a photograph of a red fox sitting in fresh snow, soft morning light",
    "A watercolor painting of a lighthouse on a rocky coast at sunset, with seagulls.",
    "Close-up portrait of an old fisherman, detailed wrinkles, 85mm lens, high quality.",
    "The quick brown fox jumps over the lazy dog; numbers 0123456789 and punctuation!?",
    "blurry, low quality, distorted hands, watermark, text, jpeg artifacts",
]


def randomise_parameters(
    module: nn.Module, seed: int, std: float | None = None, norm_center: float = 1.0, norm_std: float = 0.1
) -> nn.Module:
    """Give every parameter random values, in place; returns the module in eval mode.

    Default inits zero adaLN modulations, gates and output layers and set norm gains to one, so a
    parity test on a freshly built model would leave whole paths untested. Norm gains (1-D `*norm*`
    weights) become norm_center + norm_std * N(0, 1); other tensors std * N(0, 1), or 1/sqrt(fan-in)
    scaled when std is None (activations then stay in range through deep stacks, as the demo wants).
    """
    generators: dict[torch.device, torch.Generator] = {}  # drawn where each parameter lives (fast on a GPU)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.device not in generators:
                generators[param.device] = torch.Generator(param.device).manual_seed(seed)
            generator = generators[param.device]
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32, device=param.device)
            if "norm" in name and name.endswith("weight") and param.ndim == 1:
                value = norm_center + norm_std * noise
            elif std is None:
                fan_in = math.prod(param.shape[1:]) if param.ndim > 1 else param.numel()
                value = noise / math.sqrt(fan_in) if param.ndim > 1 else 0.1 * noise
            else:
                value = std * noise
            param.copy_(value.to(param.dtype))
    return module.eval()


def train_tokenizer(
    corpus: Sequence[str] = TOKENIZER_CORPUS, vocab_size: int = TINY_VOCAB, whole_pieces: Sequence[str] = ()
) -> bytes:
    """A byte-fallback BPE SentencePiece model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3).

    whole_pieces: texts that always become one piece each (SentencePiece's user-defined symbols).
    """
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(corpus) * 4), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        user_defined_symbols=[text.replace(" ", "\u2581") for text in whole_pieces],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", control_symbols=["<mask>"], byte_fallback=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, normalization_rule_name="identity", split_digits=True,
        character_coverage=1.0, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def spm_tensor(spm_model: bytes) -> torch.Tensor:
    """The tokenizer as ComfyUI stores it in safetensors files: a 1-D uint8 tensor of the model bytes."""
    return torch.frombuffer(bytearray(spm_model), dtype=torch.uint8)


def make_transformer(seed: int = 0, config: Lumina2Config = TINY_TRANSFORMER) -> Lumina2Transformer:
    """A random Lumina-Image 2.0 transformer, or a Z-Image one for a `ZImageConfig` (e.g. TINY_ZIMAGE)."""
    torch.manual_seed(seed)
    model_class = ZImageTransformer if isinstance(config, ZImageConfig) else Lumina2Transformer
    return randomise_parameters(model_class(config), seed)


def make_lumina_next(seed: int = 0, config: LuminaNextConfig = TINY_LUMINA_NEXT) -> LuminaNextTransformer:
    torch.manual_seed(seed)
    return randomise_parameters(LuminaNextTransformer(config), seed)


def make_gemma(seed: int = 0, **overrides):
    """A random Gemma2Model; norm weights near 0 because Gemma's RMSNorm scales by (1 + w)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(**{"vocab_size": TINY_VOCAB, **TINY_GEMMA, **overrides}, attn_implementation="eager")
    return randomise_parameters(Gemma2Model(config), seed, std=0.2, norm_center=0.0)


def make_gemma1(seed: int = 0, **overrides):
    """A random Gemma (v1) GemmaModel, Lumina-Next's text encoder; norm weights near 0 for the (1 + w) scaling."""
    from transformers import GemmaConfig, GemmaModel

    config = GemmaConfig(**{"vocab_size": TINY_VOCAB, **TINY_GEMMA1, **overrides}, attn_implementation="eager")
    return randomise_parameters(GemmaModel(config), seed, std=0.2, norm_center=0.0)


def make_vae(seed: int = 0, config: AutoencoderConfig = TINY_VAE) -> Autoencoder:
    torch.manual_seed(seed)
    return randomise_parameters(Autoencoder(config), seed)


def transformer_tensors(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """Original / ComfyUI names, with the unused tensor the released files carry (Lumina 2's `norm_final.weight`,
    Lumina-Next's `pad_token`)."""
    unused = {"lumina2": "norm_final.weight", "lumina_next": "pad_token"}.get(model.family)
    state = {**_contiguous(model.state_dict()), **({unused: torch.ones(model.config.dim)} if unused else {})}
    return {prefix + k: v for k, v in state.items()}


def gemma_tensors(model, prefix: str = "model.") -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _contiguous(model.state_dict()).items()}


def write_transformer(model: nn.Module, layout: str, folder: Path) -> Path:
    """Layouts: original.safetensors, original.pth, comfy_bf16.safetensors, diffusers_single.safetensors,
    diffusers_pipeline (a folder with transformer/config.json and weights). Returns the path to load.
    Lumina-Next and Z-Image models take the first three (the diffusers ones need diffusers: see the tests)."""
    path = Path(folder) / layout
    original = transformer_tensors(model)
    if model.family != "lumina2" and layout.startswith("diffusers"):
        raise ValueError(f"tiny writes diffusers layouts for Lumina-Image 2.0 only, not {model.family}")
    if layout == "original.safetensors":
        save_file(original, path)
    elif layout == "original.pth":
        torch.save(original, path)
    elif layout == "comfy_bf16.safetensors":
        save_file({f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in original.items()}, path)
    elif layout == "diffusers_single.safetensors":
        save_file(to_diffusers(_contiguous(model.state_dict()), model.config.dim), path)
    elif layout == "diffusers_pipeline":
        (path / "transformer").mkdir(parents=True)
        save_file(
            to_diffusers(_contiguous(model.state_dict()), model.config.dim),
            path / "transformer" / "diffusion_pytorch_model.safetensors",
        )
        (path / "transformer" / "config.json").write_text(json.dumps(_diffusers_transformer_config(model.config)))
    else:
        raise ValueError(f"unknown transformer layout {layout!r}")
    return path


def write_text_encoder(model, spm_model: bytes, layout: str, folder: Path) -> Path:
    """Layouts: comfy.safetensors (weights + `spiece_model` + config metadata), hf_folder.

    model: a Gemma2Model (make_gemma) or a GemmaModel (make_gemma1); the config metadata key follows it.
    """
    from .text.gemma import config_metadata

    path = Path(folder) / layout
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "comfy.safetensors":
        tensors = {**gemma_tensors(model), "spiece_model": spm_tensor(spm_model)}
        save_file(tensors, path, metadata=config_metadata(model.config))
    elif layout == "hf_folder":
        path.mkdir(parents=True)
        model.config.save_pretrained(path)
        save_file(gemma_tensors(model), path / "model.safetensors")
        (path / "tokenizer.model").write_bytes(spm_model)
    else:
        raise ValueError(f"unknown text-encoder layout {layout!r}")
    return path


def write_vae(model: Autoencoder, layout: str, folder: Path) -> Path:
    """Layouts: ae.safetensors (FLUX original names), diffusers_vae (a folder with config.json)."""
    path = Path(folder) / layout
    state = _contiguous(model.state_dict())
    if layout == "ae.safetensors":
        save_file(state, path)
    elif layout == "diffusers_vae":
        names, unmatched = ldm_vae.map_keys_original_to_diffusers(state)
        assert not unmatched, unmatched
        tensors = {names[k]: v.reshape(ldm_vae.to_diffusers_shape(k, v.shape)) for k, v in state.items()}
        path.mkdir(parents=True)
        save_file(tensors, path / "diffusion_pytorch_model.safetensors")
        (path / "config.json").write_text(json.dumps(_diffusers_vae_config(model.config)))
    else:
        raise ValueError(f"unknown VAE layout {layout!r}")
    return path


def write_all_in_one(transformer: Lumina2Transformer, gemma, spm_model: bytes, vae: Autoencoder, path: Path) -> Path:
    """ComfyUI's single-file layout (as `CheckpointLoaderSimple` loads): DiT, Gemma-2, tokenizer and VAE."""
    from .text.gemma import config_metadata

    tensors = {
        **transformer_tensors(transformer, "model.diffusion_model."),
        **gemma_tensors(gemma, "text_encoders.gemma2_2b.transformer.model."),
        "text_encoders.spiece_model": spm_tensor(spm_model),
        **{f"vae.{k}": v for k, v in _contiguous(vae.state_dict()).items()},
    }
    save_file(tensors, path, metadata=config_metadata(gemma.config))
    return Path(path)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in state.items()}


def _diffusers_transformer_config(cfg: Lumina2Config) -> dict:
    return {
        "_class_name": "Lumina2Transformer2DModel", "patch_size": cfg.patch_size, "in_channels": cfg.in_channels,
        "hidden_size": cfg.dim, "num_layers": cfg.n_layers, "num_refiner_layers": cfg.n_refiner_layers,
        "num_attention_heads": cfg.n_heads, "num_kv_heads": cfg.n_kv_heads, "multiple_of": cfg.ffn_hidden,
        "ffn_dim_multiplier": cfg.ffn_hidden / (4 * cfg.dim), "norm_eps": cfg.norm_eps,
        "axes_dim_rope": list(cfg.axes_dims), "axes_lens": [300, 512, 512], "cap_feat_dim": cfg.cap_feat_dim,
    }  # fmt: skip


def _diffusers_vae_config(cfg: AutoencoderConfig) -> dict:
    levels = len(cfg.channel_mult)
    return {
        "_class_name": "AutoencoderKL", "in_channels": cfg.in_channels, "out_channels": cfg.out_channels,
        "latent_channels": cfg.z_channels, "block_out_channels": [cfg.channels * m for m in cfg.channel_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": cfg.num_res_blocks, "norm_num_groups": cfg.num_groups, "scaling_factor": cfg.scale,
        "shift_factor": cfg.shift, "use_quant_conv": cfg.use_quant_conv, "use_post_quant_conv": cfg.use_post_quant_conv,
    }  # fmt: skip


# T5 v1.1 (LTX-Video's text encoder) at toy size: gated GELU, one relative-bias table in block 0. d_kv is not
# d_model / heads and there are 10 buckets, not the released 32, so loading must read both from the tensors.
TINY_T5 = {
    "d_model": 32, "d_ff": 48, "d_kv": 12, "num_layers": 3, "num_heads": 4, "relative_attention_num_buckets": 10,
    "feed_forward_proj": "gated-gelu",
}  # fmt: skip
TINY_T5_PIECES = 100  # the SentencePiece vocabulary; T5's tokenizer appends 100 <extra_id_N> sentinels
TINY_T5_VOCAB = 208  # embedding rows: the 200 tokens rounded up, as T5-XXL's 32128 rows hold 32100 tokens
T5_TOKENIZER_CORPUS = [
    *TOKENIZER_CORPUS,
    "A woman walks through a busy street at night, neon lights reflect on the wet pavement as the camera follows.",
    "worst quality, inconsistent motion, blurry, jittery, distorted",
]


def train_t5_tokenizer() -> bytes:
    """A unigram SentencePiece model with T5's special pieces: <pad> 0, </s> 1, <unk> 2, no BOS."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(T5_TOKENIZER_CORPUS * 4), model_writer=model, vocab_size=TINY_T5_PIECES,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>",
        unk_piece="<unk>", character_coverage=1.0, num_threads=1, minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def make_t5(seed: int = 0, **overrides):
    """A random transformers T5EncoderModel (eager attention, eval mode); layer-norm gains near 1."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(**{"vocab_size": TINY_T5_VOCAB, **TINY_T5, **overrides}, attn_implementation="eager")
    return randomise_parameters(T5EncoderModel(config), seed)


def t5_tensors(model, prefix: str = "") -> dict[str, torch.Tensor]:
    """ComfyUI's t5xxl_fp16.safetensors names: `shared.weight` and `encoder.*`, the tied copy left out."""
    state = _contiguous(model.state_dict())
    return {prefix + k: v for k, v in state.items() if k != "encoder.embed_tokens.weight"}


def write_t5_text_encoder(model, spm_model: bytes, layout: str, folder: Path) -> Path:
    """Layouts: comfy.safetensors (weights only, as ComfyUI's t5xxl files; the tokenizer goes to
    t5_tokenizer/spiece.model beside it, to pass as `load_text_encoder(..., tokenizer_dirs=[...])` as ComfyUI's
    bundled one is), diffusers_pipeline (model_index.json, text_encoder/ and tokenizer/). Returns the path."""
    path = Path(folder) / layout
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "comfy.safetensors":
        save_file(t5_tensors(model), path)
        (path.parent / "t5_tokenizer").mkdir(exist_ok=True)
        (path.parent / "t5_tokenizer" / "spiece.model").write_bytes(spm_model)
    elif layout == "diffusers_pipeline":
        (path / "tokenizer").mkdir(parents=True)
        model.save_pretrained(path / "text_encoder")
        (path / "tokenizer" / "spiece.model").write_bytes(spm_model)
        (path / "model_index.json").write_text(json.dumps({"_class_name": "LTXPipeline"}))
    else:
        raise ValueError(f"unknown T5 layout {layout!r}")
    return path


# LTX-Video VAE, 0.9.5 design (space-to-depth encoder; timestep-conditioned decoder with residual, width-halving
# upsamplers) at toy widths, with the released 128 latent channels, patch 4 and 32x / 8x compression.
TINY_LTX_VAE = LTXVideoVAEConfig(
    encoder_blocks=(
        BlockSpec("res_x"), BlockSpec("compress_space_res", multiplier=2), BlockSpec("res_x"),
        BlockSpec("compress_time_res", multiplier=2), BlockSpec("res_x"), BlockSpec("compress_all_res", multiplier=2),
        BlockSpec("res_x"), BlockSpec("compress_all_res", multiplier=2), BlockSpec("res_x"),
    ),
    decoder_blocks=(
        BlockSpec("res_x"), BlockSpec("compress_all", multiplier=2, residual=True), BlockSpec("res_x"),
        BlockSpec("compress_all", multiplier=2, residual=True), BlockSpec("res_x"),
        BlockSpec("compress_all", multiplier=2, residual=True), BlockSpec("res_x"),
    ),
    encoder_base_channels=4, decoder_base_channels=8, timestep_conditioning=True,
)  # fmt: skip


def make_ltx_vae(seed: int = 0, config: LTXVideoVAEConfig = TINY_LTX_VAE) -> LTXVideoVAE:
    """A random LTX video VAE: every parameter random, `timestep_scale_multiplier` about 1000 as released, latent
    statistics with mean about 0 and std in [0.5, 1.5]."""
    vae = randomise_parameters(LTXVideoVAE(config), seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if vae.decoder.timestep_scale_multiplier is not None:
            vae.decoder.timestep_scale_multiplier.fill_(1000.0)
        statistics = vae.per_channel_statistics
        statistics.get_buffer("mean-of-means").copy_(0.3 * torch.randn(config.latent_channels, generator=generator))
        statistics.get_buffer("std-of-means").copy_(0.5 + torch.rand(config.latent_channels, generator=generator))
    return vae


# LTX-Video transformer at toy width: 4 heads x 16 = 64, which 6 does not divide (the RoPE's padding pairs), the
# released 128 latent channels (TINY_LTX_VAE's), captions as wide as TINY_T5's d_model.
TINY_LTXV = LTXVideoConfig(
    in_channels=128, out_channels=128, dim=64, n_layers=2, n_heads=4, cross_attention_dim=64,
    caption_channels=TINY_T5["d_model"], ffn_hidden=256,
)  # fmt: skip


def make_ltxv_transformer(seed: int = 0, config: LTXVideoConfig = TINY_LTXV) -> LTXVideoTransformer:
    """A random LTX-Video transformer, scale-shift tables included (they start at zero)."""
    torch.manual_seed(seed)
    return randomise_parameters(LTXVideoTransformer(config), seed)


def ltxv_config_metadata(config: LTXVideoConfig) -> dict[str, str]:
    """The safetensors metadata of an original LTX-Video file (its JSON `config`), for what shapes cannot tell.

    Write it with the `model.diffusion_model.`-prefixed weights: without it a loader assumes the release's 32 heads.
    """
    transformer = {
        "num_attention_heads": config.n_heads, "attention_head_dim": config.head_dim, "norm_eps": config.norm_eps,
        "positional_embedding_theta": config.rope_theta, "positional_embedding_max_pos": list(config.max_positions),
        "causal_temporal_positioning": config.causal_temporal_positioning,
        "timestep_scale_multiplier": config.timestep_scale,
    }  # fmt: skip
    return {"config": json.dumps({"transformer": transformer})}


def write_ltxv_all_in_one(transformer: LTXVideoTransformer, vae: LTXVideoVAE, path: Path) -> Path:
    """The Lightricks single-file layout (`ltx-video-2b-v0.9.5.safetensors`): transformer under
    `model.diffusion_model.`, VAE under `vae.`, the transformer's JSON config in the metadata."""
    tensors = {
        **{f"model.diffusion_model.{k}": v for k, v in _contiguous(transformer.state_dict()).items()},
        **{f"vae.{k}": v for k, v in _contiguous(vae.state_dict()).items()},
    }
    save_file(tensors, path, metadata=ltxv_config_metadata(transformer.config))
    return Path(path)


# ---- Z-Image and its Qwen3 text encoder ---------------------------------------------------------------------

# Z-Image at toy width: head 16 with the released RoPE split scaled down (4, 6, 6, what loading derives), no
# grouped kv heads (as released), the release's 1024-wide timestep MLP, 16 latent channels (FLUX VAE) and the
# tiny Qwen3's 32-wide features.
TINY_ZIMAGE = ZImageConfig(
    in_channels=16, dim=64, n_layers=2, n_refiner_layers=1, n_heads=4, n_kv_heads=4, ffn_hidden=170, cap_feat_dim=32,
    axes_dims=(4, 6, 6), adaln_dim=64, t_hidden_dim=1024,
)  # fmt: skip
# Qwen3 at toy size: grouped kv heads and a head_dim that is not hidden / heads, as Qwen3-4B has (128 vs 80).
TINY_QWEN3 = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
}  # fmt: skip
TINY_QWEN_PIECES = 400  # byte-level BPE: the 256 byte symbols, then merges
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # appended after the pieces, as in Qwen's
QWEN_ADDED_TOKENS = ("<think>", "</think>")
# The part of Qwen3's chat template a one-message prompt meets: each message in <|im_start|> ... <|im_end|>, then the
# assistant's turn, with an empty think block only when thinking is switched off.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)
QWEN_TOKENIZER_CORPUS = [
    *TOKENIZER_CORPUS,
    '一只红色的狐狸坐在新雪中，晨光柔和。 A poster with the words "Z-Image" in bold letters, 8k, photorealistic.',
]


def train_qwen_tokenizer():
    """A byte-level BPE `tokenizers.Tokenizer` built as Qwen's is (NFC, Qwen2's split pattern, bytes to symbols),
    with Qwen's chat tokens as special tokens after the pieces."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    from .gguf.text import PRE_TOKENIZER_PATTERNS

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZER_PATTERNS["qwen2"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_QWEN_PIECES, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(QWEN_TOKENIZER_CORPUS * 4, trainer)
    tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in QWEN_SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, normalized=False) for t in QWEN_ADDED_TOKENS])
    return tokenizer


def write_qwen_tokenizer(tokenizer, folder: Path, tokenizer_json: bool = True) -> Path:
    """The tokenizer in a Hugging Face folder: tokenizer.json (or, as ComfyUI ships Qwen's, vocab.json and
    merges.txt) and tokenizer_config.json with the chat template; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_json:
        tokenizer.save(str(folder / "tokenizer.json"))
    else:
        tokenizer.model.save(str(folder))  # vocab.json, merges.txt; the added tokens go in the config below
    added = {
        str(tokenizer.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                        "single_word": False, "special": t in QWEN_SPECIAL_TOKENS}
        for t in (*QWEN_SPECIAL_TOKENS, *QWEN_ADDED_TOKENS)
    }  # fmt: skip
    config = {
        "tokenizer_class": "Qwen2Tokenizer", "added_tokens_decoder": added, "add_prefix_space": False,
        "bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "model_max_length": 40960, "chat_template": QWEN3_CHAT_TEMPLATE, "errors": "replace",
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def make_qwen3(seed: int = 0, vocab_size: int | None = None, **overrides):
    """A random transformers Qwen3Model (sdpa attention); RMS-norm gains near 1 (Qwen3 scales by w)."""
    from transformers import Qwen3Config, Qwen3Model

    vocab = vocab_size or TINY_QWEN_PIECES + len(QWEN_SPECIAL_TOKENS) + len(QWEN_ADDED_TOKENS)
    config = Qwen3Config(**{"vocab_size": vocab, **TINY_QWEN3, **overrides}, attn_implementation="sdpa")
    return randomise_parameters(Qwen3Model(config), seed, std=0.2)


def qwen3_tensors(model, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """ComfyUI's qwen_3_4b.safetensors names (and Qwen3ForCausalLM's without its tied lm_head)."""
    return {prefix + k: v for k, v in _contiguous(model.state_dict()).items()}


def write_qwen3_text_encoder(model, tokenizer, layout: str, folder: Path) -> Path:
    """Layouts: comfy.safetensors (weights only, as ComfyUI's qwen_3_4b file; the tokenizer goes to
    qwen_tokenizer/ beside it in ComfyUI's vocab.json + merges.txt form, to pass as `tokenizer_dirs`), hf_folder
    (config.json, weights, tokenizer), diffusers_pipeline (model_index.json, text_encoder/, tokenizer/)."""
    path = Path(folder) / layout
    path.parent.mkdir(parents=True, exist_ok=True)
    if layout == "comfy.safetensors":
        save_file(qwen3_tensors(model), path)
        write_qwen_tokenizer(tokenizer, path.parent / "qwen_tokenizer", tokenizer_json=False)
    elif layout == "hf_folder":
        path.mkdir(parents=True)
        model.config.save_pretrained(path)
        save_file(qwen3_tensors(model), path / "model.safetensors")
        write_qwen_tokenizer(tokenizer, path)
    elif layout == "diffusers_pipeline":
        model.save_pretrained(path / "text_encoder")
        write_qwen_tokenizer(tokenizer, path / "tokenizer")
        (path / "model_index.json").write_text(json.dumps({"_class_name": "ZImagePipeline"}))
    else:
        raise ValueError(f"unknown Qwen3 layout {layout!r}")
    return path


# LTX-Video latent upsampler (the released spatial x2 design, 3-D convs) at toy width: one GroupNorm channel per group.
TINY_UPSAMPLER = LatentUpsamplerConfig(in_channels=TINY_LTXV.in_channels, mid_channels=32, num_blocks_per_stage=1)


def make_latent_upsampler(seed: int = 0, config: LatentUpsamplerConfig = TINY_UPSAMPLER) -> LatentUpsampler:
    return randomise_parameters(LatentUpsampler(config), seed)


def write_latent_upsampler(model: LatentUpsampler, path: Path) -> Path:
    """The original release's layout (`ltxv-spatial-upscaler-0.9.8.safetensors`): the module's own names, its
    constructor's arguments as the metadata JSON `config`."""
    cfg = model.config
    config = {"_class_name": "LatentUpsampler", "in_channels": cfg.in_channels, "mid_channels": cfg.mid_channels,
              "num_blocks_per_stage": cfg.num_blocks_per_stage, "dims": cfg.dims,
              "spatial_upsample": cfg.spatial_upsample, "temporal_upsample": cfg.temporal_upsample}  # fmt: skip
    save_file(_contiguous(model.state_dict()), path, metadata={"config": json.dumps(config)})
    return Path(path)
