"""The user path with a folder of own photos: check, annotate, check, fine-tune from the shipped
configs (the embedded model for real; the SD1.5 one on stand-in files of the names it expects)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pdiff_core.checkpoints import load_controlnet, save_controlnet
from pdiff_core.cli import main as pdiff
from pdiff_core.defaults import DEFAULT_MODEL
from pdiff_core.model import PromptDiffusionControlNetModel
from pdiff_core.pipeline import PromptDiffusionPipeline
from test_training_support import make_dataset, shapes_image
from training import annotate
from training.config import load_config
from training.train import build_training_components
from training.train import main as train

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "training" / "configs"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five photos as a user has them: three with their own sidecar caption, one greyscale, two uncaptioned."""
    root = tmp_path_factory.mktemp("photos") / "my-photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        image = shapes_image(rng, 48)
        Image.fromarray(image[..., 1] if i == 3 else image).save(root / f"IMG_{i}.jpg")
        if i < 3:
            (root / f"IMG_{i}.txt").write_text(f"photo number {i} of boxes")
    return root


def test_embedded_finetune_from_a_folder_of_photos(photos: Path, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    monkeypatch.chdir(REPO)  # the config names the embedded model relative to the repository root
    assert pdiff(["data", "check", str(photos)]) == 0
    assert "groups: 5: 0 of 2+ images" in capsys.readouterr().out
    data = tmp_path / "data"
    # depth is in the default maps and has no classical stand-in: --fallback goes on without it.
    assert (
        annotate.main(["--input", str(photos), "--out", str(data), "--fallback", "--resolution", "64", "--no-progress"])
        == 0
    )
    assert pdiff(["data", "check", str(data)]) == 0
    assert "tasks training draws (all of the maps): hed, seg, inv_hed, inv_seg" in capsys.readouterr().out

    out = tmp_path / "run"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert (
            train(
                [
                    "--config",
                    str(CONFIGS / "finetune_photos_embedded.yaml"),
                    "--override",
                    f"data.root={data}",
                    f"train.output_dir={out}",
                    "train.max_steps=2",
                    "train.batch_size=2",
                    "train.checkpoint_every=2",
                    "validation.samples=2",
                    "validation.inference_steps=2",
                    "train.cpu=true",
                ]
            )
            == 0
        )
    assert "1 process(es), NO, device cpu" in caplog.text
    assert (
        f"control branch: {Path('pdiff_core/assets/pdiff-toyworld') / 'controlnet'} (the pipeline's own)" in caplog.text
    )
    assert not [r for r in caplog.records if r.name.startswith("accelerate.checkpointing")]
    pipe = PromptDiffusionPipeline.from_pretrained(str(out / "pipeline"))
    assert pipe.scheduler.config.prediction_type == "v_prediction"  # the embedded model's, kept
    # Two steps at 2e-5 leave the trained control branch nearly as it was, far from a fresh copy of the UNet.
    trained = load_controlnet(DEFAULT_MODEL / "controlnet").state_dict()
    tuned = load_file(out / "controlnet.safetensors")
    fresh = PromptDiffusionControlNetModel.from_unet(pipe.unet).state_dict()
    key = "controlnet_down_blocks.0.weight"  # a zero conv: zero in a fresh copy, trained in the embedded model
    assert torch.allclose(tuned[key].float(), trained[key].float(), atol=1e-3)
    assert not torch.allclose(fresh[key], trained[key].float(), atol=1e-3)


def test_pretrained_alone_keeps_the_pipelines_controlnet_and_controlnet_still_wins(tmp_path: Path) -> None:
    config = load_config(CONFIGS / "finetune_photos_embedded.yaml", [f"model.pretrained={DEFAULT_MODEL}"])
    kept = build_training_components(config, None, None)["controlnet"].state_dict()
    trained = load_controlnet(DEFAULT_MODEL / "controlnet").state_dict()
    assert all(torch.equal(kept[k], trained[k]) for k in trained)
    other = PromptDiffusionControlNetModel.from_unet(build_training_components(config, None, None)["unet"]).to(
        torch.float32
    )
    save_controlnet(other, tmp_path / "other.safetensors")
    config.model.controlnet = str(tmp_path / "other.safetensors")
    chosen = build_training_components(config, None, None)["controlnet"].state_dict()
    assert torch.equal(chosen["controlnet_down_blocks.0.weight"], other.state_dict()["controlnet_down_blocks.0.weight"])


def test_sd15_config_names_exactly_the_files_it_needs(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "data" / "my-photos", groups=3, items=1, resolution=32)
    assert train(["--config", str(CONFIGS / "finetune_photos_sd15.yaml"), "--check"]) == 2
    missing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("missing: ")]
    assert missing == [
        "missing: model.pretrained: models/stable-diffusion-v1-5/unet (diffusers subfolder)",
        "missing: model.pretrained: models/stable-diffusion-v1-5/vae (diffusers subfolder)",
        "missing: model.pretrained: models/stable-diffusion-v1-5/text_encoder (diffusers subfolder)",
        "missing: model.pretrained: models/stable-diffusion-v1-5/tokenizer (diffusers subfolder)",
        "missing: model.controlnet: models/network-step=04999.ckpt (a Prompt Diffusion ControlNet checkpoint or folder)",
    ]
    assert data.is_dir() and not (tmp_path / "runs").exists()  # --check writes nothing


def test_sd15_config_trains_on_stand_ins_of_its_files(tmp_path: Path, monkeypatch, tiny_pipeline_dir: Path) -> None:
    """The recipe as shipped (pretrained folder + a separate ControlNet checkpoint, control branch
    only, gradient checkpointing) on tiny stand-ins put where the config looks for SD1.5 and the
    authors' checkpoint; only size and precision are overridden for the CPU."""
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "data" / "my-photos", groups=3, items=1, resolution=32)
    (tmp_path / "models").symlink_to(tmp_path / "stand-ins")
    (tmp_path / "stand-ins").mkdir()
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / "stand-ins" / "stable-diffusion-v1-5" / sub).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "stand-ins" / "stable-diffusion-v1-5" / sub).symlink_to(tiny_pipeline_dir / sub)
    # The authors' checkpoint layout: a torch.save'd {"state_dict": {"control_model.*": ...}}.
    ldm = save_controlnet(load_controlnet(tiny_pipeline_dir / "controlnet"), tmp_path / "ldm.safetensors", layout="ldm")
    torch.save({"state_dict": load_file(ldm)}, tmp_path / "stand-ins" / "network-step=04999.ckpt")
    overrides = [
        "data.resolution=32",
        "train.mixed_precision='no'",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.gradient_accumulation_steps=1",
        "validation.samples=1",
        "validation.inference_steps=2",
        "train.cpu=true",
    ]
    config = CONFIGS / "finetune_photos_sd15.yaml"
    assert train(["--config", str(config), "--check", "--override", *overrides]) == 0
    assert train(["--config", str(config), "--override", *overrides]) == 0
    assert (tmp_path / "runs" / "my-photos-sd15" / "controlnet.safetensors").is_file()
