"""The pack inside a real ComfyUI: started headless on the CPU with tiny checkpoints, driven over HTTP and WebSocket.

Skipped unless COMFYUI_DIR names a ComfyUI checkout; COMFYUI_PYTHON is the interpreter of its environment
(default: this one). Nothing is written into the checkout: the base, model, output and database
locations are all temporary.

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python python -m pytest -q tests/integration -s
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from lumina_core import tiny
from lumina_core.gguf.convert import convert
from scripts import run_workflow as rw
from tests.fixtures.gguf_files import Q, write_gemma_gguf
from tests.fixtures.workflow_models import WORKFLOW_FILES, write_workflow_models

REPO = Path(__file__).resolve().parents[2]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
PACK = "comfyui-lumina"
OUR_NODES = (
    "LuminaLoadTransformer", "LuminaGGUFLoader", "LuminaLoadGemma", "LuminaGemmaEncode", "LuminaLoadT5",
    "LuminaT5Encode", "LuminaFlowSampler", "LuminaLoadVAE", "LuminaVAEDecode", "LuminaLTXVideoDecode",
)  # fmt: skip
SAMPLER = "LuminaFlowSampler"
# The file names the shipped workflows use, so they run unchanged apart from size and steps.
TRANSFORMER, TEXT_ENCODER, VAE = "lumina_2_model_bf16.safetensors", "gemma_2_2b_fp16.safetensors", "ae.safetensors"
GGUF_TRANSFORMER, GGUF_TEXT_ENCODER = "lumina2-Q8_0.gguf", "gemma-2-2b-Q8_0.gguf"
VAE_AS_CHECKPOINT = "flux_vae_copy.safetensors"  # a VAE where the transformer loader will list it
SMALL = {"width": 96, "height": 64, "steps": 2, "frames": 9}  # valid for every family; 9 frames for video
STARTUP_TIMEOUT, RUN_TIMEOUT = 120, 300

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON)"),
]


@dataclass
class Server:
    address: str  # host:port
    output_dir: Path
    log: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Run:
    status: str  # "success", "error" or "interrupted"
    data: dict  # the execution_error / execution_interrupted message
    history: dict  # the prompt's /history entry
    messages: list = field(default_factory=list)  # every (type, data) WebSocket message of the prompt
    seconds: float = 0.0


def write_models(root: Path) -> Path:
    """Tiny checkpoints under the names the workflows use; returns the extra_model_paths YAML."""
    models = root / "models"
    for sub in ("diffusion_models", "text_encoders", "vae", "checkpoints"):
        (models / sub).mkdir(parents=True)
    write_workflow_models({sub: models / sub for sub in WORKFLOW_FILES})
    convert(models / "diffusion_models" / TRANSFORMER, models / "diffusion_models" / GGUF_TRANSFORMER, "Q8_0")
    write_gemma_gguf(tiny.make_gemma(0), tiny.train_tokenizer(), models / "text_encoders" / GGUF_TEXT_ENCODER, Q.Q8_0)
    shutil.copy(models / "vae" / VAE, models / "checkpoints" / VAE_AS_CHECKPOINT)
    config = root / "extra_model_paths.yaml"
    folders = "".join(f"    {sub}: {sub}\n" for sub in ("diffusion_models", "text_encoders", "vae", "checkpoints"))
    config.write_text(f"lumina_integration_test:\n    base_path: {models}\n{folders}")
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(comfyui: Path, base: Path, port: int, models_config: Path) -> list[str]:
    """main.py's command line, using only the flags this ComfyUI version has."""
    help_text = subprocess.run([COMFYUI_PYTHON, "main.py", "--help"], cwd=comfyui, capture_output=True,
                               text=True, timeout=120).stdout  # fmt: skip
    if "--extra-model-paths-config" not in help_text:
        raise RuntimeError(f"{comfyui}/main.py --help failed or is too old:\n{help_text[-2000:]}")
    command = [COMFYUI_PYTHON, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)]
    command += ["--extra-model-paths-config", str(models_config), "--output-directory", str(base / "output")]
    optional = {
        "--disable-auto-launch": [],
        "--base-directory": [str(base)],
        "--database-url": ["sqlite:///:memory:"],  # the default database lives inside the checkout
        "--disable-all-custom-nodes": [],
        "--whitelist-custom-nodes": [PACK],
        "--preview-method": ["latent2rgb"],  # exercises the sampler's previews and the client's binary frames
    }
    for flag, values in optional.items():
        if flag in help_text:
            command += [flag, *values]
    if "--base-directory" not in help_text:  # older versions: temp paths one by one, the pack through the YAML
        for name in ("input", "temp", "user"):
            if f"--{name}-directory" in help_text:
                (base / name).mkdir(exist_ok=True)
                command += [f"--{name}-directory", str(base / name)]
        with models_config.open("a") as f:
            f.write(f"    custom_nodes: {base / 'custom_nodes'}\n")
    return command


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfyui_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(REPO, target_is_directory=True)
    started = time.monotonic()
    models_config = write_models(base)
    port = free_port()
    command = server_command(Path(COMFYUI_DIR), base, port, models_config)
    log = base / "comfyui.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=COMFYUI_DIR, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    server = Server(f"127.0.0.1:{port}", base / "output", log, process)
    try:
        wait_until_up(server)
        print(f"\nComfyUI up on {server.address} in {time.monotonic() - started:.1f} s (models included)")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"ComfyUI exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            rw.request_json(server.address, "/system_stats", timeout=2)
            return
        except (OSError, ValueError):
            time.sleep(0.5)
    pytest.fail(f"ComfyUI did not answer /system_stats within {STARTUP_TIMEOUT} s:\n{server.log_tail()}")


def run_graph(server: Server, graph: dict, on_message=None, timeout: float = RUN_TIMEOUT) -> Run:
    """Queue `graph` through the script's functions and follow it to the end."""
    client_id, messages = uuid.uuid4().hex, []

    def record(kind, data):
        messages.append((kind, data))
        if on_message:
            on_message(kind, data)

    started = time.monotonic()
    with rw.connect(server.address, client_id) as ws:
        prompt_id = rw.queue_prompt(server.address, graph, client_id)
        status, data = rw.wait_for_completion(ws, prompt_id, timeout, record)
    history = rw.get_history(server.address, prompt_id)
    return Run(status, data, history, messages, time.monotonic() - started)


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


def shrink(graph: dict, seed: int | None = None) -> dict:
    """Every sampler at 96x64 and 2 steps (9 frames for video)."""
    sets = [(node, name, value) for node in rw.nodes_of(graph, SAMPLER) for name, value in SMALL.items()]
    return rw.apply_overrides(graph, seed=seed, sets=sets)


def assert_success(server: Server, run: Run, size: tuple[int, int] = (96, 64)) -> list[dict]:
    assert run.status == "success", f"{run.status}: {run.data}\n{server.log_tail()}"
    assert run.history["status"]["status_str"] == "success"
    files = [f for f in rw.output_files(run.history) if f["type"] == "output"]
    assert files, f"no output files in {run.history['outputs']}"
    for file in files:
        path = server.output_dir / file["path"]
        assert path.is_file(), path
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            assert (image.format, image.size, frames) in {("PNG", size, 1), ("WEBP", size, SMALL["frames"])}
    return files


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
