"""Text encoding: Gemma features for Lumina-Next, Gemma-2 features for Lumina-Image 2.0, Qwen3-4B features for
Z-Image, T5-XXL features for LTX-Video, and Lumina 2's system-prompt templates.

Names are imported on first use: the encoders need `transformers`, which takes seconds to import, and a
ComfyUI start (or `import lumina_core.text.prompts`) should not pay for it before an encoder is loaded.
"""

from importlib import import_module

_LAZY = {  # name -> the submodule defining it, relative to this package
    **dict.fromkeys(("GEMMA1", "GEMMA2", "GEMMA2_CONFIG_METADATA_KEY", "GEMMA_CONFIG_METADATA_KEY", "GemmaTextEncoder",
                     "GemmaVariant", "config_metadata"), ".gemma"),
    "load_text_encoder": ".load",
    **dict.fromkeys(("Qwen3TextEncoder", "QwenPromptTokenizer", "find_qwen_tokenizer"), ".qwen3"),
    **dict.fromkeys(("SYSTEM_PROMPTS", "format_negative_prompt", "format_prompt"), ".prompts"),
    **dict.fromkeys(("T5PromptTokenizer", "T5TextEncoder", "find_t5_tokenizer", "t5_encoder_from_state_dict"),
                    ".t5"),
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'lumina_core.text' has no attribute {name!r}")
