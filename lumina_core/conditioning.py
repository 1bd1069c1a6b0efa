"""The text conditioning passed from a text encoder to a sampler and on to the transformer."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .errors import InvalidInputError

# Family id -> (model name, text encoder name), for messages about a miswired graph.
FAMILY_NAMES = {
    "lumina2": ("Lumina-Image 2.0", "Gemma-2-2B"),
    "lumina_next": ("Lumina-Next", "Gemma-2B (Gemma 1)"),
    "zimage": ("Z-Image", "Qwen3-4B"),
    "ltxv": ("LTX-Video", "T5-XXL"),
}


@dataclass(frozen=True)
class Conditioning:
    """Per-token text features and their padding mask.

    embeds: (B, L, D) float hidden states, right padded.
    mask:   (B, L) bool, True for real tokens. Every row has at least one True.
    family: the model family the encoder made it for ("lumina2", "lumina_next", "zimage", "ltxv"), so a sampler can name
            both sides of a miswired graph; None for features from elsewhere (checked by width only).
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    family: str | None = None

    def __post_init__(self) -> None:
        if self.embeds.ndim != 3 or self.mask.shape != self.embeds.shape[:2]:
            raise InvalidInputError(
                f"Conditioning expects embeds (B, L, D) and mask (B, L); got {tuple(self.embeds.shape)} "
                f"and {tuple(self.mask.shape)}."
            )
        check_right_padded(self.mask)

    @property
    def batch_size(self) -> int:
        return self.embeds.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        return replace(
            self, embeds=self.embeds.to(device=device, dtype=dtype), mask=self.mask.to(device=device, dtype=torch.bool)
        )

    def repeat_to(self, batch_size: int) -> Conditioning:
        """Tile a batch of 1 (or of a divisor of batch_size) up to batch_size, sample by sample."""
        if batch_size % self.batch_size:
            raise InvalidInputError(
                f"cannot spread {self.batch_size} prompt(s) over a batch of {batch_size}: the batch size must be "
                "a multiple of the number of prompts."
            )
        repeats = batch_size // self.batch_size
        return replace(
            self, embeds=self.embeds.repeat_interleave(repeats, 0), mask=self.mask.repeat_interleave(repeats, 0)
        )

    def padded_to(self, length: int) -> Conditioning:
        """Right-pad with zero features and False mask up to `length` tokens."""
        extra = length - self.embeds.shape[1]
        if extra <= 0:
            return self
        embeds = torch.nn.functional.pad(self.embeds, (0, 0, 0, extra))
        mask = torch.nn.functional.pad(self.mask, (0, extra), value=False)
        return replace(self, embeds=embeds, mask=mask)


def check_right_padded(mask: torch.Tensor) -> None:
    """Raise unless every row of a (B, L) mask is some True tokens followed only by padding, at least one token.

    The models give caption token i position i: a left-padded or gapped mask would silently shift them.
    """
    lengths = mask.sum(dim=1, keepdim=True)
    if bool((lengths == 0).any()):
        raise InvalidInputError("every prompt needs at least one token (a row of the text mask is all False).")
    positions = torch.arange(mask.shape[1], device=mask.device)
    if not bool((mask.bool() == (positions < lengths)).all()):
        row = int((mask.bool() != (positions < lengths)).any(dim=1).nonzero()[0])
        raise InvalidInputError(
            f"the text mask must be right-padded (tokens first, then padding); row {row} has padding before or "
            "between tokens. Tokenize with padding_side='right'."
        )


def concat_conditionings(parts: list[Conditioning]) -> Conditioning:
    """Stack conditionings along the batch, padding them to the longest token count."""
    families = {p.family for p in parts} - {None}
    if len(families) > 1:
        raise InvalidInputError(f"cannot batch text features made for different models: {', '.join(sorted(families))}.")
    widths = sorted({p.embeds.shape[-1] for p in parts})
    if len(widths) > 1:
        raise InvalidInputError(
            f"cannot batch text features of different widths {widths}: the prompts were encoded by different text "
            "encoders; encode both with the text encoder made for this model."
        )
    length = max(p.embeds.shape[1] for p in parts)
    padded = [p.padded_to(length) for p in parts]
    family = families.pop() if families else None
    return Conditioning(torch.cat([p.embeds for p in padded]), torch.cat([p.mask for p in padded]), family)


def check_family(model_family: str, conditioning: Conditioning, role: str = "positive") -> None:
    """Raise when a conditioning was encoded for another model family, naming both sides and the fix."""
    if conditioning.family is None or conditioning.family == model_family:
        return
    model_name, wanted_encoder = FAMILY_NAMES.get(model_family, (model_family, "its own text encoder"))
    other_model, other_encoder = FAMILY_NAMES.get(conditioning.family, (conditioning.family, "another encoder"))
    raise InvalidInputError(
        f"the {role} text features come from a {other_encoder} encoder, made for {other_model}, but the model is "
        f"{model_name}, which needs {wanted_encoder} features: load the text encoder that belongs to this model."
    )
