"""Text encoding for Lumina-Image 2.0: Gemma-2 features and the system-prompt templates."""

from .gemma import GEMMA2_CONFIG_METADATA_KEY, GemmaTextEncoder, config_metadata, load_text_encoder
from .prompts import SYSTEM_PROMPTS, format_negative_prompt, format_prompt

__all__ = [
    "GEMMA2_CONFIG_METADATA_KEY",
    "SYSTEM_PROMPTS",
    "GemmaTextEncoder",
    "config_metadata",
    "format_negative_prompt",
    "format_prompt",
    "load_text_encoder",
]
