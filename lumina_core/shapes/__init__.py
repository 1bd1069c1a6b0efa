"""A tiny Lumina-Image 2.0 model trained here on synthetic shapes, so tests and benches can judge pictures.

`dataset` draws the pictures and captions, `text` makes the caption tokenizer and the random Gemma-2,
`train` trains the autoencoder and the transformer (`python -m lumina_core train-tiny`), `draw` makes
pictures with the trained files through the public API, `analysis` checks a picture against its caption.
The trained files live in `weights/` with their `training.json` (config, sha256, timings).
"""

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
# role -> file name; the transformer is stored in bf16, as ComfyUI's `lumina_2_model_bf16.safetensors`.
FILES = {
    "transformer": "shapes_lumina2_bf16.safetensors",
    "text_encoder": "shapes_gemma2.safetensors",
    "vae": "shapes_ae.safetensors",
}
