"""The converter: what it writes, read back with the plain gguf reader, and the `python -m lumina_core.gguf` CLI."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from gguf import GGUFReader
from gguf.quants import dequantize as gguf_dequantize
from safetensors.torch import save_file

from lumina_core import tiny
from lumina_core.gguf.__main__ import main
from lumina_core.gguf.convert import TARGETS, convert
from lumina_core.gguf.quantized import QuantizedLinear
from lumina_core.loading.transformer import load_transformer
from tests.fixtures.gguf_files import Q

WIDE = replace(tiny.TINY_TRANSFORMER, dim=256, n_heads=4, n_kv_heads=2, ffn_hidden=512, axes_dims=(24, 20, 20))
# Relative RMSE of a round trip through each type (random normal weights), with headroom over the values
# measured in docs/formats.md, 'GGUF block layouts'.
BOUNDS = {"Q8_0": 0.01, "Q6_K": 0.03, "Q5_K": 0.05, "Q5_0": 0.06, "Q4_K": 0.1, "Q4_0": 0.1, "BF16": 0.004, "F16": 5e-4}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    model = tiny.make_transformer(0, WIDE)
    folder = tmp_path_factory.mktemp("convert")
    return model, tiny.write_transformer(model, "comfy_bf16.safetensors", folder)


def read_back(path):
    reader = GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    tensors = {}
    for tensor in reader.tensors:
        values = gguf_dequantize(tensor.data, tensor.tensor_type)
        tensors[tensor.name] = (tensor.tensor_type, values.reshape(tuple(reversed(tensor.shape.tolist()))))
    return arch, tensors


@pytest.mark.parametrize("type_name", list(TARGETS))
def test_round_trip_through_the_plain_gguf_reader(source, tmp_path, type_name):
    model, path = source
    counts = convert(path, tmp_path / "out.gguf", type_name)
    arch, tensors = read_back(tmp_path / "out.gguf")
    original = {k: v for k, v in tiny.transformer_tensors(model).items() if k != "norm_final.weight"}
    assert arch == "lumina2" and set(tensors) == set(original)  # original (ComfyUI) names, no prefix
    target = TARGETS[type_name][0]
    assert counts[target.name] > 0
    for name, (qtype, values) in tensors.items():
        expected = original[name].to(torch.bfloat16).float().numpy()  # the source file is bf16
        if original[name].ndim == 1 or "norm" in name:
            assert qtype == Q.F32, name  # small and 1-D tensors stay float32
        elif name.startswith(
            ("x_embedder", "t_embedder", "cap_embedder", "final_layer", "context_refiner", "noise_refiner")
        ):
            assert qtype in (Q.BF16, Q.F16) if target in (Q.F16, Q.BF16) else qtype == Q.BF16, name
        elif ".attention.qkv." in name or ".feed_forward." in name:
            assert qtype == target, name
        error = np.sqrt(((values - expected) ** 2).mean() / (expected**2).mean())
        bound = BOUNDS[type_name] if qtype == target else 1e-6
        assert error < bound, (name, qtype.name, error)


def test_converted_file_loads_and_runs(source, tmp_path):
    model, path = source
    convert(path, tmp_path / "q4k.gguf", "Q4_K")
    loaded = load_transformer(tmp_path / "q4k.gguf")
    assert any(isinstance(m, QuantizedLinear) and m.qtype == Q.Q4_K for m in loaded.modules())
    x, sigma, context = torch.randn(1, 16, 4, 6), torch.rand(1), torch.randn(1, 5, 32)
    out = loaded(x, sigma, context, torch.ones(1, 5, dtype=torch.bool))
    expected = model.to(torch.bfloat16).float()(x, sigma, context, torch.ones(1, 5, dtype=torch.bool))
    assert ((out - expected).norm() / expected.norm()).item() < 0.15


def test_cli(source, tmp_path, capsys):
    _, path = source
    assert main(["convert", str(path), str(tmp_path / "cli.gguf"), "--type", "Q5_K"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "cli.gguf").stat().st_size > 0
    not_a_model = tmp_path / "vae.safetensors"
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3)}, not_a_model)
    assert main(["convert", str(not_a_model), str(tmp_path / "x.gguf")]) == 1
    assert "holds a VAE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", str(path), str(tmp_path / "x.gguf"), "--type", "Q3_K"])


def test_a_failed_conversion_leaves_no_file(source, tmp_path, monkeypatch):
    def fail(tensor, qtype):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr("lumina_core.gguf.convert._encode", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(source[1], tmp_path / "out.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_a_stale_part_file_is_removed_with_a_note(source, tmp_path, caplog):
    stale = tmp_path / ".out.gguf.part"
    stale.write_bytes(b"\0" * 4096)  # what a killed conversion leaves
    with caplog.at_level("WARNING", logger="lumina_core.gguf"):
        convert(source[1], tmp_path / "out.gguf", "Q8_0")
    assert f"removed {stale}, left by an interrupted conversion" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def test_sigterm_stops_the_cli_and_removes_its_part_file(source, tmp_path, monkeypatch):
    import os
    import signal

    from lumina_core.gguf import convert as module

    encode = module._encode
    calls = []

    def terminated_midway(tensor, qtype):
        calls.append(qtype)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill PID` would, while tensors are being written
        return encode(tensor, qtype)

    monkeypatch.setattr(module, "_encode", terminated_midway)
    with pytest.raises(SystemExit) as exit:
        main(["convert", str(source[1]), str(tmp_path / "out.gguf")])
    assert exit.value.code == 143 and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI's handler is gone again


def test_missing_output_folders_are_created(source, tmp_path):
    convert(source[1], tmp_path / "new" / "folder" / "out.gguf", "F16")
    assert (tmp_path / "new" / "folder" / "out.gguf").read_bytes()[:4] == b"GGUF"
