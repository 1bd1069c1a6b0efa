"""The shapes model's text encoder: a tiny random Gemma-2 with a tokenizer trained on the caption vocabulary.

The encoder is never trained: the transformer learns to read its features. Each caption word is one piece,
and so are each system prompt and the `<Prompt Start>` tag, so a prompt formatted the Lumina-Image 2.0 way
("<system text> <Prompt Start> <caption>") costs a few tokens more than the caption alone.
"""

from __future__ import annotations

import torch

from .. import tiny
from ..text.prompts import PROMPT_START, SYSTEM_PROMPTS
from . import dataset

# The tag with the spaces around it, so the first caption word stays a word piece of its own.
WHOLE_PIECES = (*(text for text in SYSTEM_PROMPTS.values() if text), f" {PROMPT_START} ")
VOCAB_SIZE = 400  # 256 byte pieces, 5 special, 7 whole pieces, then merges: every caption word becomes one piece
GEMMA = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "query_pre_attn_scalar": 16,
}  # fmt: skip
# Gemma scales embeddings by sqrt(hidden) = 8: rows of this spread keep each token's own identity about four
# times larger than the unit-RMS context its (randomly initialised, post-normed) layers add.
EMBEDDING_STD = 0.5


def train_caption_tokenizer() -> bytes:
    """The SentencePiece model (bytes); raises if a caption word would take more than one piece."""
    spm_model = tiny.train_tokenizer(dataset.caption_corpus(), VOCAB_SIZE, WHOLE_PIECES)
    processor = tiny.sentencepiece.SentencePieceProcessor(model_proto=spm_model)
    split = [word for word in dataset.vocabulary() if len(processor.encode(f" {word}")) != 1]
    if split:
        raise RuntimeError(f"the caption tokenizer splits {split}: raise VOCAB_SIZE ({VOCAB_SIZE}).")
    return spm_model


def make_text_encoder(vocab_size: int, seed: int):
    """A random transformers Gemma2Model (eval mode): default initialisation, embeddings of spread EMBEDDING_STD."""
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=vocab_size, **GEMMA, attn_implementation="eager")
    model = Gemma2Model(config)
    with torch.no_grad():
        model.embed_tokens.weight.normal_(0.0, EMBEDDING_STD, generator=torch.Generator().manual_seed(seed))
    return model.eval()
