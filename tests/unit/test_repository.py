"""The repository stands alone: no tracked source or document points at design notes kept outside it.

What a reader needs from those notes is in docs/ (models.md, formats.md, sampling.md); code and docs cite
those pages. The notes' folder and file names are spelled in pieces here so this file does not match itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTE_NAMES = ("lumina2", "lumina_next", "ltx_video", "gguf", "comfyui", "style")
# The notes' folder, or one of their file names not written as a docs/ path (a docs page may share a name).
OUTSIDE_NOTE = re.compile(
    "shared" + "/reference" + r"|(?<!docs/)\b(?:" + "|".join(NOTE_NAMES) + r")\." + r"md\b"
)  # fmt: skip
CHECKED_SUFFIXES = ("*.py", "*.md", "*.toml")


def tracked_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--", *CHECKED_SUFFIXES], cwd=ROOT, capture_output=True, check=True
    )  # fmt: skip
    return [name for name in listing.stdout.decode().split("\0") if name]


def outside_references(text: str) -> list[str]:
    return [match.group(0) for match in OUTSIDE_NOTE.finditer(text)]


def test_the_pattern_finds_what_it_must_and_spares_docs_paths():
    assert outside_references("see " + "shared" + "/reference" + "/x for details") == ["shared" + "/reference"]
    assert outside_references("(" + "lumina2" + ".md §7)") == ["lumina2" + ".md"]
    assert outside_references("`" + "ltx_video" + ".md` section 4") == ["ltx_video" + ".md"]
    assert outside_references("docs/" + "gguf" + ".md, 'Block layouts'") == []
    assert outside_references("docs/models.md, docs/formats.md, docs/sampling.md, README.md") == []


def test_no_tracked_file_points_at_notes_outside_the_repository():
    files = tracked_files()
    assert "README.md" in files and any(name.startswith("docs/") for name in files)
    found = []
    for name in files:
        path = ROOT / name
        if not path.is_file():  # deleted in the work tree but still in the index
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{name}:{number}: {hit}" for hit in outside_references(line)]
    assert not found, (
        "these lines cite design notes that are not part of the repository; cite the docs/ page instead (or say it "
        "in place):\n" + "\n".join(found)
    )
