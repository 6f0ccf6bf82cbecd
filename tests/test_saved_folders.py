"""What the project writes loads under both library sets CI tests (the pinned one and the newest
releases): special-token ids inside the vocabulary, tokenizers in both file formats, and a folder saved
under one set generating the same image under the other."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextModel

from conftest import ROOT
from pdiff_core.pipeline import PromptDiffusionPipeline
from pdiff_core.text_encoder import INDEX, prefix_saved_text_encoder
from pdiff_core.tokenizer import read_clip_vocab

EMBEDDED_MODEL = ROOT / "pdiff_core" / "assets" / "pdiff-toyworld"
SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
# The other library set's Python (scripts/test.sh sets it when it runs the suite in both).
OTHER_PYTHON = os.environ.get("PDIFF_OTHER_PYTHON")


def generate_and_save(folder: Path, save_to: Optional[Path] = None) -> np.ndarray:
    """An image from the pipeline folder; with `save_to`, the pipeline is saved again there."""
    rng = np.random.default_rng(0)
    src, tgt, query = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3))
    pipe = PromptDiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red sphere and a blue cube",
        example_pair=(src, tgt),
        query=query,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    if save_to is not None:
        pipe.save_pretrained(str(save_to))
    return image


def assert_text_encoder_fits_tokenizer(folder: Path):
    config = json.loads((folder / "text_encoder" / "config.json").read_text())
    vocab, _ = read_clip_vocab(folder / "tokenizer")
    expected = (vocab["<|startoftext|>"], vocab["<|endoftext|>"], vocab["<|endoftext|>"])
    assert tuple(config[k] for k in SPECIAL_IDS) == expected
    assert max(expected) < config["vocab_size"] == len(vocab)


def test_the_embedded_models_text_encoder_names_its_tokenizers_special_tokens():
    assert_text_encoder_fits_tokenizer(EMBEDDED_MODEL)


def test_a_saved_pipeline_holds_both_tokenizer_formats_and_in_vocabulary_ids(tiny_pipeline, tmp_path):
    # A text encoder config carrying SD1.5's CLIP ids (as the embedded model's once did), saved again.
    for name, sd_id in zip(SPECIAL_IDS, (49406, 49407, 1)):
        setattr(tiny_pipeline.text_encoder.config, name, sd_id)
    tiny_pipeline.save_pretrained(str(tmp_path / "saved"))
    assert_text_encoder_fits_tokenizer(tmp_path / "saved")
    assert all((tmp_path / "saved" / "tokenizer" / name).is_file() for name in ("vocab.json", "merges.txt"))
    assert all(
        key.startswith("text_model.") for key in load_file(tmp_path / "saved" / "text_encoder" / "model.safetensors")
    )


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, torch.float32),
        ({"torch_dtype": torch.bfloat16}, torch.bfloat16),
        ({"dtype": torch.bfloat16}, torch.bfloat16),
    ],
)
def test_an_fp16_folder_loads_in_one_dtype_either_keyword_naming_it(tiny_pipeline, tmp_path, kwargs, expected):
    # transformers 5 alone would load the text encoder in float16 and diffusers the rest in float32.
    tiny_pipeline.to(torch.float16).save_pretrained(str(tmp_path))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dtype.*deprecated")
        pipe = PromptDiffusionPipeline.from_pretrained(str(tmp_path), **kwargs)
    components = ("text_encoder", "unet", "vae", "controlnet")
    assert {name: getattr(pipe, name).dtype for name in components} == dict.fromkeys(components, expected)


def test_text_encoder_weights_renamed_in_shards_load_back_unchanged(tiny_pipeline, tmp_path):
    """transformers 5 saves a freshly built CLIPTextModel without the `text_model.` prefix; renamed (files
    and shard index), the weights load back exactly under whichever transformers runs."""
    encoder = CLIPTextModel(tiny_pipeline.text_encoder.config).eval()  # built from scratch, as training does
    encoder.save_pretrained(str(tmp_path), max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / INDEX).is_file()
    prefix_saved_text_encoder(tmp_path)
    assert all(key.startswith("text_model.") for key in json.loads((tmp_path / INDEX).read_text())["weight_map"])
    loaded = CLIPTextModel.from_pretrained(str(tmp_path)).eval()
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).last_hidden_state, encoder(ids).last_hidden_state, atol=0, rtol=0)


@pytest.mark.skipif(not OTHER_PYTHON, reason="PDIFF_OTHER_PYTHON is not set (scripts/test.sh sets it)")
def test_a_folder_saved_under_one_library_set_generates_the_same_image_under_the_other(tiny_pipeline_dir, tmp_path):
    here = generate_and_save(tiny_pipeline_dir, save_to=tmp_path / "saved-here")
    # This file run as a script by the other set's Python: load what this set saved, generate, save again.
    subprocess.run(
        [
            OTHER_PYTHON,
            __file__,
            str(tmp_path / "saved-here"),
            str(tmp_path / "there.npy"),
            str(tmp_path / "saved-there"),
        ],
        cwd=ROOT,
        check=True,
        timeout=300,
    )
    there = np.load(tmp_path / "there.npy")
    back = generate_and_save(tmp_path / "saved-there")
    assert here.std() > 0.05  # a real image, not a constant that a broken load could also give
    # Same torch in both sets: only the libraries' own arithmetic may differ.
    np.testing.assert_allclose(there, here, atol=1 / 255)
    np.testing.assert_allclose(back, here, atol=1 / 255)


if __name__ == "__main__":
    torch.set_num_threads(1)
    np.save(sys.argv[2], generate_and_save(Path(sys.argv[1]), save_to=Path(sys.argv[3])))
