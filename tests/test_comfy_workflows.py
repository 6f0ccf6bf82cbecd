"""The shared workflows: generated files up to date, UI format converting to the API format, and the
generator's node knowledge matching ComfyUI's schemas."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from comfy_harness import ROOT, comfyui_copy, import_comfyui, load_runner, one_torch_thread

WORKFLOWS = ROOT / "workflows"
NAMES = sorted(p.stem for p in WORKFLOWS.glob("*.json"))


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


def load_build():
    spec = importlib.util.spec_from_file_location("pdiff_workflows_build", WORKFLOWS / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build():
    return load_build()


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory, tiny_pipeline_dir):
    return import_comfyui(comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir))


@pytest.fixture(scope="module")
def nodes_module(comfyui):
    return comfyui["nodes"]


def test_the_required_workflows_exist_in_both_formats():
    assert {"depth_to_image", "image_to_depth", "softedge_to_image", "text_guided_edit", "unseen_task_image_to_normal"} <= set(NAMES)
    assert NAMES == sorted(p.stem for p in (WORKFLOWS / "api").glob("*.json"))


def test_workflow_files_are_up_to_date_with_the_generator(build, tmp_path):
    written = build.build(tmp_path)
    fresh = {p.relative_to(tmp_path) for p in written}
    committed = {p.relative_to(WORKFLOWS) for p in WORKFLOWS.rglob("*") if p.suffix in (".json", ".png")}
    assert fresh == committed, "run: python workflows/build.py"
    for relative in sorted(fresh):
        if relative.suffix == ".json":
            assert (tmp_path / relative).read_text() == (WORKFLOWS / relative).read_text(), f"{relative} is stale: run workflows/build.py"
        else:
            assert np.array_equal(np.asarray(Image.open(tmp_path / relative)), np.asarray(Image.open(WORKFLOWS / relative))), relative


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_converts_to_the_api_workflow(nodes_module, name):
    runner = load_runner()
    ui = json.loads((WORKFLOWS / f"{name}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{name}.json").read_text())
    assert runner.is_ui_format(ui) and not runner.is_ui_format(api)
    assert runner.ui_to_api(ui, runner.input_types_of(nodes_module)) == api


def test_generator_node_types_match_comfyui_schemas(build, nodes_module):
    for node_type, spec in build.NODE_TYPES.items():
        node_class = nodes_module.NODE_CLASS_MAPPINGS[node_type]
        assert [kind for _, kind in spec["outputs"]] == list(node_class.RETURN_TYPES), node_type
        inputs = {**node_class.INPUT_TYPES()["required"], **node_class.INPUT_TYPES().get("optional", {})}
        for name, kind in spec["links"].items():
            assert inputs[name][0] == kind, f"{node_type}.{name}"
        assert [w for w in spec["widgets"] if w is not None] == [
            n for n, s in inputs.items() if isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")], node_type


def test_ui_conversion_reports_unknown_node_types(nodes_module):
    runner = load_runner()
    ui = json.loads((WORKFLOWS / f"{NAMES[0]}.json").read_text())
    ui["nodes"][0]["type"] = "NoSuchNode"
    with pytest.raises(runner.WorkflowError, match="unknown node type 'NoSuchNode'"):
        runner.ui_to_api(ui, runner.input_types_of(nodes_module))


def test_runner_reports_each_failing_node(comfyui):
    runner = load_runner()
    prompt = json.loads((WORKFLOWS / "api" / "image_to_depth.json").read_text())
    prompt["7"]["inputs"]["control_net"] = ["1", 0]  # a MODEL where a CONTROL_NET belongs
    prompt["8"]["inputs"]["width"] = "wide"
    with pytest.raises(runner.WorkflowError) as invalid:
        runner.run(prompt, comfyui)
    assert "node 7 (PDiff_ApplyPromptDiffusion)" in str(invalid.value) and "control_net" in str(invalid.value)
    assert "node 8 (EmptyLatentImage)" in str(invalid.value)

    failing = {  # valid, but the preview's batches (2 and 3) cannot be shown side by side
        "1": {"class_type": "LoadImage", "inputs": {"image": "pdiff_depth_query.png"}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 2}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "4": {"class_type": "PDiff_PromptDiffusionPreview",
              "inputs": {"example_source": ["2", 0], "example_target": ["3", 0], "query": ["1", 0], "result": ["1", 0]}},
    }
    with pytest.raises(runner.NodeFailure, match=r"node 4 \(PDiff_PromptDiffusionPreview\) failed: ValueError: batches"):
        runner.run(failing, comfyui)
