"""What flows between our nodes: loaded models with a placement policy.

ComfyUI caches node outputs, so a handle lives as long as its loader's output stays cached: re-queuing
reuses it, and changing the loader's file drops it (and with it the weights).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import comfy_bridge as bridge

DEVICE_POLICIES = {
    "auto": "run on ComfyUI's device, move back to RAM between runs (frees VRAM for other models)",
    "gpu_resident": "stay on ComfyUI's device between runs (faster re-runs, holds VRAM)",
    "cpu": "always run on the CPU",
}
WEIGHT_DTYPES = ("auto", "bf16", "fp16", "fp32")


def weight_dtype(choice: str, policy: str) -> torch.dtype:
    """'auto' is bf16 where the compute device supports it, else fp32 (fp16 overflows on Lumina 2)."""
    if choice != "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[choice]
    device = run_device(policy)
    return torch.bfloat16 if device.type != "cpu" and bridge.supports_bf16(device) else torch.float32


def run_device(policy: str) -> torch.device:
    return torch.device("cpu") if policy == "cpu" else bridge.compute_device()


def home_device(policy: str) -> torch.device:
    """Where the weights wait between runs."""
    return bridge.compute_device() if policy == "gpu_resident" else bridge.offload_device()


def module_bytes(module) -> int:
    """Bytes the weights take, packed GGUF weights (buffers) included."""
    module = module if isinstance(module, torch.nn.Module) else module.model
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


@dataclass
class Handle:
    """A loaded model (transformer, text encoder or VAE) and where it should run."""

    model: object  # nn.Module, or GemmaTextEncoder (which has .to and .model)
    kind: str  # "transformer", "text_encoder", "vae"
    family: str
    policy: str
    source: str  # the file it came from, for messages

    @contextmanager
    def placed(self):
        """Move the model to its run device for the duration of a `with` block, then back home."""
        device = run_device(self.policy)
        bridge.make_room(module_bytes(self.model), device)
        self.model.to(device)
        try:
            yield self.model
        finally:
            self.model.to(home_device(self.policy))
            if device.type != "cpu":
                bridge.empty_cache()
