"""Workflow JSON helpers for the tests: read both formats, convert UI to API, check and run an API graph in-process.

ComfyUI is not importable here, so its core `SaveImage` and `SaveAnimatedWEBP` are described by small stand-ins
with the same inputs that write files the way ComfyUI names them, and `LoadImage` by one that reads the input folder.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageSequence

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = {"seed", "noise_seed"}  # INT widgets the frontend follows with a control_after_generate value


class WorkflowError(ValueError):
    """A graph that does not convert, check or run; the message names the node."""


def _to_pil(image) -> Image.Image:
    """A float [H, W, 3] image in [0, 1] as 8-bit RGB."""
    return Image.fromarray(np.clip(image.float().cpu().numpy() * 255.0, 0, 255).astype(np.uint8))


def _next_paths(output_dir: Path, prefix: str, suffix: str, count: int) -> list[Path]:
    """ComfyUI's naming: `{prefix}_00001_{suffix}`, counting on from the files already there."""
    target = Path(output_dir) / prefix
    target.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(target.name) + r"_(\d{5})_" + re.escape(suffix))
    taken = [int(m.group(1)) for p in target.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    first = max(taken, default=0) + 1
    return [target.parent / f"{target.name}_{first + i:05}_{suffix}" for i in range(count)]


class SaveImage:
    """Stand-in for ComfyUI's core SaveImage: the same inputs; writes `{prefix}_00001_.png`, ... into `output_dir`."""

    DISPLAY_NAME = "Save Image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    output_dir: Path | None = None  # set by run_api_workflow on a subclass

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"})}}

    def save_images(self, images, filename_prefix: str = "ComfyUI"):
        """images: float [B, H, W, 3] in [0, 1]. Returns ComfyUI's {"ui": {"images": [...]}} with local paths."""
        paths = _next_paths(self.output_dir, filename_prefix, ".png", len(images))
        for image, path in zip(images, paths, strict=True):
            _to_pil(image).save(path)
        return {"ui": {"images": paths}}


class SaveAnimatedWEBP:
    """Stand-in for ComfyUI's core SaveAnimatedWEBP: the same inputs; all frames into one `{prefix}_00001_.webp`."""

    DISPLAY_NAME = "SaveAnimatedWEBP"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    output_dir: Path | None = None
    METHODS = {"default": 4, "fastest": 0, "slowest": 6}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "images": ("IMAGE", {}), "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
            "lossless": ("BOOLEAN", {"default": True}), "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
            "method": (list(cls.METHODS), {}),
        }}  # fmt: skip

    def save_images(self, images, filename_prefix, fps, lossless, quality, method):
        frames = [_to_pil(image) for image in images]
        (path,) = _next_paths(self.output_dir, filename_prefix, ".webp", 1)
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=round(1000 / fps), lossless=lossless,
                       quality=quality, method=self.METHODS[method])  # fmt: skip
        return {"ui": {"images": [path], "animated": (True,)}}


class LoadImage:
    """Stand-in for ComfyUI's core LoadImage: a file of the input folder (`input_dir`), every frame of it as an
    IMAGE batch (B, H, W, 3) in [0, 1], and a MASK. The frontend adds an upload button after the file widget,
    whose value ("image") a UI workflow stores too."""

    DISPLAY_NAME = "Load Image"
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    input_dir: Path | None = None

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(p.name for p in cls.input_dir.iterdir() if p.is_file()) if cls.input_dir else []
        return {"required": {"image": (files, {"image_upload": True})}}

    def load_image(self, image: str):
        with Image.open(Path(self.input_dir) / image) as picture:
            frames = [
                np.asarray(frame.convert("RGB"), dtype=np.float32) / 255 for frame in ImageSequence.Iterator(picture)
            ]
        pixels = torch.from_numpy(np.stack(frames))
        return (pixels, torch.zeros(len(frames), *pixels.shape[1:3]))


CORE_NODES = {"SaveImage": SaveImage, "SaveAnimatedWEBP": SaveAnimatedWEBP, "LoadImage": LoadImage}


def load_api(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def load_ui(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def declared_inputs(cls) -> list[tuple[str, object, dict, bool]]:
    """(name, type, options, required) in INPUT_TYPES order: required first, then optional; hidden left out."""
    spec = cls.INPUT_TYPES()
    found = []
    for section, required in (("required", True), ("optional", False)):
        for name, entry in spec.get(section, {}).items():
            found.append((name, entry[0], entry[1] if len(entry) > 1 else {}, required))
    return found


def is_widget(kind, options: dict) -> bool:
    """Combos (a list of choices) and primitives get a widget; every other type is a socket fed by a link."""
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput", False)


def has_control_after_generate(name: str, kind, options: dict) -> bool:
    """The frontend's rule: the input's own `control_after_generate` option, else whether it is named like a seed."""
    return kind == "INT" and bool(options.get("control_after_generate", name in SEED_NAMES))


def ui_to_api(ui: dict, node_classes: Mapping[str, type]) -> dict:
    """The API ("prompt") graph of a UI (LiteGraph) workflow, as the frontend's Export (API) writes it.

    widgets_values is positional over the widget inputs in declared order; the UI-only control_after_generate
    entry after a seed widget is skipped; linked inputs (sockets, or converted widgets) become [node_id, slot].
    """
    classes = {**CORE_NODES, **node_classes}
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        node_id, class_type = str(node["id"]), node["type"]
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"node {node_id} ({class_type}) is muted or bypassed; only mode 0 is converted.")
        if class_type not in classes:
            raise WorkflowError(f"node {node_id}: unknown class {class_type!r}.")
        cls = classes[class_type]
        linked = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                linked[slot["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        inputs = {}
        for name, kind, options, _ in declared_inputs(cls):
            if is_widget(kind, options):
                if not values:
                    raise WorkflowError(f"node {node_id} ({class_type}): widgets_values ends before {name!r}.")
                value = values.pop(0)
                if has_control_after_generate(name, kind, options) or options.get("image_upload"):
                    values.pop(0)  # the control_after_generate / upload widget the frontend adds after it
                if name not in linked:
                    inputs[name] = value
            if name in linked:
                inputs[name] = linked[name]
        if values:
            raise WorkflowError(f"node {node_id} ({class_type}): {len(values)} widgets_values left over: {values}.")
        title = node.get("title") or getattr(cls, "DISPLAY_NAME", class_type)
        api[node_id] = {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}
    return api


def check_api(api: dict, node_classes: Mapping[str, type]) -> list[str]:
    """The problems ComfyUI's own validation would report (classes, names, links, combos, ranges); [] if none."""
    classes = {**CORE_NODES, **node_classes}
    problems = []
    for node_id, node in api.items():
        where = f"node {node_id} ({node['class_type']})"
        cls = classes.get(node["class_type"])
        if cls is None:
            problems.append(f"{where}: unknown class.")
            continue
        declared = {name: (kind, options, required) for name, kind, options, required in declared_inputs(cls)}
        for name in node["inputs"].keys() - declared.keys():
            problems.append(f"{where}: no input named {name!r}.")
        for name, (kind, options, required) in declared.items():
            if name not in node["inputs"]:
                if required:
                    problems.append(f"{where}: required input {name!r} is missing.")
                continue
            value = node["inputs"][name]
            if isinstance(value, list):  # a link [node_id, output_index]
                problems += _check_link(api, classes, where, name, kind, value)
            elif not is_widget(kind, options):
                problems.append(f"{where}: {name!r} is a {kind} socket but holds the value {value!r}.")
            else:
                problems += _check_value(where, name, kind, options, value)
    return problems


def _check_link(api, classes, where, name, kind, link) -> list[str]:
    source_id, slot = link
    if source_id not in api:
        return [f"{where}: {name!r} links to missing node {source_id}."]
    source = classes.get(api[source_id]["class_type"])
    if source is None:
        return []  # reported on the source node itself
    if not 0 <= slot < len(source.RETURN_TYPES):
        return [f"{where}: {name!r} links to output {slot} of node {source_id}, which has no such output."]
    given = source.RETURN_TYPES[slot]
    expected = "COMBO" if isinstance(kind, list) else kind
    if given != expected:
        return [f"{where}: {name!r} expects {expected} but node {source_id} output {slot} gives {given}."]
    return []


def _check_value(where, name, kind, options, value) -> list[str]:
    if isinstance(kind, list):
        return [] if value in kind else [f"{where}: {name!r} = {value!r} is not one of {kind}."]
    python_types = {"INT": int, "FLOAT": (int, float), "STRING": str, "BOOLEAN": bool}[kind]
    if not isinstance(value, python_types) or (kind != "BOOLEAN" and isinstance(value, bool)):
        return [f"{where}: {name!r} = {value!r} is not a {kind}."]
    low, high = options.get("min"), options.get("max")
    if kind in ("INT", "FLOAT") and ((low is not None and value < low) or (high is not None and value > high)):
        return [f"{where}: {name!r} = {value} is outside [{low}, {high}]."]
    return []


def execution_order(api: dict) -> list[str]:
    """Node ids so that every node comes after the nodes its links read from."""
    waiting = {nid: {v[0] for v in node["inputs"].values() if isinstance(v, list)} for nid, node in api.items()}
    order = []
    while waiting:
        ready = sorted((nid for nid, needs in waiting.items() if needs <= set(order)), key=_numeric_first)
        if not ready:
            raise WorkflowError(f"the graph has a cycle or a link to a missing node among {sorted(waiting)}.")
        order += ready
        for nid in ready:
            del waiting[nid]
    return order


def _numeric_first(node_id: str):
    return (0, int(node_id), "") if node_id.isdigit() else (1, 0, node_id)


def run_api_workflow(api: dict, node_classes: Mapping[str, type], save_dir: str | Path) -> dict[str, dict]:
    """Run an API graph as ComfyUI does, in-process; returns the "ui" outputs by node id (like /history outputs).

    Every node's VALIDATE_INPUTS (if any) runs first, with the widget values it names; then each node runs in
    dependency order as `getattr(cls(), cls.FUNCTION)(**inputs)`, links resolved to earlier outputs.
    The save stand-ins write into `save_dir` and report {"images": [paths]}.
    """
    savers = {name: type(name, (cls,), {"output_dir": Path(save_dir)}) for name, cls in CORE_NODES.items()
              if name != "LoadImage"}  # fmt: skip
    classes = {**node_classes, **savers, "LoadImage": LoadImage}
    order = execution_order(api)
    for node_id in order:
        _validate(node_id, api[node_id], classes)
    results: dict[str, tuple] = {}
    ui_outputs: dict[str, dict] = {}
    for node_id in order:
        node = api[node_id]
        cls = classes[node["class_type"]]
        inputs = {
            name: results[value[0]][value[1]] if isinstance(value, list) else value
            for name, value in node["inputs"].items()
        }
        returned = getattr(cls(), cls.FUNCTION)(**inputs)
        if isinstance(returned, dict):
            if "ui" in returned:
                ui_outputs[node_id] = returned["ui"]
            returned = returned.get("result", ())
        results[node_id] = tuple(returned)
    return ui_outputs


def _validate(node_id: str, node: dict, classes: Mapping[str, type]) -> None:
    cls = classes.get(node["class_type"])
    if cls is None:
        raise WorkflowError(f"node {node_id}: unknown class {node['class_type']!r}.")
    validate = getattr(cls, "VALIDATE_INPUTS", None)
    if validate is None:
        return
    named = inspect.signature(validate).parameters
    values = {k: v for k, v in node["inputs"].items() if k in named and not isinstance(v, list)}
    verdict = validate(**values)
    if verdict is not True:
        raise WorkflowError(f"node {node_id} ({node['class_type']}): {verdict}")
