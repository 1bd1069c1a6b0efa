"""ComfyUI entry point: ComfyUI imports this folder from custom_nodes/ as a package and reads the two mappings.

The nodes import the core relatively (`from ..lumina_core import ...`), so every copy of the pack runs its own
`lumina_core`, and nothing is added to `sys.path`.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
