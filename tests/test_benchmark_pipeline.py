"""Smoke test of benchmarks/bench_pipeline.py: it runs at the tiny size and prints a ratio line."""

import importlib.util
import re
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pipeline.py"


def test_bench_runs_tiny_and_prints_a_ratio(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_pipeline", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_pipeline", bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--preset", "tiny", "--steps", "2", "--batch", "1", "--repeats", "1", "--warmup", "0",
                           "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert re.search(r"^ratio \(images/s, ours / peer\): \d+\.\d+$", out, re.M)
    # Same weights, same hint: the two pipelines agree more closely than with a different query.
    numbers = re.search(r"ours vs peer: latents (\S+) .*pixels (\S+) / 255; vs a peer given another query: latents (\S+), ", out)
    same, pixels, other = map(float, numbers.groups())
    assert same < 1e-4 < other and pixels < 0.5
