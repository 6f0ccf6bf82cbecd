"""End-to-end training on CPU with the tiny preset: learning, exact resume, two processes, outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import pytest
import torch

from conftest import launch_two_cpu_processes
from pdiff_core.checkpoints import read_controlnet
from pdiff_core.data import DatasetFormatError
from pdiff_core.pipeline import PromptDiffusionPipeline
from test_training_support import make_dataset
from training.config import load_config
from training.dataset import collate
from training.train import METRICS_FILE, Trainer, main

CONFIG = """\
data:
  root: {root}
  resolution: 32
model:
  preset: tiny
  tokenizer_vocab_size: 600
train:
  output_dir: {out}
  max_steps: 4
  batch_size: 2
  checkpoint_every: 2
  log_every: 1
validation:
  every: 0
  samples: 0
  inference_steps: 2
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", groups=4, items=3, resolution=32)


def _config_file(tmp_path: Path, data: Path, out: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG.format(root=data, out=out))
    return path


def _losses(out: Path) -> List[float]:
    records = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    return [r["loss"] for r in records]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_goes_down_on_a_fixed_batch(tmp_path: Path, data: Path, prediction_type: str) -> None:
    config = load_config(
        _config_file(tmp_path, data, tmp_path / "run"),
        ["train.train_modules=[controlnet,unet,text_encoder]", f"model.prediction_type={prediction_type}"],
    )
    trainer = Trainer(config)
    trainer.setup()
    # The pipeline it saves samples with the same parameterisation.
    assert trainer.components["scheduler"].config.prediction_type == prediction_type
    batch = collate([trainer.dataset[k] for k in range(2)])
    optimizer = torch.optim.AdamW(trainer.params, lr=1e-3)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)  # same noise, timesteps and dropout draws every step: a fixed problem
        loss = trainer.loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], losses


def test_resume_continues_exactly(tmp_path: Path, data: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    config = _config_file(tmp_path, data, straight)
    Trainer(load_config(config, ["validation.samples=1"])).run()
    Trainer(load_config(config, [f"train.output_dir={split}", "train.max_steps=2"])).run()
    Trainer(load_config(config, [f"train.output_dir={split}"]), resume="latest").run()
    assert len(_losses(straight)) == 4
    assert _losses(split) == _losses(straight)  # bit-exact floats
    # Going back to an earlier checkpoint by path redoes the later steps identically.
    reference = _losses(straight)
    Trainer(load_config(config), resume=str(straight / "checkpoints" / "checkpoint-000002")).run()
    assert _losses(straight) == reference

    # The final outputs load as the nodes and the pipeline load them.
    assert (straight / "validation" / "step-000004.png").is_file()
    pipe = PromptDiffusionPipeline.from_pretrained(straight / "pipeline")
    controlnet = read_controlnet(straight / "controlnet.safetensors").build()
    for name, tensor in controlnet.state_dict().items():
        assert torch.equal(tensor, pipe.controlnet.state_dict()[name]), name
    resumed = PromptDiffusionPipeline.from_pretrained(split / "pipeline")
    assert all(torch.equal(v, resumed.controlnet.state_dict()[k]) for k, v in pipe.controlnet.state_dict().items())


def test_resuming_with_a_longer_cosine_schedule_says_it_is_not_the_longer_run(
    tmp_path: Path, data: Path, caplog
) -> None:
    config = _config_file(tmp_path, data, tmp_path / "cosine")
    Trainer(load_config(config, ["train.max_steps=2", "optim.lr_scheduler=cosine"])).run()
    with caplog.at_level("WARNING"):
        Trainer(load_config(config, ["train.max_steps=3", "optim.lr_scheduler=cosine"]), resume="latest").run()
    assert (
        "train.max_steps changed from 2 to 3 on resume: the 'cosine' learning-rate schedule depends on max_steps"
        in caplog.text
    )
    caplog.clear()
    Trainer(load_config(config, [f"train.output_dir={tmp_path / 'constant'}", "train.max_steps=2"])).run()
    with caplog.at_level("WARNING"):
        Trainer(
            load_config(config, [f"train.output_dir={tmp_path / 'constant'}", "train.max_steps=3"]), resume="latest"
        ).run()
    assert "max_steps changed" not in caplog.text  # a constant rate does not depend on it


def test_vae_stage_writes_a_vae_with_a_fitted_scale(tmp_path: Path, data: Path, monkeypatch) -> None:
    out = tmp_path / "vae-run"
    config = load_config(
        _config_file(tmp_path, data, out),
        ["train.stage=vae", "train.max_steps=2", "vae.scaling_batches=1", "validation.samples=2"],
    )
    assert Trainer(config).run() == out / "vae"
    saved = json.loads((out / "vae" / "config.json").read_text())
    assert saved["scaling_factor"] != 0.18215 and saved["scaling_factor"] > 0
    assert (out / "validation" / "step-000002.png").is_file()

    # Decoder-only fine-tuning of that VAE: the encoder and the scale (the latent space) stay, and the
    # decoder learns the posterior mode (what a diffusion model works on), never a noisy sample.
    from diffusers import AutoencoderKL
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda *a, **k: pytest.fail("sampled the posterior"))

    tuned_out = tmp_path / "decoder-run"
    tuned = load_config(
        _config_file(tmp_path, data, tuned_out),
        [
            "train.stage=vae",
            "train.max_steps=2",
            "validation.samples=0",
            f"model.vae={out / 'vae'}",
            "vae.decoder_only=true",
            "vae.fit_scaling_factor=false",
            "optim.learning_rate=1e-2",
        ],
    )
    Trainer(tuned).run()
    before, after = (AutoencoderKL.from_pretrained(folder / "vae") for folder in (out, tuned_out))
    assert after.config.scaling_factor == before.config.scaling_factor
    for name, param in before.state_dict().items():
        same = torch.equal(param, after.state_dict()[name])
        assert same == (not name.startswith(("decoder.", "post_quant_conv."))), name
    with pytest.raises(ValueError, match=r"vae\.fit_scaling_factor: must be false with vae\.decoder_only"):
        load_config(_config_file(tmp_path, data, tuned_out), ["vae.decoder_only=true"])
    # A preset's VAE is random: its decoder has no trained encoder to learn.
    with pytest.raises(ValueError, match=r"vae\.decoder_only: needs a trained encoder.*model\.vae"):
        load_config(
            _config_file(tmp_path, data, tuned_out),
            ["train.stage=vae", "vae.decoder_only=true", "vae.fit_scaling_factor=false"],
        )


def test_two_cpu_processes_agree_on_weights(tmp_path: Path, data: Path) -> None:
    out = tmp_path / "ddp"
    config = _config_file(tmp_path, data, out)
    args = ["--config", str(config), "--override", "train.max_steps=2", "train.cpu=true"]
    result = launch_two_cpu_processes("training.train", args)
    assert result.returncode == 0, result.stderr[-4000:]
    sums = [(out / "checksums" / f"rank-{r}.txt").read_text() for r in range(2)]
    assert sums[0] == sums[1]
    assert (out / "controlnet.safetensors").is_file()


def test_cli_reports_bad_config_and_data(tmp_path: Path, data: Path, caplog) -> None:
    config = _config_file(tmp_path, data, tmp_path / "bad")
    assert main(["--config", str(config), "--override", "train.max_stepz=3"]) == 2
    assert "unknown config key 'train.max_stepz'" in caplog.text
    assert main(["--config", str(config), "--override", "data.tasks=[depth,normal]"]) == 2
    assert "data.tasks" in caplog.text and "unknown task 'normal'" in caplog.text
    assert main(["--config", str(config), "--override", f"data.root={tmp_path / 'nowhere'}"]) == 2
    assert f"data.root: {tmp_path / 'nowhere' / 'dataset.json'} (a pdiff-groups dataset" in caplog.text
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert main(["--config", str(config), "--resume", "latest"]) == 2
    assert "no checkpoint in" in caplog.text


def test_ema_resumes_exactly_from_safetensors_and_never_runs_a_pickle(tmp_path: Path, data: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from payloads import plant_pickle
    from training.ema_state import EMA_FILE, LEGACY_EMA_FILE, EMAStateError

    straight, split = tmp_path / "straight", tmp_path / "split"
    config = _config_file(tmp_path, data, straight)
    ema = ["train.ema=true", "train.ema_decay=0.5"]  # a short average that differs from the raw weights
    Trainer(load_config(config, ema)).run()
    Trainer(load_config(config, [*ema, f"train.output_dir={split}", "train.max_steps=2"])).run()
    checkpoint = split / "checkpoints" / "checkpoint-000002"
    assert (checkpoint / EMA_FILE).is_file() and not list(checkpoint.glob("*.pkl"))[1:]  # only accelerate's RNG file
    Trainer(load_config(config, [*ema, f"train.output_dir={split}"]), resume=str(checkpoint)).run()
    assert load_file(straight / "controlnet.safetensors").keys() == load_file(split / "controlnet.safetensors").keys()
    for name, tensor in load_file(straight / "controlnet.safetensors").items():
        assert torch.equal(tensor, load_file(split / "controlnet.safetensors")[name]), name

    # A checkpoint carrying accelerate's EMA pickle instead (older runs): read only as plain tensors.
    with safe_open(str(checkpoint / EMA_FILE), "pt") as f:
        legacy_state = {**json.loads(f.metadata()["ema"]), "shadow_params": [f.get_tensor(k) for k in sorted(f.keys())]}
    (checkpoint / EMA_FILE).unlink()
    torch.save(legacy_state, checkpoint / LEGACY_EMA_FILE)
    (split / "controlnet.safetensors").unlink()
    Trainer(load_config(config, [*ema, f"train.output_dir={split}"]), resume=str(checkpoint)).run()
    for name, tensor in load_file(straight / "controlnet.safetensors").items():
        assert torch.equal(tensor, load_file(split / "controlnet.safetensors")[name]), name
    marker = tmp_path / "marker"
    legacy = plant_pickle(checkpoint / LEGACY_EMA_FILE, marker)
    with pytest.raises(EMAStateError) as info:
        Trainer(load_config(config, [*ema, f"train.output_dir={split}"]), resume=str(checkpoint)).run()
    assert not marker.exists()
    assert str(legacy) in str(info.value)


def test_a_folder_holding_a_run_is_refused_unless_resumed_or_overwritten(tmp_path: Path, data: Path, caplog) -> None:
    from training.run_folder import CheckpointRestoreError

    out = tmp_path / "run"
    config = _config_file(tmp_path, data, out)
    Trainer(load_config(config, ["train.max_steps=2"])).run()
    before = (out / "controlnet.safetensors").read_bytes()
    with pytest.raises(CheckpointRestoreError, match=f"train.output_dir {out} holds a run"):
        Trainer(load_config(config, ["train.max_steps=2"]))
    assert main(["--config", str(config), "--override", "train.max_steps=2"]) == 2
    assert "--overwrite" in caplog.text
    assert (out / "controlnet.safetensors").read_bytes() == before  # untouched

    # --overwrite starts afresh: no step, checkpoint or metric of the old run remains.
    assert (
        main(["--config", str(config), "--override", "train.max_steps=4", "train.checkpoint_every=4", "--overwrite"])
        == 0
    )
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint-000004"]
    assert len(_losses(out)) == 4


def test_a_broken_latest_checkpoint_is_named_and_resume_falls_back_to_the_previous(
    tmp_path: Path, data: Path, caplog
) -> None:
    from training.run_folder import CheckpointRestoreError

    straight, split = tmp_path / "straight", tmp_path / "split"
    config = _config_file(tmp_path, data, straight)
    Trainer(load_config(config)).run()
    Trainer(load_config(config, [f"train.output_dir={split}", "train.max_steps=3", "train.checkpoint_every=1"])).run()
    latest = split / "checkpoints" / "checkpoint-000003"
    broken = latest / "random_states_0.pkl"
    broken.write_bytes(broken.read_bytes()[:100])  # accelerate itself only logged this and went on, inexact
    with pytest.raises(CheckpointRestoreError, match=str(broken)):
        Trainer(load_config(config, [f"train.output_dir={split}"]), resume=str(latest))
    # A kill while appending left half a metrics line; resume must not trip on it.
    with (split / METRICS_FILE).open("a") as f:
        f.write('{"step": 4, "lo')
    Trainer(load_config(config, [f"train.output_dir={split}"]), resume="latest").run()
    assert f"skipping {latest}" in caplog.text and "checkpoint-000002" in caplog.text
    assert _losses(split) == _losses(straight)  # exact from the previous checkpoint

    with pytest.raises(ValueError, match=r"train.train_modules: \['controlnet', 'unet'\], but checkpoint"):
        Trainer(
            load_config(config, [f"train.output_dir={split}", "train.train_modules=[controlnet,unet]"]), resume="latest"
        ).run()

    from training.run_folder import find_checkpoint

    caplog.clear()
    find_checkpoint(split, str(split / "checkpoints" / "checkpoint-000002"))
    assert "later checkpoints ['checkpoint-000003', 'checkpoint-000004']" in caplog.text

    weights = split / "checkpoints" / "checkpoint-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointRestoreError, match=str(weights)):
        Trainer(load_config(config, [f"train.output_dir={split}"]), resume=str(weights.parent))


def test_a_truncated_dataset_image_stops_the_run_before_step_one(tmp_path: Path, data: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    image = sorted(copy.rglob("*.png"))[3]
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])
    out = tmp_path / "run"
    with pytest.raises(DatasetFormatError, match=str(image)):
        Trainer(load_config(_config_file(tmp_path, copy, out)))
    assert not (out / METRICS_FILE).exists()
