"""The LDM/FLUX KL autoencoder and its loader."""

from .autoencoder import Autoencoder, AutoencoderConfig, config_from_state_dict, load_vae

__all__ = ["Autoencoder", "AutoencoderConfig", "config_from_state_dict", "load_vae"]
