"""Every shipped UI workflow, dropped onto the canvas of ComfyUI's own frontend as a user does, then run from it.

Headless Chromium (Debian's `chromium`, never a browser that `playwright install` downloads) driven by the
`playwright` package, against the real server of conftest.py. For each `workflows/*.json`: no missing node
types, every node's widgets hold the file's values, `app.graphToPrompt()` gives the API twin
`workflows/api/<same name>.json`, and with sizes and steps made small in the widgets the Run button queues
exactly the twin shrunk the same way, which finishes and writes its output file.

Skipped without COMFYUI_DIR, the `playwright` package or a Chromium (CHROMIUM, else `chromium` on the PATH).
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from pathlib import Path

import pytest

from scripts import run_workflow as rw
from tests.integration.server import (
    COMFYUI_DIR,
    REPO,
    RUN_TIMEOUT,
    SKIP_REASON,
    SMALL,
    Server,
    assert_outputs,
    comparable,
    shrink,
)

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError:  # the test tools of the ComfyUI environment (see the README's Development section)
    sync_playwright = None

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
# Frontend settings of a returning user: no first-run template browser, no release check against the internet.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Notification.ShowVersionUpdates": False}
PAGE_TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.skipif(not COMFYUI_DIR, reason=SKIP_REASON),
    pytest.mark.skipif(sync_playwright is None, reason="the playwright package is not installed"),
    pytest.mark.skipif(not Path(CHROMIUM).is_file(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]

# Records what every graph load reported missing: the frontend calls this hook after each loadGraphData.
INSTALL_LOAD_PROBE = """() => {
    window.__luminaLoad = null;
    app.registerExtension({
        name: "comfyui-lumina.test.loadProbe",
        afterConfigureGraph(missing) {
            window.__luminaLoad = {missing: missing.map((m) => (typeof m === "string" ? m : m.type))};
        },
    });
}"""
# A drag from the file manager: the file in a DataTransfer, dragged over and dropped on the canvas.
FILE_DRAG = """([name, text]) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([text], name, {type: "application/json"}));
    window.__luminaLoad = null;
    return transfer;
}"""
LOADED_NODES = """() => app.graph.nodes.map((node) => {
    const widgets = (node.widgets || []).filter((w) => w.serialize !== false);
    return {
        id: String(node.id),
        type: node.type,
        registered: node.type in LiteGraph.registered_node_types,
        names: widgets.map((w) => w.name),
        values: widgets.map((w) => w.value),
    };
})"""
# What a user does in the widgets: type a new value into each size and step field.
SET_WIDGETS = """(values) => {
    for (const node of app.graph.nodes)
        for (const widget of node.widgets || [])
            if (widget.name in values) {
                widget.value = values[widget.name];
                widget.callback?.(widget.value);
            }
    app.graph.setDirtyCanvas(true, true);
}"""


@pytest.fixture(scope="module")
def page(server: Server, tmp_path_factory):
    rw.request_json(server.address, "/settings", SETTINGS)
    profile = tmp_path_factory.mktemp("chromium_profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1600, "height": 1000},
        )  # fmt: skip
        try:
            context.route("**/*", lambda route: stay_on_the_server(route, server))
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.goto(f"http://{server.address}/")
            page.wait_for_function("() => window.app?.graph && window.app.canvasEl && window.LiteGraph")
            page.wait_for_selector('[data-testid="queue-button"]')
            page.evaluate(INSTALL_LOAD_PROBE)
            yield page
        finally:
            context.close()


@pytest.fixture
def page_errors(page: Page):
    """The uncaught errors the page raises during one test."""
    errors = []

    def record(error) -> None:
        errors.append(error)

    page.on("pageerror", record)
    yield errors
    page.remove_listener("pageerror", record)


def stay_on_the_server(route, server: Server) -> None:
    """Requests to anywhere but the ComfyUI under test (the frontend asks the internet for news) are refused here."""
    if urllib.parse.urlsplit(route.request.url).netloc == server.address:
        route.continue_()
    else:
        route.abort()


def drop_file(page: Page, path: Path) -> list[str]:
    """Drop `path` onto the canvas; returns the node types the frontend reported missing once the graph loaded."""
    transfer = page.evaluate_handle(FILE_DRAG, [path.name, path.read_text(encoding="utf-8")])
    for event in ("dragenter", "dragover", "drop"):
        page.dispatch_event("#graph-canvas", event, {"dataTransfer": transfer})
    page.wait_for_function("() => window.__luminaLoad !== null")
    return page.evaluate("() => window.__luminaLoad.missing")


def widget_values(names: list[str], values: list, saved: list | dict) -> tuple[dict, dict]:
    """(loaded, saved) widget values by name; a saved list is positional, extra or missing entries show as <none>."""
    if isinstance(saved, dict):
        return dict(zip(names, values)), {name: saved.get(name, "<none>") for name in names} | saved
    count = max(len(names), len(saved))
    names = names + [f"<extra value {i}>" for i in range(len(names), count)]
    pad = ["<none>"] * count
    return dict(zip(names, (values + pad)[:count])), dict(zip(names, (list(saved) + pad)[:count]))


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=lambda p: p.name)
def test_dropped_workflow_loads_and_runs(server: Server, page: Page, page_errors: list, workflow: Path):
    twin_path = REPO / "workflows" / "api" / workflow.name
    assert twin_path.is_file(), f"{workflow.name} has no API twin at workflows/api/{workflow.name}"
    saved_nodes = {str(node["id"]): node for node in json.loads(workflow.read_text(encoding="utf-8"))["nodes"]}
    twin = rw.load_graph(twin_path)
    missing = drop_file(page, workflow)
    assert not missing, f"{workflow.name}: the frontend found no node type {missing}"
    loaded = {node["id"]: node for node in page.evaluate(LOADED_NODES)}
    assert sorted(loaded) == sorted(saved_nodes), "the loaded graph has other nodes than the file"
    for node_id, node in loaded.items():
        saved = saved_nodes[node_id]
        assert (node["type"], node["registered"]) == (saved["type"], True), f"node {node_id}"
        now, in_file = widget_values(node["names"], node["values"], saved.get("widgets_values", []))
        assert now == in_file, f"node {node_id} ({node['type']}): widgets differ from {workflow.name}"

    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    assert comparable(prompt) == comparable(twin), f"graphToPrompt() differs from workflows/api/{workflow.name}"

    page.evaluate(SET_WIDGETS, SMALL)
    with page.expect_response(lambda r: r.url.endswith("/api/prompt") and r.request.method == "POST") as answer:
        page.click('[data-testid="queue-button"]')
    body = answer.value.json()
    assert answer.value.ok, f"the server refused the queued workflow: {body}"
    assert comparable(answer.value.request.post_data_json["prompt"]) == comparable(shrink(twin))
    history = rw.get_history(server.address, body["prompt_id"], wait=RUN_TIMEOUT)
    files = assert_outputs(server, history)
    assert not page_errors, f"the page raised: {page_errors}"
    print(f"{workflow.name}: dropped, checked and run from the UI -> {[f['path'] for f in files]}")
