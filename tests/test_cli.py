import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file

from pdiff_core.checkpoints import read_state_dict
from pdiff_core.cli import main
from test_checkpoints import HEADS, ldm_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def image_args(inputs):
    """generate's three image flags, from the `inputs` fixture."""
    flags = {"--example-source": "source", "--example-target": "target", "--query": "query"}
    return [part for flag, name in flags.items() for part in (flag, str(inputs[name]))]


def generate(model, inputs, out, *extra):
    settings = ["--prompt", "a red sphere", "--out", str(out), "--model", str(model), "--steps", "3"]
    return main(["generate", *image_args(inputs), *settings, *extra])


def test_generate_writes_an_image_and_is_seeded(tiny_pipeline_dir, inputs, tmp_path, caplog):
    generate(tiny_pipeline_dir, inputs, tmp_path / "a.png", "--seed", "1")
    # --fast on a CPU: said in the log, and the eager loop's very image.
    generate(tiny_pipeline_dir, inputs, tmp_path / "b.png", "--seed", "1", "--fast", "--device", "cpu")
    generate(tiny_pipeline_dir, inputs, tmp_path / "c.png", "--seed", "2", "--scheduler", "unipc")
    a, b, c = (np.asarray(PIL.Image.open(tmp_path / f"{n}.png")) for n in "abc")
    assert a.shape == (64, 64, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert "not CUDA; keeping the eager loop" in caplog.text


def test_generate_takes_any_photo_size_at_the_nearest_multiple_of_8(tiny_pipeline_dir, inputs, tmp_path, caplog):
    PIL.Image.new("RGB", (61, 43), (200, 30, 30)).save(inputs["query"])  # a photo's odd size
    with caplog.at_level(logging.INFO):
        assert generate(tiny_pipeline_dir, inputs, tmp_path / "a.png") == 0
    assert PIL.Image.open(tmp_path / "a.png").size == (64, 40)
    assert "generating at 64x40: the query's 61x43 to the nearest multiple of 8" in caplog.text
    assert generate(tiny_pipeline_dir, inputs, tmp_path / "b.png", "--height", "32", "--width", "48") == 0
    assert PIL.Image.open(tmp_path / "b.png").size == (48, 32)
    with pytest.raises(SystemExit):
        generate(tiny_pipeline_dir, inputs, tmp_path / "c.png", "--height", "32")


def test_generate_never_overwrites_without_asking(tiny_pipeline_dir, inputs, tmp_path, capsys):
    out = tmp_path / "mine.png"
    out.write_bytes(b"a user's file")
    with pytest.raises(SystemExit) as exit_info:
        generate(tiny_pipeline_dir, inputs, out)
    assert exit_info.value.code == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"a user's file"
    generate(tiny_pipeline_dir, inputs, out, "--overwrite")
    assert PIL.Image.open(out).size == (64, 64)


def test_generate_names_a_missing_input(tiny_pipeline_dir, inputs, tmp_path, capsys):
    inputs["query"] = tmp_path / "nope.png"
    with pytest.raises(SystemExit):
        generate(tiny_pipeline_dir, inputs, tmp_path / "x.png")
    assert "--query: no such image file" in capsys.readouterr().err


def test_generate_with_a_controlnet_from_an_ldm_checkpoint(tiny_pipeline_dir, inputs, tmp_path):
    converted = tmp_path / "converted.safetensors"
    main(["convert", str(tiny_pipeline_dir / "controlnet"), str(converted), "--to", "ldm"])
    generate(tiny_pipeline_dir, inputs, tmp_path / "a.png", "--controlnet", str(converted))
    generate(tiny_pipeline_dir, inputs, tmp_path / "b.png")
    assert np.array_equal(
        np.asarray(PIL.Image.open(tmp_path / "a.png")), np.asarray(PIL.Image.open(tmp_path / "b.png"))
    )


def test_convert_round_trip_and_info(tmp_path, capsys):
    ldm = tmp_path / "official.safetensors"
    save_file(ldm_checkpoint(), str(ldm))
    main(["convert", str(ldm), str(tmp_path / "diffusers"), "--attention-head-dim", str(HEADS)])
    assert (tmp_path / "diffusers" / "config.json").is_file()
    main(["convert", str(tmp_path / "diffusers"), str(tmp_path / "back.safetensors"), "--to", "ldm"])
    original = {k: v for k, v in read_state_dict(ldm).items() if k.startswith("control_model.")}
    back = read_state_dict(tmp_path / "back.safetensors")
    assert set(back) == set(original) and all(torch.equal(back[k], original[k]) for k in original)
    capsys.readouterr()
    main(["info", str(ldm)])
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "ldm" and info["config"]["block_out_channels"] == [32, 64]


def test_info_describes_a_file_that_is_not_prompt_diffusion(tmp_path, capsys):
    sd = {k: v for k, v in ldm_checkpoint().items() if not k.startswith("control_model.")}
    save_file(sd, str(tmp_path / "sd.safetensors"))
    main(["info", str(tmp_path / "sd.safetensors")])
    assert "Stable Diffusion checkpoint without a control model" in json.loads(capsys.readouterr().out)["kind"]


def test_demo_draws_one_row_per_bundled_example(tiny_pipeline_dir, tmp_path):
    from pdiff_core.demo import load_examples

    out = tmp_path / "demo.png"
    main(["demo", "--model", str(tiny_pipeline_dir), "--out", str(out), "--steps", "2"])
    examples = load_examples()
    assert {e.seen for e in examples} == {True, False}  # trained and unseen tasks
    grid = PIL.Image.open(out)
    assert grid.size == (150 + 5 * 132, 24 + len(examples) * 132)
    # the result column holds a generated image, not the white background
    result_tile = np.asarray(grid)[24 : 24 + 128, 150 + 3 * 132 : 150 + 3 * 132 + 128]
    assert result_tile.std() > 1.0


def test_verbose_shows_the_traceback_of_a_reported_error(tiny_pipeline_dir, inputs, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="pdiff")
    inputs["query"] = tmp_path / "nope.png"
    for verbose in (False, True):
        caplog.clear()
        with pytest.raises(SystemExit):
            main([*(["-v"] if verbose else []), "generate", *image_args(inputs), "--out", str(tmp_path / "x.png")])
        tracebacks = [r.exc_info for r in caplog.records if r.exc_info]
        assert bool(tracebacks) == verbose
    assert tracebacks[0][0] is FileNotFoundError


# Hides the optional extras (eval: torchmetrics, torch-fidelity, scipy, scikit-image; train: tensorboard,
# controlnet-aux) in a fresh interpreter, as if `pip install` had been run without them.
WITHOUT_EXTRAS = """
import sys
# A None entry is how an absent module looks to both `import` and importlib.util.find_spec.
for name in ("torchmetrics", "torch_fidelity", "scipy", "skimage", "tensorboard", "controlnet_aux"):
    sys.modules[name] = None
try:
    import torchmetrics
except ModuleNotFoundError:
    pass
else:
    sys.exit("torchmetrics is still importable: the test would not see the bug")
from pdiff_core.cli import main
for command in sys.argv[1:]:
    try:
        main([command, "--help"])
    except SystemExit as done:
        if done.code:
            raise
"""


def test_cli_runs_without_the_eval_and_train_extras():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRAS, "generate", "eval", "convert"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for command in ("generate", "eval", "convert"):
        assert f"usage: pdiff {command}" in result.stdout


def test_generate_takes_the_models_own_guidance_unless_given_one(tiny_pipeline_dir, inputs, tmp_path):
    import shutil

    from pdiff_core.model_info import write_model_info

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    write_model_info(model, ["depth"], 1.0)  # guidance 1 skips the unconditional pass: same image as --guidance 1
    generate(model, inputs, tmp_path / "own.png")
    generate(model, inputs, tmp_path / "one.png", "--guidance", "1")
    generate(model, inputs, tmp_path / "nine.png", "--guidance", "9")
    own, one, nine = (np.asarray(PIL.Image.open(tmp_path / f"{n}.png")) for n in ("own", "one", "nine"))
    assert np.array_equal(own, one) and not np.array_equal(own, nine)
