"""LoRA for every transformer family: read any common LoRA file, apply it at a strength, take it off again.

    lora = load_lora("style.safetensors")            # diffusers / peft, original / ComfyUI, kohya names; DoRA
    styled = apply_loras(model, [(lora, 0.8)])        # a new model; `model` is never written to
    model is remove_loras(styled)                     # True

GGUF-quantized layers take the LoRA as a low-rank side path beside their packed weight; float layers are merged.
"""

from .apply import applied_loras, apply_loras, remove_loras
from .factors import LoRA, LowRank, load_lora

__all__ = ["LoRA", "LowRank", "applied_loras", "apply_loras", "load_lora", "remove_loras"]
