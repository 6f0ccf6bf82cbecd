"""scripts/average_pipelines.py: the mean of runs continued from one model, as one pipeline."""

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import CLIPTokenizer

from comfy_harness import ROOT, load_file_module
from conftest import make_tiny_pipeline
from pdiff_core.model_info import read_model_info, write_model_info
from pdiff_core.pipeline import PromptDiffusionPipeline
from pdiff_core.presets import PRESETS, build_preset_components


def _script():
    return load_file_module("pdiff_average_pipelines", ROOT / "scripts" / "average_pipelines.py")


def _saved(pipe: PromptDiffusionPipeline, folder: Path) -> Path:
    pipe.save_pretrained(str(folder))
    return folder


def test_weights_are_the_mean_and_the_rest_is_the_first_pipelines(tmp_path, tiny_tokenizer_dir):
    folders = [_saved(make_tiny_pipeline(tiny_tokenizer_dir, seed=k), tmp_path / f"run{k}") for k in range(3)]
    write_model_info(folders[0], ["depth", "inv_depth"], 1.5)
    out = _script().average_pipelines(folders, tmp_path / "soup")

    runs = [PromptDiffusionPipeline.from_pretrained(str(f)) for f in folders]
    soup = PromptDiffusionPipeline.from_pretrained(str(out))
    for name, param in (
        ("unet", lambda p: p.unet.conv_in.weight),
        ("controlnet", lambda p: p.controlnet.controlnet_mid_block.weight),
        ("text_encoder", lambda p: p.text_encoder.get_input_embeddings().weight),
        ("vae", lambda p: p.vae.decoder.conv_out.weight),
    ):
        a, b, c = (param(p).detach() for p in runs)
        assert not torch.equal(a, b), name  # the runs differ, so a copy of one would fail
        torch.testing.assert_close(param(soup).detach(), (a + b + c) / 3, atol=1e-6, rtol=0, msg=name)
    assert read_model_info(out).trained_tasks == ["depth", "inv_depth"]
    assert soup.scheduler.config == runs[0].scheduler.config


def test_other_architectures_and_an_existing_output_are_refused(tmp_path, tiny_tokenizer_dir):
    script = _script()
    tiny = _saved(make_tiny_pipeline(tiny_tokenizer_dir), tmp_path / "tiny")
    wide = dataclasses.replace(PRESETS["tiny"], latent_channels=8)
    components = build_preset_components(wide, CLIPTokenizer.from_pretrained(str(tiny_tokenizer_dir)))
    other = _saved(PromptDiffusionPipeline(**components), tmp_path / "wide")
    with pytest.raises(ValueError, match=r"wide: unet's config differs from .*tiny's"):
        script.average_pipelines([tiny, other], tmp_path / "soup")
    assert not (tmp_path / "soup").exists()
    (tmp_path / "soup").mkdir()
    with pytest.raises(FileExistsError, match="soup already exists"):
        script.average_pipelines([tiny, tiny], tmp_path / "soup")
    with pytest.raises(ValueError, match="two or more"):
        script.average_pipelines([tiny], tmp_path / "soup2")
