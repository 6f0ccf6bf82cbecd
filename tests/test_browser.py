"""End to end in a real browser: Debian's Chromium (headless, over the DevTools protocol) against the real
ComfyUI 0.3.64 server with this pack. The page loads with no console error from the pack, the templates
dialog lists the pack's workflows with their thumbnails, and every template opens from the dialog without
overlapping nodes; each embedded-model template, queued from the page, finishes with an image.

Screenshots (the dialog, each loaded graph, the finished one) go to the test's tmp_path and are named in
failure messages. Without Chromium the tests skip, except in CI (env CI set), where they fail: .ci/run
installs it (apt-get install chromium).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cdp import BrowserError, Chromium, errors, find_chromium
from comfy_harness import PACK_NAME, ROOT, comfyui_copy, one_torch_thread, running_server

TEMPLATES = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
NEEDS_USER_FILES = {"SD1.5 full size, depth map to image"}  # SD1.5 weights: opened and checked, not run
THUMBNAIL_TIMEOUT = 60  # s per card, once in view: the images are small, a loaded machine is slow
TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT in this frontend; read from the page below


def about_the_pack(text: str) -> bool:
    return any(word in text for word in (PACK_NAME, "PDiff", "pdiff", "Prompt Diffusion", "PromptDiffusion"))


@pytest.fixture(scope="module")
def chromium_executable() -> str:
    executable = find_chromium()
    if executable is None:
        message = "chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(f"CI: {message}")
        pytest.skip(message)
    return executable


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def server(chromium_executable, tmp_path_factory, tiny_pipeline_dir):
    comfy_dir = comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)
    with running_server(comfy_dir, tmp_path_factory.mktemp("server") / "comfyui.log", timeout=180) as server:
        yield server


@pytest.fixture(scope="module")
def page(server, chromium_executable):
    browser = Chromium(chromium_executable)
    try:
        browser.goto(server.url)
        browser.wait_for(
            "window.app && app.graph && window.LiteGraph && "
            "LiteGraph.registered_node_types['PDiff_ApplyPromptDiffusion']",
            timeout=240,
            what="the ComfyUI page with the pack's nodes",
        )
        yield browser
    finally:
        browser.close()


def open_pack_templates(page: Chromium, shots: Path) -> list:
    """Open the templates dialog on the pack's category; the cards' titles once every thumbnail loaded."""
    if not page.evaluate("!!document.querySelector('[data-testid=\"template-workflows-content\"]')"):
        page.evaluate("app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    content = "document.querySelector('[data-testid=\"template-workflows-content\"]')"
    nav_item = (
        f"Array.from({content}.querySelectorAll('aside *'))"
        f".find(e => e.children.length === 0 && e.textContent.trim() === {json.dumps(PACK_NAME)})"
    )
    shown = f"Array.from({content}.querySelectorAll('h2')).some(h => h.textContent.trim() === {json.dumps(PACK_NAME)})"
    page.wait_for(f"!!{content} && !!({nav_item})", what="the templates dialog with the pack's category")
    deadline = time.monotonic() + 60
    while not page.evaluate(shown):  # a click during the dialog's opening animation can miss: click until shown
        assert time.monotonic() < deadline, (
            f"the pack's category did not open; see {page.screenshot(shots / 'templates_dialog.png')}"
        )
        page.click(nav_item)
        page.pause(1.0)
    cards = "Array.from(document.querySelectorAll('[data-testid^=\"template-workflow-\"]'))"
    try:
        page.wait_for(f"{cards}.length === {len(TEMPLATES)}", timeout=60, what=f"{len(TEMPLATES)} cards")
        # the dialog sets a card's image only while the card is in view (a card below the fold has none):
        # bring each into view, then wait on its image
        for index in [*range(len(TEMPLATES)), 0]:  # the first again for the screenshot
            card = f"{cards}[{index}]"
            loaded = f"(() => {{ const i = {card}.querySelector('img'); return !!i && i.complete && i.naturalWidth > 0; }})()"
            page.evaluate(f"{card}.scrollIntoView({{block: 'center'}})")
            page.wait_for(loaded, timeout=THUMBNAIL_TIMEOUT, what=f"card {index}'s thumbnail")
    except BrowserError as err:
        state = page.evaluate(
            f"{cards}.map(c => {{ const i = c.querySelector('img'); return [c.getAttribute('data-testid'), "
            "i ? [i.src, i.complete, i.naturalWidth] : null]; })"
        )
        raise AssertionError(
            f"{err}; cards (id, [img src, complete, width]): {state}; "
            f"see {page.screenshot(shots / 'templates_dialog.png')}"
        ) from err
    page.pause(1.0)  # loaded is not yet painted
    page.screenshot(shots / "templates_dialog.png")
    return page.evaluate(f"{cards}.map(c => c.getAttribute('data-testid').slice('template-workflow-'.length))")


def test_page_loads_with_no_console_error_from_the_pack(page):
    assert (
        page.evaluate("Object.keys(LiteGraph.registered_node_types).filter(t => t.startsWith('PDiff_')).length") == 7
    )  # the six nodes and Apply Prompt Diffusion (Few-Shot)
    assert not errors(page.console, about_the_pack), errors(page.console, about_the_pack)


def test_templates_dialog_lists_the_pack_workflows_with_thumbnails(page, tmp_path):
    assert sorted(open_pack_templates(page, tmp_path)) == TEMPLATES, f"see {tmp_path / 'templates_dialog.png'}"
    failed_media = [m for m in page.console if "Failed to cache media" in m["text"] and PACK_NAME in m["text"]]
    assert not failed_media, failed_media


def node_boxes(page: Chromium) -> list:
    return page.evaluate(
        "app.graph._nodes.map(n => ({title: n.title, type: n.type, "
        "box: [n.pos[0], n.pos[1] - LiteGraph.NODE_TITLE_HEIGHT, n.pos[0] + n.size[0], n.pos[1] + n.size[1]]}))"
    )


def overlaps(nodes: list) -> list:
    found = []
    for i, a in enumerate(nodes):
        for b in nodes[:i]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["box"], b["box"]
            if ax0 < bx1 and bx0 < ax1 and ay0 < by1 and by0 < ay1:
                found.append((a["title"], b["title"]))
    return found


@pytest.mark.parametrize("template", TEMPLATES)
def test_template_opens_from_the_dialog_without_overlaps_and_runs_from_the_page(page, server, template, tmp_path):
    open_pack_templates(page, tmp_path)
    page.click(f"document.querySelector('[data-testid=\"template-workflow-{template}\"]')")
    page.wait_for(
        "!document.querySelector('[data-testid=\"template-workflows-content\"]') && "
        f"app.graph._nodes.some(n => n.title === 'About this workflow') && "
        f"app.graph._nodes.length === {len(json.loads((ROOT / 'example_workflows' / f'{template}.json').read_text())['nodes'])}",
        what=f"the template {template!r} in the graph",
    )
    page.pause(1.0)  # let the frontend size the nodes (LoadImage grows to its preview)
    shot = page.screenshot(tmp_path / "graph.png")
    nodes = node_boxes(page)
    assert not overlaps(nodes), f"overlapping nodes {overlaps(nodes)}; see {shot}"
    if template in NEEDS_USER_FILES:
        return
    before = set(server.get("/history"))
    page.evaluate(
        "window.pdiffExecuted = []; if (!window.pdiffListening) { window.pdiffListening = true; "
        "comfyAPI.api.api.addEventListener('executed', e => window.pdiffExecuted.push(e.detail)); }"
    )
    page.evaluate("app.queuePrompt(0, 1)")
    deadline = time.monotonic() + 180
    while not (set(server.get("/history")) - before):
        assert time.monotonic() < deadline, f"nothing finished; see {page.screenshot(tmp_path / 'queued.png')}"
        time.sleep(0.5)
    prompt_id = (set(server.get("/history")) - before).pop()
    entry = server.wait_history(prompt_id)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"])[-2000:]
    assert entry["outputs"]["11"]["images"], entry["outputs"]
    # the page got it: the result node's "executed" message names the image the server made
    filename = entry["outputs"]["11"]["images"][0]["filename"]
    page.wait_for(
        f"window.pdiffExecuted.some(d => String(d.node) === '11' && "
        f"d.output.images.some(i => i.filename === {json.dumps(filename)}))",
        timeout=30,
        what="the page's 'executed' message for the result node",
    )
    page.evaluate("app.extensionManager.command.execute('Comfy.Canvas.FitView')")  # the whole graph, result included
    page.pause(1.0)
    page.screenshot(tmp_path / "finished.png")
    assert not errors(page.console, about_the_pack), errors(page.console, about_the_pack)
