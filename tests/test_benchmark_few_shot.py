"""Smoke test of benchmarks/bench_few_shot.py: it runs the tiny model at K = 1, 2 and prints ratio lines."""

import re


def test_bench_few_shot_runs_and_prints_a_ratio_per_setting(run_benchmark, tiny_pipeline_dir):
    out = run_benchmark(
        "bench_few_shot",
        [
            "--model",
            str(tiny_pipeline_dir),
            "--shots",
            "1,2",
            "--steps",
            "2",
            "--batch",
            "1",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ],
    )
    ratios = re.findall(r"^ratio \(images/s, (.+) / K=1\): \d+\.\d+$", out, re.M)
    assert ratios == ["K=1", "K=2 residuals", "K=2 embedding"]
