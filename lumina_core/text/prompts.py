"""System prompts and prompt formatting for Lumina-Image 2.0.

Lumina-Image 2.0 conditions on "<system text> <Prompt Start> <user prompt>". The preset names and
texts are those of `--system_type` in the original `sample.py` (Alpha-VLLM/Lumina-Image-2.0), which
is the canonical formatting; diffusers' `Lumina2Pipeline` and ComfyUI's `CLIPTextEncodeLumina2`
build the same string. The Gradio `demo.py` joins system text and prompt without the tag, and is
not followed here.
"""

from __future__ import annotations

PROMPT_START = "<Prompt Start>"

SYSTEM_PROMPTS: dict[str, str] = {
    "real": (
        "You are an assistant designed to generate superior images with the superior degree of image-text "
        "alignment based on textual prompts or user prompts."
    ),
    "align": (
        "You are an assistant designed to generate high-quality images with the highest degree of image-text "
        "alignment based on textual prompts."
    ),
    "base": "You are an assistant designed to generate high-quality images based on user prompts.",
    "aesthetics": (
        "You are an assistant designed to generate high-quality images with highest degree of aesthetics based on "
        "user prompts."
    ),
    "4grid": (
        "You are an assistant designed to generate four high-quality images with highest degree of aesthetics "
        "arranged in 2x2 grids based on user prompts."
    ),
    "empty": "",
}


def resolve_system_prompt(system_prompt: str) -> str:
    """The text of a preset name (a key of SYSTEM_PROMPTS), or `system_prompt` itself as custom text."""
    return SYSTEM_PROMPTS.get(system_prompt, system_prompt)


def format_prompt(prompt: str, system_prompt: str = "real") -> str:
    """`"{system} <Prompt Start> {prompt}"`, or `prompt` alone when the system text is empty or blank.

    system_prompt: a preset name from SYSTEM_PROMPTS, or a custom system text.
    """
    system = resolve_system_prompt(system_prompt)
    if not system.strip():
        return prompt
    return f"{system} {PROMPT_START} {prompt}"


def format_negative_prompt(prompt: str, system_prompt: str = "real") -> str:
    """Format a negative prompt the way `sample.py` does.

    An empty negative is encoded as the empty string, with no system text: `sample.py` adds the template
    only when the negative is non-empty, and the model was sampled that way. A non-empty negative is
    formatted exactly like a positive prompt.
    """
    if prompt == "":
        return ""
    return format_prompt(prompt, system_prompt)
