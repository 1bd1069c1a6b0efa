"""Per-token noise levels: generate part of a latent while keeping or lightly re-noising the rest.

For models that take one sigma per latent token (`per_token_sigma = True`: LTX-Video), every token has a noise
level m in [0, 1] (a `noise_mask`, or 1 - strength of a conditioning item): 1 is generated from noise, 0 kept as
given, anything between re-noised to m and denoised from there. The token's own clock is sigma_m = min(sigma, m),
the rule of the original LTX-Video pipeline and of diffusers' LTXImageToVideoPipeline / LTXConditionPipeline:

- it starts at (1 - min(sigma0, m))·init + min(sigma0, m)·noise;
- the model sees it at sigma min(sigma, m);
- it follows dx/dsigma = v(x, min(sigma, m)) while sigma < m and stands still while sigma > m (the derivative of
  the clock). Kept tokens (m = 0) never move: every solver returns them bit for bit. With Euler, a token of level
  0 < m < 1 waits until the first step that starts below m, exactly as the references' per-token scheduler step.

ComfyUI runs its LTX model at sigma·mask instead and blends the model's input and output with the kept latent by
the mask; for the 0/1 masks its image-to-video node makes, that is the same as the rule above.
"""

from __future__ import annotations

import torch

from ..errors import InvalidInputError

# Levels this close to 0 are kept exactly ("hard" conditioning), and a token moves once sigma is below its level
# plus this tolerance; the references use the same 1e-6.
LEVEL_EPS = 1e-6


def token_sigmas(levels: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each token's sigma, min(sigma, level); levels (B, 1, *dims) float32."""
    return levels.clamp(max=sigma)


def moving(levels: torch.Tensor, sigma: float) -> torch.Tensor:
    """1.0 where a token follows the flow at `sigma` (0 < level and sigma < level + eps), else 0.0."""
    return ((levels > LEVEL_EPS) & (sigma < levels + LEVEL_EPS)).float()


def kept(levels: torch.Tensor) -> torch.Tensor:
    """True for the tokens kept exactly (level 0), which the sampler's condition noise re-noises."""
    return levels <= LEVEL_EPS


def start_latent(init: torch.Tensor, noise: torch.Tensor, levels: torch.Tensor, sigma0: float) -> torch.Tensor:
    """(1 - s)·init + s·noise with s = min(sigma0, level), token by token."""
    s = token_sigmas(levels, sigma0)
    return (1 - s) * init + s * noise


def check_noise_mask(
    model: torch.nn.Module,
    noise_mask: torch.Tensor,
    init: torch.Tensor | None,
    shape: tuple[int, ...],
    device: torch.device,
) -> torch.Tensor:
    """Check a noise_mask against the model and the latent; returns it float32 on device, shaped (B, 1, *dims)."""
    name = getattr(model, "family", None) or type(model).__name__
    if not getattr(model, "per_token_sigma", False):
        raise InvalidInputError(
            f"a noise_mask was given, but this {name} model takes one sigma per sample, not one per latent "
            "token, so it cannot keep part of the latent while generating the rest. Use a model that supports it "
            "(LTX-Video), or sample without noise_mask."
        )
    if init is None:
        raise InvalidInputError(
            "a noise_mask keeps init_latent where it is below 1, but no init_latent was given: pass the latent to "
            "keep (e.g. from first_frame_conditioning) as init_latent."
        )
    batch, _, *dims = shape
    full = (batch, 1, *dims)
    fits = (
        noise_mask.ndim == len(shape)
        and noise_mask.shape[0] in (1, batch)
        and noise_mask.shape[1] == 1
        and all(m in (1, d) for m, d in zip(noise_mask.shape[2:], dims, strict=True))
    )
    if not fits:
        raise InvalidInputError(
            f"noise_mask has shape {tuple(noise_mask.shape)}; for the latent {shape} it must be {full} or broadcast "
            f"to it: batch 1 or {batch}, one channel, and each of the last {len(dims)} dims 1 or the latent's "
            f"(e.g. {(batch, 1, dims[0], *[1] * (len(dims) - 1))} for one value per frame)."
        )
    mask = noise_mask.to(device=device, dtype=torch.float32)
    if not bool(((mask >= 0) & (mask <= 1)).all()):  # NaN fails both comparisons
        raise InvalidInputError(
            f"noise_mask values must lie in [0, 1] (1 = generate, 0 = keep init_latent, between = partial "
            f"strength); got values from {mask.min().item()} to {mask.max().item()}."
        )
    return mask.expand(full).contiguous()
