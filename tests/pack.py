"""The repository imported as ComfyUI imports it: as a package (named PACKAGE here) whose nodes import the core
relatively. Node tests use this package's `nodes` and `lumina_core`; the core tests use the top-level
`lumina_core`, a separate copy (files written by one load in the other; objects and errors do not mix).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "comfyui_lumina"


def import_pack() -> ModuleType:
    """The pack as a package, imported once per process from the repository root's __init__.py."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


pack = import_pack()
nodes = pack.nodes
core = importlib.import_module(f"{PACKAGE}.lumina_core")
