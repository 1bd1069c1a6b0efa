"""The start every script run with ComfyUI's interpreter shares (`comfy_model_management.py`, `comfy_lora.py`).

Import it first: it reads the script's arguments (<repo> <scratch dir>), puts the ComfyUI checkout (the working
directory) before everything on the path and the repository after it (for the test fixtures, which write files
only), and switches ComfyUI to the CPU before `comfy.model_management` reads its arguments.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO, SCRATCH = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
sys.path.insert(0, str(Path.cwd()))  # the ComfyUI checkout, for `comfy`, `folder_paths`, `nodes`
sys.path.append(str(REPO))

from comfy.cli_args import args  # noqa: E402

args.cpu = True


def import_pack():
    """The pack imported as ComfyUI imports a custom node package (its nodes import the core relatively)."""
    spec = importlib.util.spec_from_file_location("comfyui_lumina", REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
