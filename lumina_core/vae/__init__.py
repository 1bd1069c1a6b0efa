"""VAEs and their loader: the LDM/FLUX KL autoencoder, and the LTX-Video causal video VAE."""

from .autoencoder import Autoencoder, AutoencoderConfig, config_from_state_dict
from .load import load_vae
from .ltx_video import LTXVideoVAE, LTXVideoVAEConfig, first_frame_conditioning, load_ltx_vae
from .ltx_video_media import VideoGuide, encode_condition, encode_conditions, encode_video
from .ltx_video_tiling import TileSettings

__all__ = [
    "Autoencoder", "AutoencoderConfig", "LTXVideoVAE", "LTXVideoVAEConfig", "TileSettings", "VideoGuide",
    "config_from_state_dict", "encode_condition", "encode_conditions", "encode_video", "first_frame_conditioning",
    "load_ltx_vae", "load_vae",
]  # fmt: skip
