"""The GGUF converter's bad outputs, through `convert` and `python -m lumina_core.gguf convert`: one line naming
the output and the rule, exit code 1, the source and any existing file untouched, no partial file left."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from lumina_core import tiny
from lumina_core.errors import InvalidInputError
from lumina_core.gguf.__main__ import main
from lumina_core.gguf.convert import convert

EXIT_ERROR = 1  # lumina_core.gguf's documented code for an error


@pytest.fixture
def folder(tmp_path) -> Path:
    tiny.write_transformer(tiny.make_transformer(0), "original.safetensors", tmp_path)
    (tmp_path / "existing.gguf").write_bytes(b"an older conversion")
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "original.safetensors", tmp_path / "link.gguf")
    os.link(tmp_path / "original.safetensors", tmp_path / "hard_link.gguf")
    return tmp_path


@dataclass(frozen=True)
class Case:
    id: str
    output: Callable[[Path], Path]
    names: tuple[str, ...]  # {source} and {output} are replaced


CASES = [
    Case("output_is_source", lambda f: f / "original.safetensors", ("cannot write {output}: it is the source",)),
    Case("output_links_to_source", lambda f: f / "link.gguf", ("cannot write {output}: it is the source {source}",)),
    Case("output_hard_links_source", lambda f: f / "hard_link.gguf", ("cannot write {output}: it is the source",)),
    Case("output_exists", lambda f: f / "existing.gguf", ("cannot write {output}: it exists; pass --overwrite",)),
    Case("output_is_a_folder", lambda f: f / "out", ("cannot write {output}: it is a folder",)),
    Case(
        "output_under_a_file", lambda f: f / "a_file" / "x.gguf", ("cannot write {output}:", "is a file, not a folder")
    ),
]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file (and its content) and link under folder: what must not change when a conversion is refused."""
    return {
        str(p.relative_to(folder)): (
            os.readlink(p) if p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        )
        for p in sorted(folder.rglob("*"))
    }


def assert_refused(message: str, case: Case, folder: Path) -> None:
    output = case.output(folder)
    for text in case.names:
        assert text.format(output=output, source=folder / "original.safetensors") in message, message
    assert "\n" not in message.strip() and ".part" not in message


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_api(case, folder):
    before = fingerprint(folder)
    with pytest.raises(InvalidInputError) as caught:
        convert(folder / "original.safetensors", case.output(folder), "Q8_0")
    assert_refused(str(caught.value), case, folder)
    assert fingerprint(folder) == before
    convert(folder / "original.safetensors", folder / "fine.gguf", "Q8_0")  # still usable


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cli(case, folder, capsys):
    before = fingerprint(folder)
    assert main(["convert", str(folder / "original.safetensors"), str(case.output(folder))]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert_refused(err, case, folder)
    assert fingerprint(folder) == before


def test_overwrite_replaces_an_existing_output_but_never_the_source(folder, capsys):
    assert main(["convert", str(folder / "original.safetensors"), str(folder / "existing.gguf"), "--overwrite"]) == 0
    assert (folder / "existing.gguf").read_bytes().startswith(b"GGUF")
    source = fingerprint(folder)["original.safetensors"]
    for output in ("original.safetensors", "link.gguf", "hard_link.gguf"):
        assert main(["convert", str(folder / "original.safetensors"), str(folder / output), "--overwrite"]) == 1
        assert "it is the source" in capsys.readouterr().err
    assert fingerprint(folder)["original.safetensors"] == source
