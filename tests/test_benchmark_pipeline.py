"""Smoke test of benchmarks/bench_pipeline.py: it runs at the tiny size and prints a ratio line."""

import re


def test_bench_runs_tiny_and_prints_a_ratio(run_benchmark):
    out = run_benchmark(
        "bench_pipeline",
        ["--preset", "tiny", "--steps", "2", "--batch", "1", "--repeats", "1", "--warmup", "0", "--threads", "1"],
    )
    assert re.search(r"^ratio \(images/s, ours / peer\): \d+\.\d+$", out, re.M)
    # Same weights, same hint: the two pipelines agree more closely than with a different query.
    numbers = re.search(
        r"ours vs peer: latents (\S+) .*pixels (\S+) / 255; vs a peer given another query: latents (\S+), ", out
    )
    same, pixels, other = map(float, numbers.groups())
    assert same < 1e-4 < other and pixels < 0.5
