"""Every shipped workflow: its UI and API files agree, its graph checks, and its API twin runs on tiny checkpoints."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from lumina_core import InvalidInputError
from nodes import comfy_bridge
from tests.fixtures.workflow_models import write_workflow_models
from tests.workflows.graph import (
    CORE_NODES,
    WorkflowError,
    check_api,
    load_api,
    load_ui,
    run_api_workflow,
    ui_to_api,
)

ROOT = Path(__file__).resolve().parents[2] / "workflows"
UI_FILES = sorted(ROOT.glob("*.json"))
API_FILES = sorted((ROOT / "api").glob("*.json"))
N = nodes.NODE_CLASS_MAPPINGS
LOADERS = ("LoadLuminaTransformer", "LoadGemma", "LoadLuminaVAE")
TINY_SETTINGS = {"width": 64, "height": 48, "steps": 2}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """Tiny checkpoints under exactly the file names the shipped workflows use, registered like ComfyUI's folders."""
    root = tmp_path_factory.mktemp("models")
    folders = {"lumina_diffusion_models": root / "diffusion_models", "lumina_text_encoders": root / "text_encoders",
               "lumina_vae": root / "vae"}  # fmt: skip
    for key, folder in folders.items():
        folder.mkdir()
        comfy_bridge.register_folder(key, folder)
    write_workflow_models({"diffusion_models": folders["lumina_diffusion_models"],
                           "text_encoders": folders["lumina_text_encoders"], "vae": folders["lumina_vae"]})  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("LUMINA_MODEL_DIRS", raising=False)
        yield root
    comfy_bridge._standalone_folders.clear()


def shrink(api: dict) -> dict:
    """The same graph at a size and step count that runs in a second on the CPU."""
    for node in api.values():
        node["inputs"].update({k: v for k, v in TINY_SETTINGS.items() if k in node["inputs"]})
    return api


def test_workflows_are_shipped():
    assert {"lumina2_t2i.json", "lumina_next_t2i.json"} <= {p.name for p in UI_FILES}


@pytest.mark.parametrize("path", UI_FILES + API_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_has_its_twin(path):
    twin = ROOT / "api" / path.name if path.parent == ROOT else ROOT / path.name
    assert twin.is_file(), f"{path.relative_to(ROOT)} has no twin at {twin.relative_to(ROOT)}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_file_converts_to_its_api_twin(path):
    ui = load_ui(path)
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    assert ui_to_api(ui, N) == load_api(ROOT / "api" / path.name)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_links_match_the_node_slots(path):
    """Each link appears on both ends: in the source's output `links` and on the target's input `link`."""
    ui = load_ui(path)
    by_id = {node["id"]: node for node in ui["nodes"]}
    for link_id, source, source_slot, target, target_slot, kind in ui["links"]:
        output = by_id[source]["outputs"][source_slot]
        target_input = by_id[target]["inputs"][target_slot]
        assert link_id in output["links"] and output["type"] == kind
        assert target_input["link"] == link_id and target_input["type"] == kind


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_graph_checks(path, model_dirs):
    api = load_api(path)
    assert {node["class_type"] for node in api.values()} <= N.keys() | CORE_NODES.keys()
    assert check_api(api, N) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_headless_overrides_are_plain_values(path):
    """A headless script sets the prompt (through FlowSampler.positive), the seed and the loader files."""
    api = load_api(path)
    for sampler in (node for node in api.values() if node["class_type"] == "FlowSampler"):
        assert isinstance(sampler["inputs"]["seed"], int)
        positive = api[sampler["inputs"]["positive"][0]]
        assert positive["class_type"] == "GemmaEncode" and isinstance(positive["inputs"]["prompt"], str)
    loaders = [node for node in api.values() if node["class_type"] in LOADERS]
    assert loaders and all(isinstance(node["inputs"]["file"], str) for node in loaders)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_runs_on_tiny_checkpoints(path, model_dirs, tmp_path):
    outputs = run_api_workflow(shrink(load_api(path)), N, tmp_path)
    saved = [p for ui in outputs.values() for p in ui["images"]]
    assert saved and all(p.parent == tmp_path and p.name.endswith("_00001_.png") for p in saved)
    for image_path in saved:
        with Image.open(image_path) as image:
            assert image.size == (TINY_SETTINGS["width"], TINY_SETTINGS["height"]) and image.mode == "RGB"
            assert np.ptp(np.asarray(image)) > 0


def test_size_off_the_grid_fails_validation(model_dirs, tmp_path):
    api = shrink(load_api(ROOT / "api" / "lumina2_t2i.json"))
    next(n for n in api.values() if n["class_type"] == "FlowSampler")["inputs"]["width"] = 1000
    with pytest.raises(WorkflowError, match="multiple of 16") as failure:
        run_api_workflow(api, N, tmp_path)
    assert "\n" not in str(failure.value) and "FlowSampler" in str(failure.value)
    assert not list(tmp_path.iterdir())  # validation runs before any node


@pytest.mark.parametrize("encoder", ["gemma_2_2b_fp16.safetensors", "gemma_2b.safetensors"])
def test_a_text_encoder_of_the_other_family_names_both(encoder, model_dirs, tmp_path):
    """Gemma-2 features into Lumina-Next, or Gemma features into Lumina 2: one line naming both models."""
    workflow = "lumina_next_t2i.json" if encoder.startswith("gemma_2_2b") else "lumina2_t2i.json"
    api = shrink(load_api(ROOT / "api" / workflow))
    next(n for n in api.values() if n["class_type"] == "LoadGemma")["inputs"]["file"] = encoder
    with pytest.raises(InvalidInputError) as failure:
        run_api_workflow(api, N, tmp_path)
    message = str(failure.value)
    assert "Lumina-Next" in message and "Lumina-Image 2.0" in message and "\n" not in message


def test_save_image_counts_on_from_existing_files(tmp_path):
    (tmp_path / "x_00007_.png").touch()
    save = type("SaveImage", (CORE_NODES["SaveImage"],), {"output_dir": tmp_path})
    paths = save().save_images(torch.rand(2, 8, 8, 3), "x")["ui"]["images"]
    assert [p.name for p in paths] == ["x_00008_.png", "x_00009_.png"]


def _render(workflow: str, sampler_inputs: dict, folder: Path) -> np.ndarray:
    api = shrink(load_api(ROOT / "api" / workflow))
    next(n for n in api.values() if n["class_type"] == "FlowSampler")["inputs"].update(sampler_inputs)
    folder.mkdir()
    outputs = run_api_workflow(api, N, folder)
    with Image.open(next(p for ui in outputs.values() for p in ui["images"])) as image:
        return np.asarray(image, dtype=np.float32)


@pytest.mark.parametrize(
    "option", [{"context_drop_ratio": 2}, {"rope_scaling": "none", "proportional_attention": False},
               {"next_guide_first_3_channels": False}],
    ids=lambda o: next(iter(o)),
)  # fmt: skip
def test_lumina_next_options_reach_lumina_next_and_lumina2_ignores_them(option, model_dirs, tmp_path):
    # At 64x48, far below the 1024 px training size, proportional attention changes the softmax scale.
    for workflow, should_change in (("lumina_next_t2i.json", True), ("lumina2_t2i.json", False)):
        name = workflow.removesuffix(".json")
        base = _render(workflow, {}, tmp_path / f"{name}_base")
        changed = _render(workflow, option, tmp_path / f"{name}_changed")
        assert (np.abs(base - changed).max() > 0) == should_change, workflow
