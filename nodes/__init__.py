"""ComfyUI nodes over lumina_core (classic V1 API: plain classes that import and test without ComfyUI)."""

from . import comfy_bridge
from .decode import LTXVideoDecode, LuminaVAEDecode
from .loaders import GGUFLoader, LoadGemma, LoadLuminaTransformer, LoadLuminaVAE, LoadT5
from .sampling import FlowSampler, GemmaEncode, T5Encode

_NODES = (LoadLuminaTransformer, GGUFLoader, LoadGemma, GemmaEncode, LoadT5, T5Encode, FlowSampler, LoadLuminaVAE,
          LuminaVAEDecode, LTXVideoDecode)  # fmt: skip

NODE_CLASS_MAPPINGS = {node.__name__: node for node in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {node.__name__: node.DISPLAY_NAME for node in _NODES}

comfy_bridge.register_folders()
