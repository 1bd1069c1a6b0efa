"""Errors raised by lumina_core.

Every message says what failed, which file/key/shape was involved, what was expected and what was
found, so a ComfyUI user can act on the one line shown in the error panel.
"""


class LuminaCoreError(Exception):
    """Base class for every error lumina_core raises on purpose."""


class CheckpointError(LuminaCoreError, ValueError):
    """A file could not be read as a checkpoint, or its contents are not what the loader expects."""


class UnsupportedModelError(CheckpointError):
    """The file is a readable checkpoint, but of a model family or part this loader does not handle."""


class InvalidInputError(LuminaCoreError, ValueError):
    """A size, step count or other argument breaks a rule of the model or sampler."""


class SamplingError(LuminaCoreError, RuntimeError):
    """Sampling went wrong at run time (for example the latent became NaN)."""


class DecodeError(LuminaCoreError, RuntimeError):
    """Decoding a latent went wrong at run time (the VAE made NaN/inf pixels)."""
