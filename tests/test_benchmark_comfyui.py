"""Smoke test of benchmarks/bench_comfyui.py: it runs on the tiny pipeline and the two paths agree."""

import re

from comfy_harness import comfyui_copy


def test_bench_runs_tiny_and_prints_a_ratio(run_benchmark, tmp_path_factory, tiny_pipeline_dir):
    # The ComfyUI copy is made once per process: make it here, in a folder that outlives the script's
    # temporary one, for the other ComfyUI tests of this session.
    comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)
    out = run_benchmark("bench_comfyui", ["--model", str(tiny_pipeline_dir), "--steps", "3", "--batch", "2",
                                          "--repeats", "1", "--warmup", "0", "--threads", "1"])
    assert re.search(r"^ratio \(images/s, ours / comfyui\): \d+\.\d+$", out, re.M)
    agreement = re.search(r"ours vs comfyui: (\S+) / 255 \(comfyui at seed 1 vs seed 0: (\S+) / 255\)", out)
    same, other = map(float, agreement.groups())
    assert same < 0.01 and other > 1.0
