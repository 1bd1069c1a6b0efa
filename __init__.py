"""ComfyUI entry point: ComfyUI imports this folder from custom_nodes/ as a package and reads the two mappings.

The nodes import the core relatively (`from ..lumina_core import ...`), so every copy of the pack runs its own
`lumina_core`, and nothing is added to `sys.path`.
"""

# pytest, run inside a folder whose name is not a Python identifier (custom_nodes/comfyui-lumina), loads this file
# on its own as a module without a package: there is nothing to import relatively then.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
