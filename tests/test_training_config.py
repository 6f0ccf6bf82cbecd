"""Config files load into dataclasses; mistakes name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = "data:\n  root: /data/x\nmodel:\n  preset: tiny\n"


def test_shipped_run_configs_load() -> None:
    paper = load_config(CONFIGS / "paper_sd15.yaml")
    assert (paper.data.resolution, paper.train.batch_size, paper.train.max_steps, paper.optim.learning_rate) == (
        256,
        64,
        5000,
        1e-4,
    )
    assert paper.model.pretrained and paper.train.mixed_precision == "no"
    assert load_config(CONFIGS / "embedded_small_vae.yaml").train.stage == "vae"
    embedded = load_config(CONFIGS / "embedded_small.yaml")
    assert set(embedded.train.train_modules) == {"controlnet", "unet", "text_encoder"}
    assert embedded.model.prediction_type == "v_prediction"
    continued = load_config(CONFIGS / "embedded_continue.yaml")
    assert continued.model.pretrained == "pdiff_core/assets/pdiff-toyworld" and continued.data.forward_prompt == "mixed"
    # the unseen tasks stay unseen: no trained task uses their maps
    assert not {"normal", "albedo", "gray"} & {task.removeprefix("inv_") for task in continued.data.tasks}


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + "train:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}.*unknown config key 'train.max_stepz'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer'"):
        load_config(_write(tmp_path, BASE + "trainer:\n  x: 1\n"))


def test_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size: expected int, got 'many'"):
        load_config(_write(tmp_path, BASE + "train:\n  batch_size: many\n"))


def test_overrides_parse_values_and_reject_unknown_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    config = load_config(
        path,
        [
            "train.max_steps=7",
            "optim.learning_rate=3e-4",
            "data.tasks=[depth,inv_hed]",
            "train.train_modules=controlnet,unet",
        ],
    )
    assert config.train.max_steps == 7 and config.optim.learning_rate == 3e-4
    assert config.data.tasks == ["depth", "inv_hed"] and config.train.train_modules == ["controlnet", "unet"]
    with pytest.raises(ConfigError, match=r"unknown config key 'train.nope'"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(ConfigError, match=r"expected section.key=value"):
        load_config(path, ["max_steps"])


def test_cross_field_checks_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.pretrained: set exactly one"):
        load_config(_write(tmp_path, "data:\n  root: /x\n"))
    with pytest.raises(ConfigError, match=r"train\.train_modules: unknown module\(s\) \['vae'\]"):
        load_config(_write(tmp_path, BASE + "train:\n  train_modules: [controlnet, vae]\n"))
    with pytest.raises(ConfigError, match=r"data\.resolution: must be a multiple of 8"):
        load_config(_write(tmp_path, BASE.replace("root: /data/x", "root: /data/x\n  resolution: 30")))
    with pytest.raises(ConfigError, match=r"model\.prediction_type: expected one of .*got 'sample'"):
        load_config(_write(tmp_path, BASE + "  prediction_type: sample\n"))
    with pytest.raises(ConfigError, match=r"train\.snr_gamma: must be positive or null, got 0"):
        load_config(_write(tmp_path, BASE + "train:\n  snr_gamma: 0\n"))
    with pytest.raises(ConfigError, match=r"config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_json_configs_load(tmp_path: Path) -> None:
    path = _write(
        tmp_path, '{"data": {"root": "/d"}, "model": {"preset": "tiny"}, "train": {"stage": "vae"}}', "c.json"
    )
    assert load_config(path).train.stage == "vae"
