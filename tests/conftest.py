"""Shared fixtures: a tiny random-weight Prompt Diffusion pipeline saved as a diffusers folder, and a
runner for the benchmark scripts."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, List, Sequence

import numpy as np
import PIL.Image
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The repo root is also the ComfyUI pack (it has an __init__.py), so tests run in pytest's
# importlib mode and put the root (pdiff_core, training) and this folder (helpers) on the path.
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from pdiff_core.pipeline import PromptDiffusionPipeline  # noqa: E402
from pdiff_core.presets import build_preset_components  # noqa: E402
from pdiff_core.tokenizer import train_clip_tokenizer  # noqa: E402

CAPTIONS = [
    "a red sphere and a blue cube on a checkered floor",
    "a green cone on a striped floor",
    "a yellow cylinder beside a purple sphere on a plain floor",
    "two shiny white boxes on a noisy ground",
]


def randomize_zero_parameters(module: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Give zero-initialised layers (ControlNet zero convs) random values, so that the control
    actually changes the output in tests."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def make_tiny_pipeline(tokenizer_dir: Path, seed: int = 0) -> PromptDiffusionPipeline:
    from transformers import CLIPTokenizer

    components = build_preset_components("tiny", CLIPTokenizer.from_pretrained(str(tokenizer_dir)), seed=seed)
    randomize_zero_parameters(components["controlnet"], seed)
    pipe = PromptDiffusionPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def eval_argv(command: str, model: Path, data: Path, out: Path, more: Sequence[str] = ()) -> List[str]:
    """`pdiff eval` or `eval-toyworld`'s arguments: the model, the data, the results folder, then `more`."""
    return [command, "--model", str(model), "--data", str(data), "--out", str(out), *more]


def heldout_toy_data(tmp_path_factory: pytest.TempPathFactory, maps: Sequence[str]) -> Path:
    """Three held-out toy-world groups of two 32 px items with `maps`, for the evaluation tests."""
    from pdiff_core.evaluation.toyworld import HELDOUT_SEED
    from pdiff_core.toyworld import generate

    root = tmp_path_factory.mktemp("toy") / "heldout"
    generate(root, 3, items_per_group=2, resolution=32, seed=HELDOUT_SEED, maps=maps, progress=False, workers=1)
    return root


def launch_two_cpu_processes(module: str, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module> <args>` from the repo root under `accelerate launch` with two CPU processes
    (training/configs/accelerate_cpu_ddp.yaml), one thread each."""
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    config = ROOT / "training" / "configs" / "accelerate_cpu_ddp.yaml"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m", module, *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def inputs(tmp_path) -> dict:
    """Three random 64 x 64 PNGs (example source, example target, query) for the CLI's image flags."""
    rng = np.random.default_rng(0)
    paths = {}
    for name in ("source", "target", "query"):
        paths[name] = tmp_path / f"{name}.png"
        PIL.Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(paths[name])
    return paths


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the test models are tiny, and on a shared 2-core machine a second
    spinning thread only waits (measured 10-20x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_benchmark(monkeypatch, capsys) -> Callable[[str, List[str]], str]:
    """Run `benchmarks/<name>.py`'s main(argv) in this process and return what it printed."""

    def run(name: str, argv: List[str]) -> str:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up there
        spec.loader.exec_module(module)
        threads = torch.get_num_threads()
        try:
            assert module.main(argv) == 0
        finally:
            torch.set_num_threads(threads)  # the scripts set their own
        return capsys.readouterr().out

    return run


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer")
    train_clip_tokenizer(CAPTIONS * 20, out, vocab_size=600)
    return out


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A tiny random-weight pipeline folder (model_index.json, unet/, vae/, controlnet/, ...)."""
    out = tmp_path_factory.mktemp("pipelines") / "tiny-pdiff"
    make_tiny_pipeline(tiny_tokenizer_dir).save_pretrained(str(out))
    return out


@pytest.fixture
def tiny_pipeline(tiny_pipeline_dir) -> PromptDiffusionPipeline:
    pipe = PromptDiffusionPipeline.from_pretrained(str(tiny_pipeline_dir))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def keep_only_tokenizer_json(tokenizer_dir: Path) -> None:
    """Rewrite a CLIP tokenizer folder as transformers 5 saves one: tokenizer.json, no vocab.json or merges.txt."""
    from transformers import CLIPTokenizerFast

    fast = CLIPTokenizerFast.from_pretrained(str(tokenizer_dir))
    shutil.rmtree(tokenizer_dir)
    fast.save_pretrained(str(tokenizer_dir))
    for name in ("vocab.json", "merges.txt"):
        (tokenizer_dir / name).unlink(missing_ok=True)
    assert (tokenizer_dir / "tokenizer.json").is_file()


@pytest.fixture(scope="session")
def json_tokenizer_pipeline_dir(tmp_path_factory, tiny_pipeline_dir) -> Path:
    """The tiny pipeline folder with its tokenizer as transformers 5 saves it (tokenizer.json only)."""
    out = tmp_path_factory.mktemp("pipelines") / "tiny-pdiff-tokenizer-json"
    shutil.copytree(tiny_pipeline_dir, out)
    keep_only_tokenizer_json(out / "tokenizer")
    return out
