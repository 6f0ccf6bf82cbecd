"""End to end through the real ComfyUI 0.3.64 server (main.py --cpu) and the headless command: the pack
imports, every shared workflow runs with the tiny test weights, outputs are real images."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.error
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfy_harness import (
    ONE_THREAD_ENV,
    PACK_NAME,
    ROOT,
    ComfyServer,
    comfyui_copy,
    load_runner,
    one_torch_thread,
    running_server,
)

WORKFLOWS = ROOT / "workflows"
TEMPLATES = ROOT / "example_workflows"
FULL_SIZE = {"sd15_depth_to_image"}  # needs SD1.5 files; validated in test_comfy_workflows.py
NAMES = sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json") if p.stem not in FULL_SIZE)
TEST_STEPS = 4  # the tiny random-weight model; the workflows' own 20 steps would only take longer


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def comfy_dir(tmp_path_factory, tiny_pipeline_dir) -> Path:
    return comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)


@pytest.fixture(scope="module")
def server(comfy_dir, tmp_path_factory):
    with running_server(comfy_dir, tmp_path_factory.mktemp("server") / "comfyui.log", timeout=120) as server:
        yield server


def api_workflow(name: str, seed: int) -> dict:
    prompt = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    prompt["9"]["inputs"].update(seed=seed, steps=TEST_STEPS)
    return prompt


def run(server: ComfyServer, prompt: dict) -> dict:
    answer = server.post("/prompt", {"prompt": prompt, "client_id": "pdiff-tests"})
    assert not answer.get("node_errors"), answer
    entry = server.wait_history(answer["prompt_id"], timeout=120)
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-3000:]
    return entry


def fetch_image(server: ComfyServer, image: dict) -> np.ndarray:
    query = urllib.parse.urlencode(
        {"filename": image["filename"], "subfolder": image["subfolder"], "type": image["type"]}
    )
    return np.asarray(Image.open(io.BytesIO(server.get_bytes(f"/view?{query}"))).convert("RGB")).astype(np.float32)


def test_pack_imports_and_its_nodes_are_served(server):
    info = server.get("/object_info")
    for node_id in (
        "PDiff_LoadPromptDiffusionModel",
        "PDiff_LoadPromptDiffusionControlNet",
        "PDiff_ApplyPromptDiffusion",
        "PDiff_MakeExamplePair",
        "PDiff_PromptDiffusionPreview",
        "PDiff_Annotate",
    ):
        assert node_id in info, node_id
    assert info["PDiff_LoadPromptDiffusionModel"]["input"]["required"]["model_name"][1]["options"] == ["pdiff-toyworld"]
    log = server.log()
    pack_lines = [line for line in log.splitlines() if PACK_NAME in line]
    assert pack_lines and not any("IMPORT FAILED" in line or "Cannot import" in line for line in pack_lines), pack_lines


def test_templates_are_served_with_thumbnails_and_nothing_else(server):
    titles = sorted(p.stem for p in TEMPLATES.glob("*.json"))
    assert sorted(server.get("/workflow_templates")[PACK_NAME]) == titles
    base = f"/api/workflow_templates/{PACK_NAME}/"
    for title in titles:
        quoted = urllib.parse.quote(title)
        assert server.get(f"{base}{quoted}.json") == json.loads((TEMPLATES / f"{title}.json").read_text())
        assert Image.open(io.BytesIO(server.get_bytes(f"{base}{quoted}.jpg"))).format == "JPEG"
    for private in ("build.py", "api/depth_to_image.json", "inputs/pdiff_depth_query.png", "thumbnails.py"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            server.get_bytes(base + private)
        assert refused.value.code == 404, private


@pytest.mark.parametrize("name", NAMES)
def test_workflow_runs_end_to_end(server, name):
    seeds = (1, 2) if name == NAMES[0] else (1,)  # seeds matter once; each workflow runs once more
    images = {}
    for seed in seeds:
        entry = run(server, api_workflow(name, seed))
        result = entry["outputs"]["11"]["images"]
        assert len(result) == 1 and result[0]["type"] == "output"
        images[seed] = fetch_image(server, result[0])
        preview = fetch_image(server, entry["outputs"]["12"]["images"][0])
        assert preview.shape[0] == 64 and preview.shape[1] > 4 * 64
    for image in images.values():
        assert image.shape == (64, 64, 3)
        assert image.std() > 2.0, "blank image"
    if len(images) == 2:
        assert np.abs(images[1] - images[2]).mean() > 1.0, "different seeds gave the same image"


def test_ui_workflow_converts_to_a_prompt_the_server_accepts(server):
    runner = load_runner()
    info = server.get("/object_info")
    ui = json.loads((TEMPLATES / "Edit by example, change the floor.json").read_text())
    prompt = runner.ui_to_api(ui, lambda node_type: info.get(node_type, {}).get("input"))
    prompt["9"]["inputs"]["steps"] = TEST_STEPS
    entry = run(server, prompt)
    assert entry["outputs"]["11"]["images"]


def test_headless_command_runs_a_workflow_with_overrides(comfy_dir, tmp_path):
    query = tmp_path / "my query.png"
    Image.fromarray((np.random.default_rng(0).random((48, 48, 3)) * 255).astype(np.uint8)).save(query)
    out = tmp_path / "out"
    private_tmp = tmp_path / "tmp"  # the runner's temporary folders go here, and must not stay
    private_tmp.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "run_workflow.py"),
            str(TEMPLATES / "Depth map to image.json"),
            "--comfyui",
            str(comfy_dir),
            "--cpu",
            "--output",
            str(out),
            "--seed",
            "5",
            "--prompt",
            "a red sphere",
            "--image",
            f"query={query}",
            "--set",
            f"sampler.steps={TEST_STEPS}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env={**ONE_THREAD_ENV, "TMPDIR": str(private_tmp)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "outputs.json").read_text())
    assert len(summary["files"]) == 1 and Path(summary["files"][0]).is_file()
    assert len(summary["previews"]) == 1 and Image.open(summary["previews"][0]).size[0] > 4 * 64  # the side-by-side
    assert not list(private_tmp.glob("pdiff_inputs_*")), "the runner left its input folder"
    assert Image.open(summary["files"][0]).size == (64, 64)
    assert "running node 11" in done.stderr


# Loads the pack as ComfyUI's loader does, in a fresh process, with the venv's editable install of this
# project (which would make `training` importable anyway) taken off the import machinery.
EXPOSED_NAMES_SCRIPT = """
import asyncio, importlib.util, json, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
comfy_dir, pack_dir, root = sys.argv[1:]
sys.path.insert(0, comfy_dir)
from comfy.cli_args import args
args.cpu = True
import utils.extra_config  # ComfyUI's utils package, before nodes.py as main.py does
import nodes
loaded = asyncio.run(nodes.load_custom_node(pack_dir, set()))
def origin(name):
    spec = importlib.util.find_spec(name)
    return None if spec is None else str(spec.origin or list(spec.submodule_search_locations))
print(json.dumps({"loaded": loaded, "core": sys.modules["pdiff_core"].__file__, "root_on_path": any(p and os.path.realpath(p) == root for p in sys.path),
                  "names": {name: origin(name) for name in ("training", "tests", "benchmarks", "scripts")}}))
"""


def test_inside_comfyui_the_pack_exposes_only_its_core(comfy_dir, tmp_path):
    pack_dir = comfy_dir / "custom_nodes" / PACK_NAME  # a folder name that is no Python identifier
    result = subprocess.run(
        [sys.executable, "-c", EXPOSED_NAMES_SCRIPT, str(comfy_dir), str(pack_dir), str(ROOT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=ONE_THREAD_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["loaded"], result.stderr[-3000:]
    assert Path(found["core"]).resolve() == ROOT / "pdiff_core" / "__init__.py"
    assert not found["root_on_path"]
    leaked = {
        name: where
        for name, where in found["names"].items()
        if where is not None and str(ROOT) in str(Path(where.strip("[]'")).resolve())
    }
    assert not leaked, f"the pack's own folders are importable top-level names inside ComfyUI: {leaked}"
