"""The headless runner's workflow handling, without ComfyUI: UI -> API conversion rules and command-line
overrides."""

from __future__ import annotations

import argparse
import json

import pytest

from comfy_harness import load_runner

runner = load_runner()

INPUT_TYPES = {
    "KSampler": {
        "required": {
            "model": ["MODEL", {}],
            "seed": ["INT", {"control_after_generate": True}],
            "steps": ["INT", {}],
            "sampler_name": [["euler", "ddim"], {}],
            "positive": ["CONDITIONING", {}],
        }
    },
    "CLIPTextEncode": {"required": {"text": ["STRING", {"multiline": True}], "clip": ["CLIP", {}]}},
    "Loader": {
        "required": {"name": ["COMBO", {"options": ["a", "b"]}]},
        "optional": {"extra": ["INT", {"forceInput": True}]},
    },
    "LoadImage": {"required": {"image": [["x.png"], {"image_upload": True}]}},
}


def ui_workflow():
    return {
        "nodes": [
            {"id": 1, "type": "Loader", "mode": 0, "widgets_values": ["b"], "outputs": []},
            {
                "id": 2,
                "type": "CLIPTextEncode",
                "mode": 0,
                "title": "positive prompt",
                "widgets_values": ["a cat"],
                "inputs": [{"name": "clip", "type": "CLIP", "link": 10}],
            },
            {
                "id": 3,
                "type": "KSampler",
                "mode": 0,
                "widgets_values": [7, "randomize", 12, "ddim"],
                "inputs": [
                    {"name": "model", "type": "MODEL", "link": 11},
                    {"name": "positive", "type": "CONDITIONING", "link": 12},
                ],
            },
            {"id": 4, "type": "Note", "mode": 0, "widgets_values": ["just a note"]},
            {"id": 5, "type": "LoadImage", "mode": 2, "widgets_values": ["x.png", "image"]},
            {"id": 6, "type": "LoadImage", "mode": 0, "title": "query", "widgets_values": ["x.png", "image"]},
        ],
        "links": [[10, 1, 1, 2, 0, "CLIP"], [11, 1, 0, 3, 0, "MODEL"], [12, 2, 0, 3, 4, "CONDITIONING"]],
    }


def test_ui_to_api_follows_the_frontend_rules():
    prompt = runner.ui_to_api(ui_workflow(), INPUT_TYPES.get)
    assert prompt == {
        "1": {"inputs": {"name": "b"}, "class_type": "Loader", "_meta": {"title": "Loader"}},
        "2": {
            "inputs": {"text": "a cat", "clip": ["1", 1]},
            "class_type": "CLIPTextEncode",
            "_meta": {"title": "positive prompt"},
        },
        "3": {
            "inputs": {"model": ["1", 0], "seed": 7, "steps": 12, "sampler_name": "ddim", "positive": ["2", 0]},
            "class_type": "KSampler",
            "_meta": {"title": "KSampler"},
        },
        "6": {"inputs": {"image": "x.png"}, "class_type": "LoadImage", "_meta": {"title": "query"}},
    }


def test_ui_to_api_refuses_bypassed_and_unknown_nodes():
    workflow = ui_workflow()
    workflow["nodes"][0]["mode"] = 4
    with pytest.raises(runner.WorkflowError, match="node 1 .*bypassed"):
        runner.ui_to_api(workflow, INPUT_TYPES.get)
    with pytest.raises(runner.WorkflowError, match="unknown node type 'Loader'"):
        runner.ui_to_api(ui_workflow(), {k: v for k, v in INPUT_TYPES.items() if k != "Loader"}.get)


def overrides(**kwargs):
    defaults = {"image": [], "prompt": None, "negative": None, "seed": None, "set": []}
    return argparse.Namespace(**{**defaults, **kwargs})


def test_overrides_address_nodes_by_title_or_id(tmp_path):
    image = tmp_path / "q.png"
    image.write_bytes(b"png")
    prompt = runner.ui_to_api(ui_workflow(), INPUT_TYPES.get)
    runner.apply_overrides(
        prompt,
        overrides(
            image=[f"query={image}"],
            prompt="a dog",
            seed=99,
            set=["3.steps=30", "KSampler.sampler_name=euler", "1.name=a"],
        ),
    )
    assert prompt["6"]["inputs"]["image"] == str(image)
    assert prompt["2"]["inputs"]["text"] == "a dog"
    assert prompt["3"]["inputs"]["seed"] == 99 and prompt["3"]["inputs"]["steps"] == 30
    assert prompt["3"]["inputs"]["sampler_name"] == "euler" and prompt["1"]["inputs"]["name"] == "a"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"negative": "blurry"}, "no node with id or title 'negative prompt'"),
        ({"image": ["missing"]}, "expected NAME=VALUE"),
        ({"set": ["steps=3"]}, "expected NODE.INPUT=VALUE"),
    ],
)
def test_override_errors_say_what_is_wrong(kwargs, message):
    with pytest.raises(runner.WorkflowError, match=message):
        runner.apply_overrides(runner.ui_to_api(ui_workflow(), INPUT_TYPES.get), overrides(**kwargs))


def test_main_exits_1_for_a_failed_node_and_lets_other_errors_through(tmp_path, monkeypatch, capsys):
    workflow = tmp_path / "one_node.json"
    workflow.write_text(json.dumps({"4": {"class_type": "PDiff_PromptDiffusionPreview", "inputs": {}}}))
    argv = [str(workflow), "--comfyui", str(tmp_path), "--output", str(tmp_path / "out")]
    monkeypatch.setattr(runner, "boot_comfyui", lambda *args: {"nodes": None})

    def node_fails(prompt, comfy):
        raise runner.NodeFailure("node 4 (PDiff_PromptDiffusionPreview) failed: ValueError: batches")

    monkeypatch.setattr(runner, "run", node_fails)
    assert runner.main(argv) == 1
    assert "node 4 (PDiff_PromptDiffusionPreview) failed" in capsys.readouterr().err

    def boot_fails(*args):
        raise RuntimeError("CUDA error: out of memory")

    # Not a node's failure: it must surface with its traceback, not as "node failed".
    monkeypatch.setattr(runner, "boot_comfyui", boot_fails)
    with pytest.raises(RuntimeError, match="CUDA error"):
        runner.main(argv)


@pytest.mark.parametrize(
    "content, argv_extra, message",
    [
        (None, [], "workflow file not found"),
        ('{"1": {"class_type": "KSampler", "inp', [], "is not a JSON file"),
        ('[{"class_type": "KSampler"}]', [], "holds list, not a workflow"),
        ('{"1": {"class_type": "KSampler"}}', [], "entry '1' is not a node with 'class_type' and 'inputs'"),
        (
            '{"1": {"class_type": "LoadImage", "inputs": {}}}',
            ["--image", "query=/no/such.png"],
            "--image query: file not found",
        ),
    ],
)
def test_main_exits_2_for_a_bad_workflow_file_before_booting_comfyui(
    tmp_path, monkeypatch, capsys, content, argv_extra, message
):
    workflow = tmp_path / "workflow.json"
    if content is not None:
        workflow.write_text(content)

    def boot(*args):
        raise AssertionError("ComfyUI booted before the workflow was checked")

    monkeypatch.setattr(runner, "boot_comfyui", boot)
    assert runner.main([str(workflow), "--comfyui", str(tmp_path), "--output", str(tmp_path / "out"), *argv_extra]) == 2
    assert message in capsys.readouterr().err


def test_main_removes_its_temporary_input_folder_and_lists_previews(tmp_path, monkeypatch, capsys):
    workflow = tmp_path / "one_node.json"
    workflow.write_text(json.dumps({"4": {"class_type": "PDiff_PromptDiffusionPreview", "inputs": {}}}))
    input_dirs = []

    def boot(comfy_dir, cpu, output_dir, input_dir):
        input_dirs.append(input_dir)
        assert input_dir.is_dir()
        return {"nodes": None}

    def run(prompt, comfy):
        return {
            "outputs": {
                "11": {"images": [{"filename": "r.png", "subfolder": "pdiff", "type": "output"}]},
                "12": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]},
            }
        }

    monkeypatch.setattr(runner, "boot_comfyui", boot)
    monkeypatch.setattr(runner, "run", run)
    out = tmp_path / "out"
    assert runner.main([str(workflow), "--comfyui", str(tmp_path), "--output", str(out)]) == 0
    assert len(input_dirs) == 1 and not input_dirs[0].exists()
    summary = json.loads((out / "outputs.json").read_text())
    assert summary["files"] == [str(out / "pdiff" / "r.png")] and summary["previews"] == [str(out / "temp" / "p.png")]
