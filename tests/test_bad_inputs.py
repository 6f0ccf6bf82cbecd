"""Ordinary mistakes end in one line that names the file or flag and what was expected (exit 2),
never a traceback and never a silently wrong result. One row per class of mistake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pdiff_core import cli
from pdiff_core.checkpoints import CONFIG_METADATA_KEY, read_controlnet, save_controlnet
from pdiff_core.image_io import read_image
from reference_cldm import ldm_control_shapes
from test_checkpoints import TINY, ldm_checkpoint


@pytest.fixture
def never_loads(monkeypatch):
    """Fail the test if a model is loaded: these mistakes must be caught before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(cli, "load_pipeline", refuse)


def run_cli(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]  # argparse puts its usage lines before it
    assert line.startswith(f"pdiff {argv[0]}: error: "), err
    return line


def generate_args(model, inputs, out, **flags):
    args = {
        "--example-source": inputs["source"],
        "--example-target": inputs["target"],
        "--query": inputs["query"],
        "--out": out,
        "--model": model,
        "--steps": 2,
        **flags,
    }
    return ["generate"] + [str(x) for kv in args.items() for x in kv if x is not None]


# --------------------------------------------------------------------------- generate: flags and files


def _text_as_png(tmp):
    path = tmp / "notes.png"
    path.write_text("not an image")
    return {"--query": path}, f"--query: {path} cannot be read as an image"


def _missing_query(tmp):
    return {"--query": tmp / "nowhere.png"}, f"--query: no such image file: {tmp / 'nowhere.png'}"


def _text_extension(tmp):
    return {"--out": tmp / "result.txt"}, f"--out: {tmp / 'result.txt'}: .txt is not an image format"


def _out_under_a_file(tmp):
    (tmp / "afile").write_text("x")
    return {"--out": tmp / "afile" / "r.png"}, "cannot write in"


GENERATE_MISTAKES = {
    "--steps 0": lambda tmp: ({"--steps": 0}, "argument --steps: must be a whole number >= 1, got 0"),
    "--steps -1": lambda tmp: ({"--steps": -1}, "argument --steps: must be a whole number >= 1, got -1"),
    "--guidance nan": lambda tmp: ({"--guidance": "nan"}, "argument --guidance: must be a finite number"),
    "--guidance inf": lambda tmp: ({"--guidance": "inf"}, "argument --guidance: must be a finite number"),
    "huge --seed": lambda tmp: ({"--seed": 2**70}, "argument --seed: must be between 0 and 2**64 - 1"),
    "--height without --width": lambda tmp: ({"--height": 64}, "--height and --width go together"),
    "a text file named .png": _text_as_png,
    "a missing input": _missing_query,
    "--out .txt": _text_extension,
    "--out in an unwritable place": _out_under_a_file,
    "--model that does not exist": lambda tmp: ({"--model": "./no-such-model"}, "--model: no such pipeline folder"),
}


@pytest.mark.parametrize("mistake", sorted(GENERATE_MISTAKES))
def test_generate_refuses_before_loading_the_model(mistake, tiny_pipeline_dir, inputs, tmp_path, capsys, never_loads):
    flags, expected = GENERATE_MISTAKES[mistake](tmp_path)
    err = run_cli(generate_args(tiny_pipeline_dir, inputs, tmp_path / "out.png", **flags), capsys)
    assert expected in err
    assert not (tmp_path / "out.png").exists()


def test_a_size_far_past_the_trained_one_needs_a_flag(tiny_pipeline_dir, inputs, tmp_path, capsys, monkeypatch):
    side = cli.trained_side(tiny_pipeline_dir)
    big = tmp_path / "big.png"
    PIL.Image.new("RGB", (2 * side + 8, 2 * side + 8)).save(big)
    with monkeypatch.context() as patch:
        patch.setattr(cli, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the size check"))
        err = run_cli(generate_args(tiny_pipeline_dir, {**inputs, "query": big}, tmp_path / "out.png"), capsys)
        assert f"--query: {2 * side + 8}x{2 * side + 8} is over 2x the {side}x{side}" in err and "--allow-large" in err
        err = run_cli(
            generate_args(
                tiny_pipeline_dir, inputs, tmp_path / "out.png", **{"--height": 4 * side, "--width": 4 * side}
            ),
            capsys,
        )
        assert "--allow-large" in err
    # Asked for, it runs (the inputs resized to a size the tiny model handles in a second).
    cli.main(
        generate_args(
            tiny_pipeline_dir,
            {**inputs, "query": big},
            tmp_path / "out.png",
            **{"--allow-large": None, "--height": 64, "--width": 64},
        )
    )
    assert PIL.Image.open(tmp_path / "out.png").size == (64, 64)


def test_output_is_written_whole_or_not_at_all(tiny_pipeline_dir, inputs, tmp_path, monkeypatch):
    out = tmp_path / "keep.png"
    PIL.Image.new("RGB", (8, 8), "red").save(out)
    before = out.read_bytes()

    def crash(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise OSError("disk full")

    monkeypatch.setattr(PIL.Image.Image, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        cli.main(generate_args(tiny_pipeline_dir, inputs, out, **{"--overwrite": None}))
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


# --------------------------------------------------------------------------- checkpoints


def _tiny_controlnet_file(tmp_path, tiny_pipeline_dir) -> Path:
    return save_controlnet(read_controlnet(tiny_pipeline_dir).build(), tmp_path / "cn.safetensors")


def _empty(path):
    path.write_bytes(b"")


def _truncated(path):
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(path):
    path.write_bytes(b"\x00" * 64)


@pytest.mark.parametrize("damage", [_empty, _truncated, _garbage], ids=["empty", "truncated", "garbage"])
def test_a_damaged_safetensors_is_named(damage, tiny_pipeline_dir, tmp_path, capsys):
    path = _tiny_controlnet_file(tmp_path, tiny_pipeline_dir)
    damage(path)
    err = run_cli(["convert", path, tmp_path / "out"], capsys)
    assert str(path) in err and "not a readable .safetensors file" in err


def test_a_config_that_contradicts_the_weights_is_refused_before_building(
    tiny_pipeline_dir, tmp_path, capsys, monkeypatch
):
    """The reported file asked for block_out_channels [16384]*3 in its metadata and ate 3 GB."""
    path = _tiny_controlnet_file(tmp_path, tiny_pipeline_dir)
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()[CONFIG_METADATA_KEY])
    config["block_out_channels"] = [16384] * len(config["block_out_channels"])
    save_file(load_file(path), str(path), metadata={CONFIG_METADATA_KEY: json.dumps(config)})
    built = []
    import pdiff_core.checkpoints as checkpoints

    original = checkpoints.PromptDiffusionControlNetModel

    def counting(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(checkpoints, "PromptDiffusionControlNetModel", counting)
    err = run_cli(["convert", path, tmp_path / "out"], capsys)
    assert str(path) in err and "do not have the shapes its config gives" in err and "16384" in err
    assert built == ["meta"]  # only the shape check was built, on no memory
    cli.main(["info", str(path)])
    info = json.loads(capsys.readouterr().out)
    assert info["usable"] is False and "16384" in info["error"]


def test_a_broken_config_json_is_named(tiny_pipeline_dir, tmp_path, capsys):
    folder = tmp_path / "controlnet"
    shutil.copytree(tiny_pipeline_dir / "controlnet", folder)
    (folder / "config.json").write_text("{not json")
    err = run_cli(["convert", folder, tmp_path / "out.safetensors"], capsys)
    assert str(folder / "config.json") in err and "not valid JSON" in err


def test_an_ldm_checkpoint_with_a_wrong_shape_is_named(tmp_path, capsys):
    weights = ldm_checkpoint()
    key = "control_model.input_blocks.1.0.in_layers.2.weight"
    weights[key] = torch.zeros(7, *weights[key].shape[1:])
    path = tmp_path / "network.safetensors"
    save_file(weights, str(path))
    err = run_cli(["convert", path, tmp_path / "out", "--attention-head-dim", "2"], capsys)
    assert str(path) in err


def test_a_controlnet_of_another_size_is_named(tiny_pipeline_dir, inputs, tmp_path, capsys):
    # The authors' layout at the tiny size, but for a base model with 64-wide text embeddings.
    shapes = ldm_control_shapes(**{**TINY, "context_dim": 64})
    path = tmp_path / "ldm.safetensors"
    save_file({f"control_model.{k}": torch.zeros(shape) for k, shape in shapes.items()}, str(path))
    err = run_cli(generate_args(tiny_pipeline_dir, inputs, tmp_path / "out.png", **{"--controlnet": path}), capsys)
    assert f"--controlnet {path} does not fit --model" in err


# --------------------------------------------------------------------------- eval flags


@pytest.mark.parametrize(
    "flag,value",
    [("--batch-size", 0), ("--batch-size", -1), ("--groups-limit", 0), ("--steps", 0), ("--guidance", "nan")],
)
def test_eval_flags_are_checked_at_parse_time(flag, value, tmp_path, capsys):
    err = run_cli(["eval-toyworld", "--out", tmp_path / "e", flag, value], capsys)
    assert f"argument {flag}:" in err


# --------------------------------------------------------------------------- the pipeline API


PIPELINE_MISTAKES = {
    "NaN image": ({"query": torch.full((3, 64, 64), float("nan"))}, "query: the image holds NaN"),
    "guidance nan": ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number"),
    "guidance inf": ({"guidance_scale": float("inf")}, "guidance_scale must be a finite number"),
    "eta nan": ({"eta": float("nan")}, "eta must be a finite number"),
    "conditioning scale nan": (
        {"controlnet_conditioning_scale": float("nan")},
        "controlnet_conditioning_scale must be",
    ),
    "steps 0": ({"num_inference_steps": 0}, "num_inference_steps must be a whole number >= 1"),
    "steps -1": ({"num_inference_steps": -1}, "num_inference_steps must be a whole number >= 1"),
    "height without width": ({"height": 64}, "pass height and width together"),
}


@pytest.mark.parametrize("mistake", sorted(PIPELINE_MISTAKES))
def test_pipeline_refuses_inputs_that_would_give_noise_or_nan(mistake, tiny_pipeline):
    kwargs, expected = PIPELINE_MISTAKES[mistake]
    image = torch.rand(3, 64, 64)
    call = {"example_pair": (image, image), "query": image, "num_inference_steps": 1, **kwargs}
    with pytest.raises(ValueError, match=expected):
        tiny_pipeline("a prompt", **call)


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit depth map (mode I;16) used to turn all white through convert("RGB")."""
    depth = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    PIL.Image.fromarray(depth).save(path)
    assert PIL.Image.open(path).mode.startswith("I")
    expected = np.round(depth / 65535 * 255).astype(np.uint8)  # [0, 1, 128, 255]
    assert np.array_equal(np.asarray(read_image(path))[..., 0], expected)
    from pdiff_core.data import load_rgb
    from pdiff_core.pipeline import _to_unit_tensor

    assert np.array_equal(load_rgb(path)[..., 1], expected)
    tensor = _to_unit_tensor(PIL.Image.open(path), "query")
    assert torch.allclose(tensor[0, 2, 0], torch.from_numpy(expected).float() / 255)


def test_a_failed_eval_run_does_not_block_the_fixed_rerun(tmp_path):
    from pdiff_core.evaluation.runner import ResultStore

    ResultStore(tmp_path, {"model": "a", "steps": 0})  # failed before its first sample
    store = ResultStore(tmp_path, {"model": "a", "steps": 20})  # the rerun with the mistake fixed
    store.append({"key": "k", "image": "k.png"})
    with pytest.raises(ValueError, match=f"{tmp_path} holds results of another run"):
        ResultStore(tmp_path, {"model": "b", "steps": 20})


def test_convert_checks_its_output_before_reading_and_writes_whole_files(
    tiny_pipeline_dir, tmp_path, capsys, monkeypatch
):
    import pdiff_core.checkpoints as checkpoints

    err = run_cli(["convert", tmp_path / "never-read.ckpt", tmp_path / "folder", "--to", "ldm"], capsys)
    assert f"{tmp_path / 'folder'}: the LDM layout is a single file" in err
    err = run_cli(["convert", tmp_path / "never-read.ckpt", tmp_path / "out.ckpt"], capsys)
    assert "writes weights as .safetensors only" in err

    out = _tiny_controlnet_file(tmp_path, tiny_pipeline_dir)
    before = out.read_bytes()

    def torn(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_file", torn)
    with pytest.raises(OSError, match="disk full"):
        save_controlnet(read_controlnet(tiny_pipeline_dir).build(), out, overwrite=True)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["cn.safetensors"]


def test_a_model_folder_missing_a_weights_file_is_named(tiny_pipeline_dir, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, folder)
    for weights in (folder / "unet").glob("diffusion_pytorch_model.*"):
        weights.unlink()
    err = run_cli(["demo", "--model", folder, "--out", tmp_path / "demo.png", "--steps", 1], capsys)
    assert f"--model {folder}:" in err and "unet" in err


@pytest.mark.parametrize("damage", ["broken index", "text file as image"])
def test_a_broken_examples_folder_is_named(damage, tmp_path, capsys):
    from pdiff_core.demo import EXAMPLES_DIR

    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES_DIR, folder)
    if damage == "broken index":
        (folder / "examples.json").write_text('{"examples": [{"task": "depth"}]}')
        expected = f"{folder / 'examples.json'}: not an examples index"
    else:
        victim = folder / json.loads((folder / "examples.json").read_text())["examples"][0]["query"]
        victim.write_text("not an image")
        expected = f"{victim} cannot be read as an image"
    err = run_cli(["demo", "--examples", folder, "--out", tmp_path / "demo.png"], capsys)
    assert expected in err
