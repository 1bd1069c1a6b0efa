"""ComfyUI nodes over lumina_core (classic V1 API). The node classes arrive with the node-pack work."""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
