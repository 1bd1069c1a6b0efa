"""The pack inside a real ComfyUI: started headless on the CPU with tiny checkpoints, driven over HTTP and WebSocket.

Skipped unless COMFYUI_DIR names a ComfyUI checkout; COMFYUI_PYTHON is the interpreter of its environment
(default: this one). Nothing is written into the checkout: the base, model, output and database
locations are all temporary.

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python python -m pytest -q tests/integration -s
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid

import numpy as np
import pytest
from PIL import Image

from scripts import run_workflow as rw
from tests.integration.server import (
    COMFYUI_DIR,
    GGUF_TEXT_ENCODER,
    GGUF_TRANSFORMER,
    REPO,
    RUN_TIMEOUT,
    SKIP_REASON,
    SMALL,
    TEXT_ENCODER,
    TRANSFORMER,
    UPSAMPLER,
    UPSAMPLER_AS_CHECKPOINT,
    VAE,
    VAE_AS_CHECKPOINT,
    Server,
    assert_success,
    run_graph,
    shrink,
)

WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
OUR_NODES = (
    "LuminaLoadTransformer", "LuminaGGUFLoader", "LuminaLoadLoRA", "LuminaLoadGemma", "LuminaGemmaEncode",
    "LuminaLoadT5", "LuminaT5Encode", "LuminaFlowSampler", "LuminaLoadVAE", "LuminaVAEDecode", "LuminaLTXVideoDecode",
    "LuminaLTXVideoGuide", "LuminaLTXVideoEncode", "LuminaLoadLatentUpsampler", "LuminaLTXVideoLatentUpsample",
)  # fmt: skip
SAMPLER = "LuminaFlowSampler"

pytestmark = [pytest.mark.comfyui, pytest.mark.skipif(not COMFYUI_DIR, reason=SKIP_REASON)]


def small_graph(seed: int = 0, **sampler) -> dict:
    """Our own text-to-image graph in API format (the shipped workflow's node classes, tiny settings)."""
    settings = {**SMALL, "batch_size": 1, "seed": seed, "cfg": 4.0, "shift": 6.0, "solver": "euler"}
    settings |= {"schedule": "shifted_linear", "cfg_trunc": 1.0, "cfg_renorm": 1.0, "denoise": 1.0, **sampler}
    return {
        "1": node("LuminaLoadTransformer", file=TRANSFORMER, weight_dtype="auto"),
        "2": node("LuminaLoadGemma", file=TEXT_ENCODER, weight_dtype="auto"),
        "3": node("LuminaGemmaEncode", text_encoder=["2", 0], prompt="a red fox in snow", system_prompt="real"),
        "4": node("LuminaGemmaEncode", text_encoder=["2", 0], prompt="", system_prompt="real"),
        "5": node(SAMPLER, model=["1", 0], positive=["3", 0], negative=["4", 0], **settings),
        "6": node("LuminaLoadVAE", file=VAE),
        "7": node("LuminaVAEDecode", vae=["6", 0], samples=["5", 0]),
        "8": node("SaveImage", images=["7", 0], filename_prefix="lumina_it"),
    }


def node(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def rejection(server: Server, graph: dict) -> dict:
    with pytest.raises(rw.PromptRejected) as caught:
        rw.queue_prompt(server.address, graph, uuid.uuid4().hex)
    print("\n".join(rw.rejection_lines(caught.value.body)))
    return caught.value.body


def test_object_info_lists_our_nodes(server):
    info = rw.request_json(server.address, "/object_info")
    missing = [node for node in OUR_NODES if node not in info]
    assert not missing, f"not registered: {missing}\n{server.log_tail()}"
    assert {node: info[node]["category"] for node in OUR_NODES} == dict.fromkeys(OUR_NODES, "Lumina")
    files = info["LuminaLoadTransformer"]["input"]["required"]["file"][0]
    assert TRANSFORMER in files and VAE_AS_CHECKPOINT in files


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_shipped_workflow_runs(server, workflow):
    run = run_graph(server, shrink(rw.load_graph(workflow)))
    files = assert_success(server, run)
    steps = [data["value"] for kind, data in run.messages if kind == "progress"]
    assert steps[-1:] == [SMALL["steps"]], steps
    print(f"{workflow.name}: {run.seconds:.1f} s -> {[f['path'] for f in files]}")


def test_small_graph_runs(server):
    run = run_graph(server, small_graph(seed=1))
    files = assert_success(server, run)
    print(f"small graph: {run.seconds:.1f} s -> {[f['path'] for f in files]}")


def test_size_not_multiple_of_16_is_rejected(server):
    body = rejection(server, rw.apply_overrides(small_graph(), sets=[("5", "width", 1000)]))
    errors = body["node_errors"]["5"]["errors"]
    assert any("multiple of 16" in error["details"] for error in errors), errors
    lines = rw.rejection_lines(body)
    assert lines[1:] == [
        "  node 5 (LuminaFlowSampler): Custom validation failed for node: width 1000 is not a multiple of 16; try 992."
    ]


def test_missing_model_file_is_rejected(server):
    body = rejection(server, rw.apply_overrides(small_graph(), transformer="no_such_model.safetensors"))
    errors = body["node_errors"]["1"]["errors"]
    assert [error["message"] for error in errors] == ["Value not in list"]
    assert "no_such_model.safetensors" in errors[0]["details"]


def test_vae_in_transformer_loader_fails_readably(server):
    run = run_graph(server, rw.apply_overrides(small_graph(), transformer=VAE_AS_CHECKPOINT))
    assert run.status == "error", run.status
    assert run.history["status"]["status_str"] == "error"
    print(f"{run.data['node_type']}: {run.data['exception_type']}: {run.data['exception_message']}")
    assert (run.data["node_id"], run.data["node_type"]) == ("1", "LuminaLoadTransformer")
    assert VAE_AS_CHECKPOINT in run.data["exception_message"]
    assert "VAE" in run.data["exception_message"]


def test_interrupt_mid_sampling(server):
    interrupted_at = []

    def interrupt_on_first_step(kind, data):
        if kind == "progress" and not interrupted_at:
            interrupted_at.append(data["value"])
            rw.interrupt(server.address, data["prompt_id"])

    # rk4 with CFG: 8 model calls a step, 500 steps, so sampling is still running when the interrupt lands.
    run = run_graph(server, small_graph(seed=2, steps=500, solver="rk4"), on_message=interrupt_on_first_step)
    assert interrupted_at, "no progress message arrived"
    assert run.status == "interrupted", f"{run.status} after {run.seconds:.1f} s"
    assert run.data["node_type"] == SAMPLER
    last_step = max(data["value"] for kind, data in run.messages if kind == "progress")
    print(f"interrupted at step {last_step}/500 after {run.seconds:.1f} s")
    assert last_step < 500


def test_server_still_works_after_failures(server):
    assert server.process.poll() is None, server.log_tail()
    assert_success(server, run_graph(server, small_graph(seed=3)))
    for workflow in WORKFLOWS:
        assert_success(server, run_graph(server, shrink(rw.load_graph(workflow), seed=4)))


def test_command_line_exit_codes(server, tmp_path):
    def cli(graph: dict, *options: str, timeout: float = RUN_TIMEOUT, **popen) -> subprocess.Popen:
        graph_file = tmp_path / f"{uuid.uuid4().hex}.json"
        graph_file.write_text(json.dumps(graph))
        command = [sys.executable, str(REPO / "scripts" / "run_workflow.py"), str(graph_file)]
        command += ["--server", server.address, "--timeout", str(timeout), *options]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)

    def finished(process: subprocess.Popen) -> tuple[int, str, str]:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT + 30)
        return process.returncode, stdout, stderr

    options = ("--prompt", "a lighthouse", "--negative", "blurry", "--seed", "5", "--set", "8.filename_prefix=cli")
    code, stdout, stderr = finished(cli(small_graph(), *options))
    assert code == rw.EXIT_OK, stderr
    assert "node 5: step 2/2" in stdout
    assert "output: cli_" in stdout and "/view?filename=cli_" in stdout
    print(f"command line: {stdout.strip().splitlines()[-1]}")

    code, _, stderr = finished(cli(small_graph(), "--set", "5.width=1000"))
    assert code == rw.EXIT_REJECTED
    assert "node 5 (LuminaFlowSampler): Custom validation failed for node: width 1000 is not a multiple of 16" in stderr

    code, _, stderr = finished(cli(small_graph(), "--transformer", VAE_AS_CHECKPOINT))
    assert code == rw.EXIT_FAILED
    assert "node 1 (LuminaLoadTransformer) failed" in stderr and VAE_AS_CHECKPOINT in stderr

    code, _, stderr = finished(cli(small_graph(), "--set", "99.steps=3"))
    assert code == rw.EXIT_BAD_INPUT and "no node '99'" in stderr

    long_graph = small_graph(seed=7, steps=500, solver="rk4")
    process = cli(long_graph)
    for line in process.stdout:
        if line.startswith("node 5: step"):
            rw.interrupt(server.address)
            break
    code, _, stderr = finished(process)
    assert code == rw.EXIT_INTERRUPTED, stderr
    assert "interrupted at node 5 (LuminaFlowSampler)" in stderr

    code, _, stderr = finished(cli(long_graph, "--seed", "8", timeout=1))
    assert code == rw.EXIT_TIMEOUT, stderr
    drain_queue(server)


def drain_queue(server: Server, timeout: float = 60) -> None:
    """Interrupt whatever runs until the queue is empty (a prompt left behind by a client that gave up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queue = rw.request_json(server.address, "/queue")
        if not queue["queue_running"] and not queue["queue_pending"]:
            return
        rw.interrupt(server.address)
        time.sleep(0.5)
    pytest.fail(f"the queue is still busy after {timeout} s")


def test_view_serves_the_output(server):
    files = assert_success(server, run_graph(server, small_graph(seed=6)))
    with urllib.request.urlopen(rw.view_url(server.address, files[0]), timeout=30) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_text_encoder_of_another_family_fails_naming_both(server):
    graph = shrink(rw.load_graph(REPO / "workflows" / "api" / "lumina_next_t2i.json"))
    run = run_graph(server, rw.apply_overrides(graph, text_encoder=TEXT_ENCODER))
    assert run.status == "error", run.status
    print(f"{run.data['node_type']}: {run.data['exception_message']}")
    assert run.data["node_type"] == SAMPLER
    assert "Lumina-Next" in run.data["exception_message"] and "Lumina-Image 2.0" in run.data["exception_message"]


def test_gguf_transformer_and_text_encoder_run(server):
    """Both GGUF loader outputs in one graph: the Q8_0 transformer and the llama.cpp-named Gemma-2."""
    graph = small_graph(seed=5)
    graph["1"] = node("LuminaGGUFLoader", file=GGUF_TRANSFORMER, weight_dtype="auto")
    graph["2"] = node("LuminaGGUFLoader", file=GGUF_TEXT_ENCODER, weight_dtype="auto")
    for encode in ("3", "4"):
        graph[encode]["inputs"]["text_encoder"] = ["2", 1]
    run = run_graph(server, graph)
    files = assert_success(server, run)
    print(f"GGUF graph: {run.seconds:.1f} s -> {[f['path'] for f in files]}")


def test_image_to_video_from_a_core_image_node(server):
    """The sampler's first_frame fed by core EmptyImage, encoded with the LTX-Video VAE of the same file."""
    graph = shrink(rw.load_graph(REPO / "workflows" / "api" / "ltxv_t2v.json"))
    graph["9"] = node("EmptyImage", width=120, height=80, batch_size=1, color=0x3366CC)
    sampler = next(iter(rw.nodes_of(graph, SAMPLER)))
    graph[sampler]["inputs"] |= {"first_frame": ["9", 0], "vae": ["6", 0], "first_frame_strength": 1.0}
    run = run_graph(server, graph)
    files = assert_success(server, run)
    print(f"image-to-video: {run.seconds:.1f} s -> {[f['path'] for f in files]}")


FIRST_LAST = REPO / "workflows" / "api" / "ltxv_i2v_first_last.json"


def test_multiscale_recipe_with_first_and_last_frame_guides(server):
    """The shipped first/last-frame workflow turned into the distilled multi-scale recipe: the small pass, the x2
    latent upsampler, the refining pass (its guides encoded again at the larger size), decoded at twice the size."""
    graph = shrink(rw.load_graph(FIRST_LAST))
    sampler = next(iter(rw.nodes_of(graph, SAMPLER)))
    graph[sampler]["inputs"]["recipe"] = "ltxv-0.9.8-distilled"
    graph["20"] = node("LuminaLoadLatentUpsampler", file=UPSAMPLER)
    graph["21"] = node("LuminaLTXVideoLatentUpsample", upsampler=["20", 0], vae=["5", 0], samples=[sampler, 0],
                       adain_factor=1.0)  # fmt: skip
    refine = {**graph[sampler], "inputs": {**graph[sampler]["inputs"], "latent": ["21", 0],
                                           "recipe": "ltxv-0.9.8-distilled-refine"}}  # fmt: skip
    graph["22"] = refine
    decode = next(nid for nid, n in graph.items() if n["class_type"] == "LuminaLTXVideoDecode")
    graph[decode]["inputs"]["samples"] = ["22", 0]
    run = run_graph(server, graph)
    files = assert_success(server, run, size=(192, 128))
    print(f"multi-scale: {run.seconds:.1f} s -> {[f['path'] for f in files]}")


def test_video_to_video_from_core_frames(server):
    """Nine frames from core EmptyImage, LTX-Video Encode'd, sampled on at denoise 0.5."""
    graph = shrink(rw.load_graph(REPO / "workflows" / "api" / "ltxv_t2v.json"))
    graph["9"] = node("EmptyImage", width=120, height=80, batch_size=9, color=0x3366CC)
    graph["10"] = node("LuminaLTXVideoEncode", vae=["6", 0], frames=["9", 0], width=96, height=64)
    sampler = next(iter(rw.nodes_of(graph, SAMPLER)))
    graph[sampler]["inputs"] |= {"latent": ["10", 0], "denoise": 0.5}
    run = run_graph(server, graph)
    files = assert_success(server, run)
    print(f"video-to-video: {run.seconds:.1f} s -> {[f['path'] for f in files]}")


def test_a_guide_outside_the_video_fails_in_one_line(server):
    graph = shrink(rw.load_graph(FIRST_LAST))
    guide = next(nid for nid, n in graph.items() if n["inputs"].get("frame_index") == -1)
    graph[guide]["inputs"]["frame_index"] = 9  # the video has 9 frames, 0 to 8
    run = run_graph(server, graph)
    assert run.status == "error", run.status
    message = run.data["exception_message"].strip()
    print(f"{run.data['node_type']}: {message}")
    assert run.data["node_type"] == "LuminaFlowSampler" and "\n" not in message
    assert "condition 2 (image) is at frame 9, outside the 9-frame video: use 0 to 8" in message


def test_upsampler_in_the_transformer_loader_names_the_upsampler_loader(server):
    run = run_graph(server, rw.apply_overrides(small_graph(), transformer=UPSAMPLER_AS_CHECKPOINT))
    assert run.status == "error" and run.data["node_type"] == "LuminaLoadTransformer", run.status
    message = run.data["exception_message"]
    assert "holds an LTX-Video latent upsampler" in message and "Load LTX-Video Latent Upsampler" in message


def test_free_unloads_our_models(server):
    """After a run our models stay loaded in ComfyUI's model manager (the next run asks it for nothing new); POST
    /free with unload_models (the "Unload models" button) releases them, so the run after it loads them again."""
    ours = {f"Requested to load {name}" for name in ("Lumina2Transformer", "LuminaTextEncoder", "Autoencoder")}

    def requested_during(seed: int) -> set[str]:
        before = len(server.log.read_text(errors="replace"))
        graph = rw.apply_overrides(small_graph(seed=seed), prompt=f"a red fox, take {seed}")  # every node runs
        assert_success(server, run_graph(server, graph))
        new = server.log.read_text(errors="replace")[before:]
        return {line for line in ours if line in new}

    requested_during(11)
    assert requested_during(12) == set()  # still loaded: nothing to load
    rw.request_json(server.address, "/free", {"unload_models": True})
    # The one prompt worker handles the flag after the prompt it is running or waking for, so once a model-free
    # prompt has finished, the unload is done before the next prompt starts.
    blank = {
        "1": node("EmptyImage", width=8, height=8, batch_size=1, color=13),
        "2": node("PreviewImage", images=["1", 0]),
    }
    assert run_graph(server, blank).status == "success"
    assert requested_during(13) == ours


def test_lora_leaves_the_cached_model_as_it_was(server):
    """The loader's cached model, sampled before and after a LoRA workflow reused it: the same picture; the LoRA
    workflow's differs. Also with a GGUF transformer (whose layers take the LoRA as object patches)."""

    def picture(graph: dict) -> np.ndarray:
        files = assert_success(server, run_graph(server, graph))
        with Image.open(server.output_dir / files[0]["path"]) as image:
            return np.asarray(image, dtype=np.int16)

    lora_graph = shrink(rw.load_graph(REPO / "workflows" / "api" / "lumina2_t2i_lora.json"))
    lora_node = next(key for key, n in lora_graph.items() if n["class_type"] == "LuminaLoadLoRA")
    base_graph = {k: v for k, v in lora_graph.items() if k != lora_node}
    sampler = rw.nodes_of(base_graph, SAMPLER)[0]
    base_graph[sampler] = {**base_graph[sampler], "inputs": {**base_graph[sampler]["inputs"], "model": ["1", 0]}}
    gguf = {"1": node("LuminaGGUFLoader", file=GGUF_TRANSFORMER, weight_dtype="auto")}
    for graph_base, graph_lora in ((base_graph, lora_graph), ({**base_graph, **gguf}, {**lora_graph, **gguf})):
        before, with_lora, after = picture(graph_base), picture(graph_lora), picture(graph_base)
        assert np.array_equal(before, after) and np.abs(with_lora - before).max() > 10
