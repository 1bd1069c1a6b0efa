"""bench/gpu.py's CPU path: tiny sizes, float32, the compile step traced by a backend that runs the graph as traced.

The GPU run itself (released sizes, bf16) needs CUDA; this keeps the script working until one is lent."""

from __future__ import annotations

import json

from bench import gpu


def test_cpu_path_on_tiny_models(capsys):
    argv = ["--tiny", "--device", "cpu", "--dtype", "float32", "--compile-backend", "eager", "--iters", "1",
            "--models", "lumina2,lumina_next,ltxv_2b"]  # fmt: skip
    assert gpu.main(argv) == 0  # every relative error within the bound
    lines = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["model"] for r in records] == ["lumina2", "lumina_next", "ltxv_2b"]
    for record in records:
        assert record["relative_error"] < 1e-5  # float32: the forwards agree to rounding
        for variant in ("diffusers eager", "ours eager", "ours compiled", "ours cached step"):
            assert record[variant]["ms"] > 0
    assert lines[-1].startswith("ratio ours compiled / diffusers eager")
