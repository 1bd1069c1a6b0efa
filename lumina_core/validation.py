"""The rules every user-facing number must meet, checked in one place before anything is loaded or run.

The Python API (`sample`, `text_to_image`), the CLI and the ComfyUI nodes all go through these helpers (most of
them through `sampling.check_settings`), so a value is refused with the same one-line message wherever it comes
from. Floats must be finite: a NaN compares False with every bound, so without this check `cfg_trunc=nan` would
silently switch truncation off. Integers must be integers: 2.5 steps is an error, not a rounding.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

from .errors import InvalidInputError

SEED_MAX = 2**64 - 1  # the seed widget's range (0 .. 0xFFFFFFFFFFFFFFFF); torch's generator takes exactly these


def check_int(name: str, value: object, low: int | None = None, high: int | None = None, rule: str = "") -> int:
    """`value` as an int, or InvalidInputError naming `name`, the bounds (inclusive) and the `rule` behind them."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise InvalidInputError(f"{name} must be a whole number{_bounds(low, high)}{_rule(rule)}; got {value!r}.")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidInputError(f"{name} must be a whole number{_bounds(low, high)}{_rule(rule)}; got {value}.")
    return value


def check_float(
    name: str,
    value: object,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    rule: str = "",
) -> float:
    """`value` as a finite float within [low, high] ((low, high] with low_open), or InvalidInputError saying so."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise InvalidInputError(f"{name} must be a number{_bounds(low, high, low_open)}{_rule(rule)}; got {value!r}.")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or below or (high is not None and value > high):
        raise InvalidInputError(
            f"{name} must be a finite number{_bounds(low, high, low_open)}{_rule(rule)}; got {value}."
        )
    return value


def check_seed(seed: object) -> int:
    """A seed is a whole number from 0 to 2**64 - 1, the range of ComfyUI's seed widget and of torch's generator.

    Negative seeds are refused rather than wrapped: -1 would otherwise give the image of 2**64 - 1.
    """
    return check_int("seed", seed, 0, SEED_MAX, "2**64 - 1, the seed widget's range; -1 is not a random seed here")


def check_model_options(options: Mapping[str, object]) -> None:
    """The numeric model keywords `sample(model_options=...)` passes on (Lumina-Next's, LTX-Video's); None where a
    keyword means "derive it" is accepted. Names and choices the model itself checks when it is called."""
    rules = {
        "frame_rate": lambda v: check_float("frame_rate", v, 0.0, low_open=True, rule="frames per second"),
        "scaling_watershed": lambda v: check_float("scaling_watershed", v, 0.0, rule="the Lumina time where "
                                                   "time-aware RoPE scaling turns from linear to NTK; 1 or more "
                                                   "keeps it linear"),
        "rope_scale": lambda v: check_float("rope_scale", v, 0.0, low_open=True, rule="the RoPE scale factor; "
                                            "None derives it from the image size"),
        "base_resolution": lambda v: check_int("base_resolution", v, 1, rule="the training image side in pixels"),
        "context_drop_ratio": lambda v: check_int("context_drop_ratio", v, 1, rule="1 = off, r merges r x r windows "
                                                  "of image keys and values"),
    }  # fmt: skip
    for name, value in options.items():
        if name in rules and value is not None:
            rules[name](value)


def _bounds(low: float | None, high: float | None, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" from {_num(low)} to {_num(high)}" if not low_open else f" above {_num(low)} and at most {_num(high)}"
    if low is not None:
        return f" {'above' if low_open else 'of at least'} {_num(low)}"
    if high is not None:
        return f" of at most {_num(high)}"
    return ""


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _rule(rule: str) -> str:
    return f" ({rule})" if rule else ""
