"""The trained shapes model, through the Python API: it draws what it is asked, from the committed files.

For the 20 held-out captions (never trained on), drawn at 64x64 with the shipped workflow's recipe and seeds
0..19, colour masks must find every named colour in its named place for at least 18 (MIN_SCORE). The committed
files must also be the ones `training.json` describes.
"""

import json

import numpy as np
import pytest

from lumina_core.shapes import WEIGHTS, analysis, dataset
from lumina_core.shapes.draw import ShapesModel, held_out_seeds, shipped_files
from lumina_core.shapes.train import RECORD, sha256

MIN_SCORE = 0.9  # 18 of 20


@pytest.fixture(scope="module")
def drawn():
    scenes = dataset.held_out_scenes()
    return scenes, ShapesModel().draw([s.caption for s in scenes], held_out_seeds(len(scenes)))


def test_committed_files_match_their_training_record():
    record = json.loads((WEIGHTS / RECORD).read_text())
    for role, path in shipped_files().items():
        assert record["files"][role] == {"file": path.name, "sha256": sha256(path)}, role


def test_held_out_captions_are_drawn_as_asked(drawn):
    scenes, pictures = drawn
    found = [analysis.matches(p, s) for p, s in zip(pictures, scenes)]
    missed = [s.caption for s, ok in zip(scenes, found) if not ok]
    print(f"semantic score {np.mean(found):.0%}; missed: {missed}")
    assert np.mean(found) >= MIN_SCORE, missed


def test_the_score_reads_the_captions(drawn):
    """The same pictures judged against the wrong captions fail: the score is not won by drawing everything."""
    scenes, pictures = drawn
    assert analysis.semantic_score(list(pictures[1:]), scenes[:-1]) < 0.3
