"""ComfyUI entry point: ComfyUI imports this folder from custom_nodes/ and reads the two mappings."""

import os
import sys

# The nodes import `lumina_core` as a top-level package. Appended, not prepended, so ComfyUI's own
# top-level modules (it has a `nodes` module too) always win over this folder's.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.append(_HERE)

# ComfyUI imports this folder as a package. pytest, run inside a folder whose name is not a Python identifier
# (custom_nodes/comfyui-lumina), loads this file on its own as a module without a package: nothing to import then.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
