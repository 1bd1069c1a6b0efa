"""comfy-cli, the registry's own client, against the real server: it runs every shipped API workflow
(`comfy run --wait`) and converts every shipped UI workflow into its API twin (`comfy run --print-prompt`).

The `comfy` command comes from COMFYUI_PYTHON's environment, else the PATH; skipped when there is none. It runs
without prompts and without telemetry (`--skip-prompt`, DO_NOT_TRACK), with a throw-away HOME for its config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from scripts import run_workflow as rw
from tests.integration.server import (
    COMFYUI_DIR,
    COMFYUI_PYTHON,
    REPO,
    RUN_TIMEOUT,
    SKIP_REASON,
    Server,
    assert_outputs,
    comparable,
    shrink,
)

API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
BESIDE_PYTHON = Path(COMFYUI_PYTHON).parent / "comfy"
COMFY = str(BESIDE_PYTHON) if BESIDE_PYTHON.is_file() else shutil.which("comfy")
# Telemetry off by the cross-tool convention and comfy-cli's own switch; no remote refresh of its node catalogue.
QUIET = {"DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "COMFY_CLI_NO_REMOTE_REFRESH": "1"}

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_DIR, reason=SKIP_REASON),
    pytest.mark.skipif(COMFY is None, reason="comfy-cli is not installed (pip install comfy-cli)"),
]


def comfy_run(server: Server, workflow: Path, *options: str, home: Path) -> dict:
    """`comfy --skip-prompt --json run --workflow FILE` against `server` with stdin closed (a prompt would fail
    instead of waiting); returns the `data` of its JSON envelope after checking that it succeeded."""
    host, port = server.address.rsplit(":", 1)
    command = [COMFY, "--skip-prompt", "--json", "run", "--workflow", str(workflow), "--host", host, "--port", port]
    env = {**os.environ, **QUIET, "HOME": str(home)}
    done = subprocess.run([*command, *options], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          timeout=RUN_TIMEOUT + 60)  # fmt: skip
    assert done.returncode == 0, f"comfy run exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    envelope = json.loads(done.stdout.strip().splitlines()[-1])
    assert envelope["ok"], envelope
    return envelope["data"]


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.name)
def test_comfy_run_waits_for_a_shipped_workflow(server: Server, workflow: Path, tmp_path):
    small = tmp_path / workflow.name
    small.write_text(json.dumps(shrink(rw.load_graph(workflow))))
    result = comfy_run(server, small, "--wait", home=tmp_path / "home")
    assert result["status"] == "completed", result
    files = assert_outputs(server, rw.get_history(server.address, result["prompt_id"]))
    urls = result["outputs"]  # /view URLs
    reported = [urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["filename"][0] for url in urls]
    assert sorted(reported) == sorted(f["filename"] for f in files), urls
    print(f"comfy run {workflow.name}: {result['elapsed_seconds']:.1f} s -> {[f['path'] for f in files]}")


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.name)
def test_comfy_converts_a_ui_workflow_to_its_api_twin(server: Server, workflow: Path, tmp_path):
    result = comfy_run(server, workflow, "--print-prompt", home=tmp_path / "home")
    twin = rw.load_graph(REPO / "workflows" / "api" / workflow.name)
    assert comparable(result["prompt"]) == comparable(twin), f"comfy-cli's conversion of {workflow.name}"
