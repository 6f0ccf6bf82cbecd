"""Smoke test of benchmarks/bench_comfyui.py: it runs on the tiny pipeline and the two paths agree."""

import importlib.util
import re
import sys
from pathlib import Path

import torch

from comfy_harness import comfyui_copy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_comfyui.py"


def test_bench_runs_tiny_and_prints_a_ratio(capsys, monkeypatch, tmp_path_factory, tiny_pipeline_dir):
    # The ComfyUI copy is made once per process: make it here, in a folder that outlives the script's
    # temporary one, for the other ComfyUI tests of this session.
    comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)
    spec = importlib.util.spec_from_file_location("bench_comfyui", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_comfyui", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--model", str(tiny_pipeline_dir), "--steps", "3", "--batch", "2", "--repeats", "1",
                           "--warmup", "0", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"^ratio \(images/s, ours / comfyui\): \d+\.\d+$", out, re.M)
    agreement = re.search(r"ours vs comfyui: (\S+) / 255 \(comfyui at seed 1 vs seed 0: (\S+) / 255\)", out)
    same, other = map(float, agreement.groups())
    assert same < 0.01 and other > 1.0
