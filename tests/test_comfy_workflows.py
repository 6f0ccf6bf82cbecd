"""The shared workflows: generated files up to date, UI format converting to the API format, the
generator's node knowledge matching ComfyUI's schemas, the templates laid out and runnable as opened, and
the full-size SD1.5 workflow validating against files of the right kind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_harness import (
    ROOT,
    comfyui_copy,
    import_comfyui,
    load_file_module,
    load_runner,
    one_torch_thread,
    pack_module,
)

WORKFLOWS = ROOT / "workflows"
TEMPLATES = ROOT / "example_workflows"


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_torch_thread():
        yield


BUILD = load_file_module("pdiff_workflows_build", WORKFLOWS / "build.py")
EXAMPLES = BUILD.examples()


@pytest.fixture(scope="module")
def build():
    return BUILD


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory, tiny_pipeline_dir):
    return import_comfyui(comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir))


@pytest.fixture(scope="module")
def nodes_module(comfyui):
    return comfyui["nodes"]


def test_the_required_workflows_exist_in_both_formats():
    names = {e.name for e in EXAMPLES}
    assert {
        "depth_to_image",
        "image_to_depth",
        "softedge_to_image",
        "text_guided_edit",
        "unseen_task_image_to_normal",
        "sd15_depth_to_image",
    } <= names
    assert names == {p.stem for p in (WORKFLOWS / "api").glob("*.json")}
    assert {e.title for e in EXAMPLES} == {p.stem for p in TEMPLATES.glob("*.json")}


def test_workflow_files_are_up_to_date_with_the_generator(build, tmp_path):
    written = build.build(tmp_path)
    fresh = {p.relative_to(tmp_path) for p in written}
    committed = {
        p.relative_to(ROOT)
        for folder in (WORKFLOWS, TEMPLATES)
        for p in folder.rglob("*")
        if p.suffix in (".json", ".png")
    }
    assert fresh == committed, "run: python workflows/build.py"
    for relative in sorted(fresh):
        if relative.suffix == ".json":
            assert (tmp_path / relative).read_text() == (ROOT / relative).read_text(), (
                f"{relative} is stale: run workflows/build.py"
            )
        else:
            assert np.array_equal(
                np.asarray(Image.open(tmp_path / relative)), np.asarray(Image.open(ROOT / relative))
            ), relative


def test_every_template_has_a_thumbnail_and_only_templates_are_in_the_served_folder():
    for example in EXAMPLES:
        thumbnail = TEMPLATES / f"{example.title}.jpg"
        assert thumbnail.is_file(), f"{thumbnail.name} missing: run workflows/thumbnails.py"
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG" and min(image.size) >= 256
    assert {p.suffix for p in TEMPLATES.iterdir()} == {".json", ".jpg"}
    # ComfyUI lists *.json directly inside any of its template folder names: workflows/ must hold none.
    assert not list(WORKFLOWS.glob("*.json"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_template_nodes_do_not_overlap_and_have_a_note(example):
    ui = json.loads((TEMPLATES / f"{example.title}.json").read_text())
    boxes = [
        (n["pos"][0], n["pos"][1] - BUILD.TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        for n in ui["nodes"]
    ]
    for i, a in enumerate(boxes):
        for j, b in enumerate(boxes[:i]):
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (
                ui["nodes"][i]["title"],
                ui["nodes"][j]["title"],
            )
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and example.title in notes[0]["widgets_values"][0]
    # data flows left to right: every link goes to a node further right than its source
    x_of = {n["id"]: n["pos"][0] for n in ui["nodes"]}
    assert all(x_of[source] < x_of[target] for _, source, _, target, _, _ in ui["links"])


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_ui_workflow_converts_to_the_api_workflow(nodes_module, example):
    runner = load_runner()
    ui = json.loads((TEMPLATES / f"{example.title}.json").read_text())
    api = json.loads((WORKFLOWS / "api" / f"{example.name}.json").read_text())
    assert runner.is_ui_format(ui) and not runner.is_ui_format(api)
    assert runner.ui_to_api(ui, runner.input_types_of(nodes_module)) == api


def test_sampler_settings_come_from_one_place(build):
    for example in EXAMPLES:
        sampler = json.loads((WORKFLOWS / "api" / f"{example.name}.json").read_text())["9"]["inputs"]
        latent = json.loads((WORKFLOWS / "api" / f"{example.name}.json").read_text())["8"]["inputs"]
        expected = (
            (build.SD15_CFG, build.SD15_STEPS, build.SD15_SIZE)
            if example.full_size
            else (build.CFG, build.STEPS, build.SIZE)
        )
        assert (sampler["cfg"], sampler["steps"], latent["width"]) == expected, example.name
        assert sampler["sampler_name"] == "ddim"
    assert (build.SD15_CFG, build.SD15_STEPS, build.SD15_SIZE) == (9.0, 50, 512)  # the authors' settings


def test_generator_node_types_match_comfyui_schemas(build, nodes_module):
    for node_type, spec in build.NODE_TYPES.items():
        if node_type in build.VIRTUAL_NODE_TYPES:
            assert node_type not in nodes_module.NODE_CLASS_MAPPINGS
            continue
        node_class = nodes_module.NODE_CLASS_MAPPINGS[node_type]
        assert [kind for _, kind in spec["outputs"]] == list(node_class.RETURN_TYPES), node_type
        inputs = {**node_class.INPUT_TYPES()["required"], **node_class.INPUT_TYPES().get("optional", {})}
        for name, kind in spec["links"].items():
            assert inputs[name][0] == kind, f"{node_type}.{name}"
        assert [w for w in spec["widgets"] if w is not None] == [
            n
            for n, s in inputs.items()
            if isinstance(s[0], list) or s[0] in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")
        ], node_type


def test_the_pack_puts_the_template_inputs_in_comfyui_input_folder(comfyui):
    input_dir = Path(comfyui["folder_paths"].get_input_directory())
    for example in EXAMPLES:
        for name in (example.source, example.target, example.query):
            assert (input_dir / (BUILD.INPUT_PREFIX + name)).is_file(), name


def test_copying_template_inputs_never_overwrites_a_user_file(comfyui, tmp_path, caplog):
    copy_example_inputs = pack_module(comfyui["nodes"], "example_inputs").copy_example_inputs
    source, input_dir = tmp_path / "pack", tmp_path / "input"
    source.mkdir()
    input_dir.mkdir()
    Image.new("RGB", (8, 8), "red").save(source / "pdiff_a.png")
    Image.new("RGB", (8, 8), "red").save(source / "pdiff_b.png")
    Image.new("RGB", (8, 8), "blue").save(input_dir / "pdiff_b.png")  # the user's own file of that name
    user_bytes = (input_dir / "pdiff_b.png").read_bytes()
    assert copy_example_inputs(source, input_dir) == [input_dir / "pdiff_a.png"]
    assert (input_dir / "pdiff_b.png").read_bytes() == user_bytes
    assert "kept your" in caplog.text and "pdiff_b.png" in caplog.text
    assert copy_example_inputs(source, input_dir) == []  # a second load copies nothing


def test_full_size_workflow_validates_against_files_of_the_right_kind(comfyui, tmp_path):
    """The server's own prompt validation (what POST /prompt runs) of the SD1.5 workflow: it names the two
    files while they are missing, and passes once they are there. The ControlNet file is an authors-layout
    LDM checkpoint (control_model.* plus a full checkpoint's other parts) that the workflow's loader reads;
    the SD1.5 checkpoint is only listed by validation, never opened, so an SD1.5-layout stand-in suffices."""
    from safetensors.torch import save_file

    from pdiff_core.checkpoints import diffusers_to_ldm, read_controlnet

    comfy_dir, folder_paths = Path(comfyui["folder_paths"].base_path), comfyui["folder_paths"]
    prompt = json.loads((WORKFLOWS / "api" / "sd15_depth_to_image.json").read_text())
    validate = comfyui["execution"].validate_prompt
    checkpoint = comfy_dir / "models" / "checkpoints" / BUILD.SD15_CHECKPOINT
    control = comfy_dir / "models" / "controlnet" / BUILD.SD15_CONTROLNET
    assert not checkpoint.exists() and not control.exists()
    folder_paths.filename_list_cache.clear()
    valid, _, _, node_errors = asyncio.run(validate("sd15-missing", prompt, None))
    assert not valid
    assert BUILD.SD15_CHECKPOINT in json.dumps(node_errors["1"]) and BUILD.SD15_CONTROLNET in json.dumps(
        node_errors["13"]
    )

    reference = read_controlnet(comfy_dir / "models" / "prompt_diffusion" / BUILD.MODEL).build()
    ldm = diffusers_to_ldm(reference.state_dict(), reference.config.layers_per_block)
    ldm["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)
    ldm["first_stage_model.decoder.conv_in.weight"] = torch.zeros(1)
    try:
        torch.save({"state_dict": ldm, "global_step": 4999}, control)
        save_file(
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                "first_stage_model.decoder.conv_in.weight": torch.zeros(512, 4, 3, 3),
                "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
            },
            str(checkpoint),
        )
        folder_paths.filename_list_cache.clear()
        valid, error, outputs, node_errors = asyncio.run(validate("sd15", prompt, None))
        assert valid, (error, node_errors)
        assert set(outputs) == {"11", "12"}
        loader = comfyui["nodes"].NODE_CLASS_MAPPINGS[prompt["13"]["class_type"]]
        loaded = loader.execute(**prompt["13"]["inputs"]).result[0]
        assert isinstance(loaded, pack_module(comfyui["nodes"], "control").PromptDiffusionControl)
    finally:
        checkpoint.unlink(missing_ok=True)
        control.unlink(missing_ok=True)
        folder_paths.filename_list_cache.clear()


def test_ui_conversion_reports_unknown_node_types(nodes_module):
    runner = load_runner()
    ui = json.loads((TEMPLATES / f"{EXAMPLES[0].title}.json").read_text())
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
        "4": {
            "class_type": "PDiff_PromptDiffusionPreview",
            "inputs": {"example_source": ["2", 0], "example_target": ["3", 0], "query": ["1", 0], "result": ["1", 0]},
        },
    }
    with pytest.raises(
        runner.NodeFailure, match=r"node 4 \(PDiff_PromptDiffusionPreview\) failed: ValueError: batches"
    ):
        runner.run(failing, comfyui)
