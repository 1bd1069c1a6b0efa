"""comfy-cli, the registry's own client, runs a shipped API workflow against the real server (`comfy run --wait`).

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
    shrink,
)

API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))
BESIDE_PYTHON = Path(COMFYUI_PYTHON).parent / "comfy"
COMFY = str(BESIDE_PYTHON) if BESIDE_PYTHON.is_file() else shutil.which("comfy")
# Telemetry off by the cross-tool convention and comfy-cli's own switch; no remote refresh of its node catalogue.
QUIET = {"DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1", "COMFY_CLI_NO_REMOTE_REFRESH": "1"}

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_DIR, reason=SKIP_REASON),
    pytest.mark.skipif(COMFY is None, reason="comfy-cli is not installed (pip install comfy-cli)"),
]


def comfy(*args: str, home: Path) -> subprocess.CompletedProcess:
    """`comfy --skip-prompt --json ARGS` with stdin closed: a prompt would fail instead of waiting."""
    env = {**os.environ, **QUIET, "HOME": str(home)}
    return subprocess.run([COMFY, "--skip-prompt", "--json", *args], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, env=env, timeout=RUN_TIMEOUT + 60)  # fmt: skip


@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=lambda p: p.name)
def test_comfy_run_waits_for_a_shipped_workflow(server: Server, workflow: Path, tmp_path):
    small = tmp_path / workflow.name
    small.write_text(json.dumps(shrink(rw.load_graph(workflow))))
    host, port = server.address.rsplit(":", 1)
    done = comfy("run", "--workflow", str(small), "--host", host, "--port", port, "--wait", home=tmp_path / "home")
    assert done.returncode == 0, f"comfy run exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    envelope = json.loads(done.stdout.strip().splitlines()[-1])
    assert (envelope["ok"], envelope["data"]["status"]) == (True, "completed"), envelope
    files = assert_outputs(server, rw.get_history(server.address, envelope["data"]["prompt_id"]))
    urls = envelope["data"]["outputs"]  # /view URLs
    reported = [urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["filename"][0] for url in urls]
    assert sorted(reported) == sorted(f["filename"] for f in files), urls
    print(f"comfy run {workflow.name}: {envelope['data']['elapsed_seconds']:.1f} s -> {[f['path'] for f in files]}")
