"""Text encoding: Gemma features for Lumina-Next and Gemma-2 features for Lumina-Image 2.0, and Lumina 2's
system-prompt templates."""

from .gemma import (
    GEMMA1,
    GEMMA2,
    GEMMA2_CONFIG_METADATA_KEY,
    GEMMA_CONFIG_METADATA_KEY,
    GemmaTextEncoder,
    GemmaVariant,
    config_metadata,
    load_text_encoder,
)
from .prompts import SYSTEM_PROMPTS, format_negative_prompt, format_prompt

__all__ = [
    "GEMMA1",
    "GEMMA2",
    "GEMMA2_CONFIG_METADATA_KEY",
    "GEMMA_CONFIG_METADATA_KEY",
    "SYSTEM_PROMPTS",
    "GemmaTextEncoder",
    "GemmaVariant",
    "config_metadata",
    "format_negative_prompt",
    "format_prompt",
    "load_text_encoder",
]
