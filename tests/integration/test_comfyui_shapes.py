"""The trained shapes model through the shipped Lumina-Image 2.0 workflow in a real ComfyUI: it draws what it is asked.

The three trained files sit under the names the workflow loads (`lumina_2_model_bf16.safetensors`,
`gemma_2_2b_fp16.safetensors`, `ae.safetensors`); the workflow runs unchanged except for the prompt, the seed and
the size (64x64, the model's). Colour masks of the saved PNGs must find every named colour in its named place
for at least 18 of the 20 held-out captions (MIN_SCORE). Skipped unless COMFYUI_DIR names a ComfyUI checkout.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lumina_core.shapes import analysis, dataset
from lumina_core.shapes.draw import held_out_seeds, shipped_files
from scripts import run_workflow as rw
from tests.integration.server import (
    COMFYUI_DIR,
    REPO,
    SKIP_REASON,
    TEXT_ENCODER,
    TRANSFORMER,
    VAE,
    assert_success,
    comfyui_server,
    run_graph,
)

WORKFLOW = REPO / "workflows" / "api" / "lumina2_t2i.json"
WORKFLOW_NAMES = {"transformer": f"diffusion_models/{TRANSFORMER}", "text_encoder": f"text_encoders/{TEXT_ENCODER}",
                  "vae": f"vae/{VAE}"}  # fmt: skip
MIN_SCORE = 0.9  # 18 of 20

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(not COMFYUI_DIR, reason=SKIP_REASON)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    trained = {WORKFLOW_NAMES[role]: path for role, path in shipped_files().items()}
    with comfyui_server(tmp_path_factory.mktemp("comfyui_shapes"), replace=trained) as running:
        yield running


def test_shipped_workflow_draws_the_held_out_captions(server):
    graph = rw.load_graph(WORKFLOW)
    sampler = next(node for node, spec in graph.items() if "positive" in spec["inputs"])
    size = [(sampler, "width", dataset.SIZE), (sampler, "height", dataset.SIZE)]
    scenes, found = dataset.held_out_scenes(), []
    for scene, seed in zip(scenes, held_out_seeds(len(scenes))):
        run = run_graph(server, rw.apply_overrides(graph, prompt=scene.caption, seed=seed, sets=size))
        (file,) = assert_success(server, run, size=(dataset.SIZE, dataset.SIZE))
        picture = np.asarray(Image.open(server.output_dir / file["path"]).convert("RGB"))
        found.append(analysis.matches(picture, scene))
        print(f"{'found' if found[-1] else 'MISSED'}: {scene.caption}")
    score = sum(found) / len(found)
    print(f"semantic score through ComfyUI: {score:.0%}")
    assert score >= MIN_SCORE
