"""The one warning every text encoder gives when a prompt is longer than the tokens it may use."""

from __future__ import annotations

import logging
import warnings

logger = logging.getLogger("lumina_core.text")


def warn_cut(encoder: str, index: int, tokens: int, kept: int, dropped_text: str = "", hint: str = "") -> None:
    """Log and warn that prompt `index` had `tokens` tokens of which only the first `kept` are used.

    dropped_text: the start of what was cut, when the tokenizer can decode it; hint: how to keep more.
    """
    message = f"{encoder} prompt {index} has {tokens} tokens; the last {tokens - kept} were dropped{hint}"
    if dropped_text:
        message += f": {dropped_text[:80]!r}{'...' if len(dropped_text) > 80 else ''}"
    logger.warning(message)
    warnings.warn(message, stacklevel=3)
