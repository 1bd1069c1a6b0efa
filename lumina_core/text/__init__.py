"""Text encoding: Gemma features for Lumina-Next, Gemma-2 features for Lumina-Image 2.0, T5-XXL features for
LTX-Video, and Lumina 2's system-prompt templates."""

from .gemma import (
    GEMMA1,
    GEMMA2,
    GEMMA2_CONFIG_METADATA_KEY,
    GEMMA_CONFIG_METADATA_KEY,
    GemmaTextEncoder,
    GemmaVariant,
    config_metadata,
)
from .load import load_text_encoder
from .prompts import SYSTEM_PROMPTS, format_negative_prompt, format_prompt
from .t5 import T5PromptTokenizer, T5TextEncoder, find_t5_tokenizer, t5_encoder_from_state_dict

__all__ = [
    "GEMMA1",
    "GEMMA2",
    "GEMMA2_CONFIG_METADATA_KEY",
    "GEMMA_CONFIG_METADATA_KEY",
    "SYSTEM_PROMPTS",
    "GemmaTextEncoder",
    "GemmaVariant",
    "T5PromptTokenizer",
    "T5TextEncoder",
    "config_metadata",
    "find_t5_tokenizer",
    "format_negative_prompt",
    "format_prompt",
    "load_text_encoder",
    "t5_encoder_from_state_dict",
]
