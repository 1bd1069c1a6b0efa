"""GGUF files: reading (memory-mapped, validated), torch dequantization, quantized Linear layers, text-encoder
name maps for llama.cpp files, and a converter (`python -m lumina_core.gguf convert IN OUT --type Q8_0`).

`lumina_core.load_transformer` and `load_text_encoder` open .gguf files through this package; nothing here
needs importing directly except to convert files or inspect metadata (`reader.read_metadata`).
"""
