"""benchmarks/bench_gpu.py on a CPU: its stages run at the tiny size and write their JSON; the
deadline skips stages with a reason instead of running into the session's time limit."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parents[1]
GPU_SESSION = str(ROOT / "benchmarks" / "gpu_session.sh")


def run_bench_gpu(run_benchmark, path: Path, argv: List[str]) -> str:
    """bench_gpu at the tiny size, fp32 on the CPU with one thread, writing its JSON to `path`."""
    cpu = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--threads", "1", "--json", str(path)]
    return run_benchmark("bench_gpu", [*cpu, *argv])


def run_gpu_session_dry_run(out: Path, timeout: float, **env: str) -> subprocess.CompletedProcess:
    """gpu_session.sh --dry-run writing into `out`, with `env` added to this process's environment."""
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", GPU_SESSION, "--dry-run"], env=env, capture_output=True, text=True, timeout=timeout)


def test_bench_gpu_runs_every_stage_on_cpu_and_writes_json(run_benchmark, tmp_path):
    path = tmp_path / "gpu.json"
    out = run_bench_gpu(
        run_benchmark,
        path,
        ["--steps", "1", "--batches", "1", "--repeats", "1", "--stages", "batches,graph_only,channels_last"],
    )
    data = json.loads(path.read_text())
    stage = data["batch1"]
    assert set(stage["eager"]) == {"ours", "peer", "sd_plain"} and stage["diffusers_controlnet_cost"] > 0
    # Same weights and hint: the peer agrees with ours; off CUDA the fast path is the eager loop itself.
    assert stage["max_pixel_diff_peer_vs_ours_eager"] < 0.5
    assert stage["fast"]["fast_enabled"] is False and stage["fast"]["max_pixel_diff_fast_vs_ours_eager"] == 0
    assert set(data["batch1_fast_variants"]) == {"graph_only", "channels_last"}
    assert data["batch1_fast_variants"]["graph_only"]["peer"] == "eager"
    assert "peer_compiled" not in data
    assert "batch1: ours fast" in out and "diffusers ControlNet pipeline time / plain SD pipeline time" in out


def test_bench_gpu_skips_stages_past_its_deadline(run_benchmark, tmp_path):
    path = tmp_path / "gpu.json"
    run_bench_gpu(run_benchmark, path, ["--batches", "1,2", "--deadline-at", "1"])
    data = json.loads(path.read_text())
    assert "deadline" in data["batch1"]["skipped"] and "deadline" in data["batch2"]["skipped"]
    assert data["build_s"] > 0 and "peer_compiled" not in data


def test_gpu_session_dry_run_writes_results_and_a_log_per_step(tmp_path):
    """The script the GPU run executes, end to end on a CPU (tiny preset): the same steps and files."""
    out = tmp_path / "out"
    done = run_gpu_session_dry_run(out, timeout=600)
    assert done.returncode == 0, done.stderr
    steps = (out / "steps.txt").read_text()
    assert "step env_bench_gpu: exit 0" in steps and "step bench_gpu: exit 0" in steps
    data = json.loads((out / "bench_gpu.json").read_text())
    assert {"batch1", "batch2", "batch1_fast_variants"} <= set(data) and data["config"]["device"] == "cpu"
    assert "batch2: ours fast" in (out / "bench_gpu.headline.txt").read_text() and "batch2: ours fast" in done.stdout
    # The ComfyUI step: ComfyUI and its packages are installed here, so it runs rather than skips.
    assert "step bench_control_cost: exit 0" in steps
    cost = json.loads((out / "bench_control_cost.json").read_text())
    assert set(cost["rows"]) == {"comfyui_plain", "comfyui_control", "diffusers_plain", "diffusers_controlnet"}
    assert cost["config"]["device"] == "cpu" and "verdict: " in done.stdout


def test_gpu_session_skips_the_comfyui_step_with_a_reason_without_comfyui(tmp_path):
    out = tmp_path / "out"
    # GPU_SESSION_SECONDS: bench_gpu skips its stages (or is stopped): only the skip is under test
    done = run_gpu_session_dry_run(out, timeout=300, COMFYUI_PATH=str(tmp_path / "nowhere"), GPU_SESSION_SECONDS="20")
    assert done.returncode == 0, done.stderr
    steps = (out / "steps.txt").read_text()
    assert f"step bench_control_cost: skipped: no ComfyUI at {tmp_path / 'nowhere'}" in steps
    assert not (out / "bench_control_cost.json").exists()


def test_gpu_session_refuses_unknown_arguments_and_a_missing_out(tmp_path):
    wrong = subprocess.run(
        ["bash", GPU_SESSION, "--dryrun"], env={**os.environ, "OUT": str(tmp_path)}, capture_output=True, text=True
    )
    assert wrong.returncode == 2 and "usage" in wrong.stderr
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    missing = subprocess.run(["bash", GPU_SESSION], env=env, capture_output=True, text=True)
    assert missing.returncode != 0 and "set OUT" in missing.stderr


def test_bench_gpu_runs_a_later_stage_alone_against_an_eager_reference(run_benchmark, tmp_path):
    path = tmp_path / "gpu.json"
    run_bench_gpu(run_benchmark, path, ["--steps", "1", "--batches", "1", "--repeats", "1", "--stages", "graph_only"])
    data = json.loads(path.read_text())
    assert "batch1" not in data and data["batch1_fast_variants"]["graph_only"]["max_pixel_diff_fast_vs_ours_eager"] == 0
    assert (tmp_path / "gpu.headline.txt").read_text().startswith(data["env"]["device"])
