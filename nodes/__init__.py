"""ComfyUI nodes over lumina_core (classic V1 API: plain classes that import and test without ComfyUI).

Every node is registered under `node_id(cls)`: "Lumina" + its class name without "Lumina" (FlowSampler ->
LuminaFlowSampler, LoadLuminaTransformer -> LuminaLoadTransformer), so no id collides with another pack's
generic names (other packs register GGUFLoader and FlowSampler too; ComfyUI keeps whichever loads last).
"""

from . import comfy_bridge
from .decode import LTXVideoDecode, LuminaVAEDecode
from .loaders import GGUFLoader, LoadGemma, LoadLatentUpsampler, LoadLuminaTransformer, LoadLuminaVAE, LoadT5
from .lora import LoadLuminaLoRA
from .sampling import FlowSampler, GemmaEncode, T5Encode
from .video import LTXVideoEncode, LTXVideoGuide, LTXVideoLatentUpsample

PREFIX = "Lumina"


def node_id(cls: type) -> str:
    """The id a node class is registered under."""
    return PREFIX + cls.__name__.replace(PREFIX, "")


def register(*classes: type) -> tuple[dict[str, type], dict[str, str]]:
    """NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS for these classes, under their `node_id`s."""
    ids = {node_id(cls): cls for cls in classes}
    if len(ids) != len(classes):
        raise ValueError(f"two node classes share an id: {[cls.__name__ for cls in classes]}")
    return ids, {key: cls.DISPLAY_NAME for key, cls in ids.items()}


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = register(
    LoadLuminaTransformer, GGUFLoader, LoadLuminaLoRA, LoadGemma, GemmaEncode, LoadT5, T5Encode, FlowSampler,
    LoadLuminaVAE, LuminaVAEDecode, LTXVideoDecode, LTXVideoGuide, LTXVideoEncode, LoadLatentUpsampler,
    LTXVideoLatentUpsample,
)  # fmt: skip

comfy_bridge.register_folders()
