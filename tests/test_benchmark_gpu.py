"""benchmarks/bench_gpu.py on a CPU: its stages run at the tiny size and write their JSON; the
deadline skips stages with a reason instead of running into the session's time limit."""

import json


def test_bench_gpu_runs_every_stage_on_cpu_and_writes_json(run_benchmark, tmp_path):
    path = tmp_path / "gpu.json"
    out = run_benchmark("bench_gpu", ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "1",
                                      "--batches", "1", "--repeats", "1", "--no-peer-compile", "--threads", "1",
                                      "--json", str(path)])
    data = json.loads(path.read_text())
    stage = data["batch1"]
    assert set(stage["eager"]) == {"ours", "peer", "sd_plain"} and stage["diffusers_controlnet_cost"] > 0
    # Same weights and hint: the peer agrees with ours; off CUDA the fast path is the eager loop itself.
    assert stage["max_pixel_diff_peer_vs_ours_eager"] < 0.5
    assert stage["fast"]["fast_enabled"] is False and stage["fast"]["max_pixel_diff_fast_vs_ours_eager"] == 0
    assert set(data["batch1_fast_variants"]) == {"graph_only", "fused_channels_last"}
    assert data["batch1_fast_variants"]["graph_only"]["peer"] == "eager"
    assert "peer_compiled" not in data
    assert "batch1: ours fast" in out and "diffusers ControlNet pipeline time / plain SD pipeline time" in out


def test_bench_gpu_skips_stages_past_its_deadline(run_benchmark, tmp_path):
    path = tmp_path / "gpu.json"
    run_benchmark("bench_gpu", ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--batches", "1,2",
                                "--threads", "1", "--deadline-s", "0.001", "--json", str(path)])
    data = json.loads(path.read_text())
    assert "deadline" in data["batch1"]["skipped"] and "deadline" in data["batch2"]["skipped"]
    assert data["build_s"] > 0 and "peer_compiled" not in data
