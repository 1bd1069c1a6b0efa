"""A real ComfyUI for the integration tests: tiny checkpoints, a headless server on a free port, queue-and-wait helpers.

Every integration module gets a server of its own through the `server` fixture (conftest.py). Nothing is written
into the ComfyUI checkout: the base, model, output and database locations are all temporary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

from lumina_core import tiny
from lumina_core.gguf.convert import convert
from scripts import run_workflow as rw
from tests.fixtures.gguf_files import Q, write_gemma_gguf
from tests.fixtures.workflow_models import WORKFLOW_FILES, write_workflow_images, write_workflow_models

REPO = Path(__file__).resolve().parents[2]
COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON") or sys.executable
SKIP_REASON = "set COMFYUI_DIR to a ComfyUI checkout (and COMFYUI_PYTHON)"
# The marks of a module that needs a ComfyUI checkout: `pytestmark = NEEDS_COMFYUI`.
NEEDS_COMFYUI = [pytest.mark.comfyui, pytest.mark.skipif(not COMFYUI_DIR, reason=SKIP_REASON)]
PACK = "comfyui-lumina"
# The file names the shipped workflows use, so they run unchanged apart from size and steps.
TRANSFORMER, TEXT_ENCODER, VAE = "lumina_2_model_bf16.safetensors", "gemma_2_2b_fp16.safetensors", "ae.safetensors"
GGUF_TRANSFORMER, GGUF_TEXT_ENCODER = "lumina2-Q8_0.gguf", "gemma-2-2b-Q8_0.gguf"
VAE_AS_CHECKPOINT = "flux_vae_copy.safetensors"  # a VAE where the transformer loader will list it
UPSAMPLER = "ltxv-spatial-upscaler-0.9.8.safetensors"
UPSAMPLER_AS_CHECKPOINT = "upscaler_copy.safetensors"  # a latent upsampler where the transformer loader lists it
SMALL = {"width": 96, "height": 64, "steps": 2, "frames": 9}  # valid for every family; 9 frames for video
STARTUP_TIMEOUT, RUN_TIMEOUT = 120, 300


@dataclass
class Server:
    address: str  # host:port
    output_dir: Path
    log: Path
    process: subprocess.Popen

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

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
    for sub in WORKFLOW_FILES:
        (models / sub).mkdir(parents=True)
    write_workflow_models({sub: models / sub for sub in WORKFLOW_FILES})
    convert(models / "diffusion_models" / TRANSFORMER, models / "diffusion_models" / GGUF_TRANSFORMER, "Q8_0")
    write_gemma_gguf(tiny.make_gemma(0), tiny.train_tokenizer(), models / "text_encoders" / GGUF_TEXT_ENCODER, Q.Q8_0)
    shutil.copy(models / "vae" / VAE, models / "checkpoints" / VAE_AS_CHECKPOINT)
    shutil.copy(models / "latent_upscale_models" / UPSAMPLER, models / "checkpoints" / UPSAMPLER_AS_CHECKPOINT)
    config = root / "extra_model_paths.yaml"
    folders = "".join(f"    {sub}: {sub}\n" for sub in WORKFLOW_FILES)
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


@contextmanager
def comfyui_server(base: Path, replace: Mapping[str, Path] | None = None) -> Iterator[Server]:
    """ComfyUI from COMFYUI_DIR with this repository as its only custom node pack, up until the block ends.

    replace: "models subfolder/file name" -> a file copied over that tiny model (e.g. trained weights under
    the name a workflow loads).
    """
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK).symlink_to(REPO, target_is_directory=True)
    started = time.monotonic()
    models_config = write_models(base)
    for name, source in (replace or {}).items():
        shutil.copy(source, base / "models" / name)
    write_workflow_images(base / "input")  # what the image-to-video workflow's LoadImage nodes read
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


def small_settings(inputs: dict) -> dict:
    """The SMALL values for the size and step inputs a node holds as values (not links): any sampler or
    empty-latent node, whatever its class is called."""
    return {name: value for name, value in SMALL.items() if name in inputs and not isinstance(inputs[name], list)}


def shrink(graph: dict, seed: int | None = None) -> dict:
    """Every node's width, height, steps and frames at SMALL (64x48-ish, 2 steps, 9 frames)."""
    sets = [(node_id, name, value) for node_id, node in graph.items()
            for name, value in small_settings(node["inputs"]).items()]  # fmt: skip
    return rw.apply_overrides(graph, seed=seed, sets=sets)


def comparable(graph: dict) -> dict:
    """An API graph as ComfyUI executes it: class and inputs per node, and the title where the twin names one."""
    return {
        node_id: {"class_type": node["class_type"], "inputs": node["inputs"]}
        | ({"title": node["_meta"]["title"]} if "title" in node.get("_meta", {}) else {})
        for node_id, node in graph.items()
    }


def assert_success(server: Server, run: Run, size: tuple[int, int] = (96, 64)) -> list[dict]:
    assert run.status == "success", f"{run.status}: {run.data}\n{server.log_tail()}"
    return assert_outputs(server, run.history, size)


def assert_outputs(server: Server, history: dict, size: tuple[int, int] = (96, 64)) -> list[dict]:
    """A finished prompt's /history entry says success and every output file it names is a whole SMALL image or
    video in the output folder."""
    assert history["status"]["status_str"] == "success", f"{history['status']}\n{server.log_tail()}"
    files = [f for f in rw.output_files(history) if f["type"] == "output"]
    assert files, f"no output files in {history['outputs']}"
    for file in files:
        path = server.output_dir / file["path"]
        assert path.is_file(), path
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            assert (image.format, image.size, frames) in {("PNG", size, 1), ("WEBP", size, SMALL["frames"])}
    return files


def run_comfyui_script(script: str, scratch: Path, timeout: int) -> dict:
    """Run tests/integration/<script> <repo> <scratch> with ComfyUI's interpreter from its checkout (ComfyUI's
    modules in-process, see comfy_script.py); the JSON object it printed last, printed again for the test log."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([COMFYUI_PYTHON, str(Path(__file__).with_name(script)), str(REPO), str(scratch)],
                          cwd=COMFYUI_DIR, env=env, capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(results, indent=1))
    return results
