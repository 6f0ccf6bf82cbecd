"""The ComfyUI benchmarks on the tiny model: bench_comfyui.py (the pack against our pipeline) runs and the
two paths agree; bench_control_cost.py (what the control adds, ComfyUI against diffusers) measures four
rows, derives its ratios from them, and its paths agree where they compute the same thing."""

import json
import re
import statistics

import pytest

from comfy_harness import comfyui_copy


def test_bench_runs_tiny_and_prints_a_ratio(run_benchmark, tmp_path_factory, tiny_pipeline_dir):
    # The ComfyUI copy is made once per process: make it here, in a folder that outlives the script's
    # temporary one, for the other ComfyUI tests of this session.
    comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)
    out = run_benchmark(
        "bench_comfyui",
        [
            "--model",
            str(tiny_pipeline_dir),
            "--steps",
            "3",
            "--batch",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--threads",
            "1",
        ],
    )
    assert re.search(r"^ratio \(images/s, ours / comfyui\): \d+\.\d+$", out, re.M)
    agreement = re.search(r"ours vs comfyui: (\S+) / 255 \(comfyui at seed 1 vs seed 0: (\S+) / 255\)", out)
    same, other = map(float, agreement.groups())
    assert same < 0.01 and other > 1.0


def test_control_cost_bench_measures_four_rows_and_compares_the_two_overheads(
    run_benchmark, tmp_path, tmp_path_factory, tiny_pipeline_dir
):
    comfyui_copy(tmp_path_factory.mktemp("comfy"), tiny_pipeline_dir)  # as above: one copy for the session
    path = tmp_path / "cost.json"
    out = run_benchmark(
        "bench_control_cost",
        [
            "--preset",
            "tiny",
            "--steps",
            "2",
            "--batch",
            "2",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--breakdown",
            "--json",
            str(path),
        ],
    )
    data = json.loads(path.read_text())
    rows = data["rows"]
    assert list(rows) == ["comfyui_plain", "comfyui_control", "diffusers_plain", "diffusers_controlnet"]
    for row in rows.values():
        assert len(row["runs_s"]) == 2 and all(t > 0 for t in row["runs_s"])
        assert row["median_s"] == pytest.approx(statistics.median(row["runs_s"]), abs=1e-3)
    # Each ratio is its side's median time with control over without, as the JSON's own rows say; the
    # paired one the median of the rounds' own ratios.
    sides = {"comfyui": ("comfyui_control", "comfyui_plain"), "diffusers": ("diffusers_controlnet", "diffusers_plain")}
    for side, (with_control, without) in sides.items():
        ratio = rows[with_control]["median_s"] / rows[without]["median_s"]
        assert data["control_cost"][side] == pytest.approx(ratio, abs=2e-3)
        paired = statistics.median(w / o for w, o in zip(rows[with_control]["runs_s"], rows[without]["runs_s"]))
        assert data["control_cost_paired"][side] == pytest.approx(paired, abs=2e-3)
        cpu = data["rows_cpu_time"]
        assert data["control_cost_cpu_time"][side] == pytest.approx(
            cpu[with_control]["median_s"] / cpu[without]["median_s"], abs=2e-3
        )
        # One torch thread: the process's CPU time is about its wall time, never far above it.
        assert 0 < cpu[with_control]["median_s"] < 2 * rows[with_control]["median_s"] + 0.05
    assert data["comfyui_adds_no_more"] == (data["control_cost"]["comfyui"] <= data["control_cost"]["diffusers"])
    printed = re.search(
        r"^control cost \(median time with control / without\): comfyui (\S+), diffusers (\S+)$", out, re.M
    )
    assert tuple(map(float, printed.groups())) == (data["control_cost"]["comfyui"], data["control_cost"]["diffusers"])
    assert re.search(
        r"^verdict: the pack's control adds (no more than|MORE than) diffusers' ControlNet adds", out, re.M
    )
    # Same weights, noise and DDIM: each ComfyUI row computes what its diffusers row does; the control
    # moves the image far more than that, on both sides.
    diff = data["max_pixel_diff"]
    assert diff["comfyui_plain_vs_diffusers_plain"] < 0.05 and diff["comfyui_control_vs_diffusers_controlnet"] < 0.05
    assert diff["comfyui_control_vs_plain"] > 5 and diff["diffusers_controlnet_vs_plain"] > 5
    # Medians of two generations are means, so the parts still add up to the total.
    assert list(data["breakdown"]) == list(rows)
    for row, parts in data["breakdown"].items():
        if row.endswith("plain"):
            assert parts["controlnet"] == parts["hint_encoders"] == 0 and 0 < parts["unet"] < parts["total_s"], row
        else:
            assert 0 < parts["hint_encoders"] < parts["controlnet"] < parts["total_s"], row
        assert parts["unet"] + parts["controlnet"] + parts["vae_decoder"] + parts["other"] == pytest.approx(
            parts["total_s"], abs=1e-3
        )
