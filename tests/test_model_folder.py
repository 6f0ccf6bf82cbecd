"""A pipeline folder is data: no component outside the allow-list, no Python file, whoever loads it."""

import json
import shutil

import pytest

from payloads import plant_module
from pdiff_core.cli import DEFAULT_MODEL, main
from pdiff_core.model_folder import ModelFolderError, check_model_folder
from pdiff_core.pipeline import PromptDiffusionPipeline


@pytest.fixture
def folder(tiny_pipeline_dir, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, copy)
    return copy


def test_the_embedded_and_the_test_models_pass(tiny_pipeline_dir):
    check_model_folder(tiny_pipeline_dir)
    check_model_folder(DEFAULT_MODEL)


def test_a_module_beside_a_component_is_never_imported(folder, tmp_path):
    """The reported attack: model_index.json names unet/evilmod.py, which diffusers imported."""
    marker = tmp_path / "marker"
    module = plant_module(folder, "unet", marker)
    with pytest.raises(ModelFolderError) as info:
        PromptDiffusionPipeline.from_pretrained(str(folder))
    assert not marker.exists()
    assert str(module) in str(info.value)


def test_a_component_class_outside_the_allow_list_is_refused(folder, tmp_path, monkeypatch):
    """Without any file in the folder: the named module is importable from elsewhere on sys.path."""
    marker = tmp_path / "marker"
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()
    plant_module(folder, "unet", marker).rename(elsewhere / "evilmod.py")
    monkeypatch.syspath_prepend(str(elsewhere))
    with pytest.raises(ModelFolderError) as info:
        PromptDiffusionPipeline.from_pretrained(str(folder))
    assert not marker.exists()
    message = str(info.value)
    assert str(folder / "model_index.json") in message and "evilmod" in message and "UNet2DConditionModel" in message


def test_unknown_components_are_refused_and_unused_ones_pass(folder):
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index["safety_checker"] = [None, None]
    index_file.write_text(json.dumps(index))
    check_model_folder(folder)
    index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
    index_file.write_text(json.dumps(index))
    with pytest.raises(ModelFolderError, match="unknown component 'image_encoder'"):
        check_model_folder(folder)


def test_cli_refuses_a_model_folder_with_code(folder, tmp_path, capsys):
    marker = tmp_path / "marker"
    module = plant_module(folder, "controlnet", marker)
    with pytest.raises(SystemExit) as info:
        main(["demo", "--model", str(folder), "--out", str(tmp_path / "demo.png"), "--steps", "1"])
    assert info.value.code == 2
    assert not marker.exists() and not (tmp_path / "demo.png").exists()
    assert str(module) in capsys.readouterr().err


def test_cli_names_a_model_folder_that_does_not_exist(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--model", "./no-such-model", "--out", str(tmp_path / "demo.png")])
    assert info.value.code == 2
    assert "--model: no such pipeline folder: no-such-model" in capsys.readouterr().err
