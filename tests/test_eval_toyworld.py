"""`pdiff eval-toyworld` end to end with a tiny pipeline on a few toy-world groups."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio as sk_psnr

from conftest import eval_argv, heldout_toy_data, launch_two_cpu_processes
from pdiff_core.cli import main
from pdiff_core.data import DatasetIndex, load_rgb
from pdiff_core.evaluation.toyworld import ToyworldEvalConfig, heldout_dataset, run_toyworld_eval

MAPS = ("depth", "seg", "normal")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return heldout_toy_data(tmp_path_factory, MAPS)


class CountingPipeline:
    """Wraps a pipeline and counts the samples it is asked to generate."""

    def __init__(self, pipe):
        self.pipe, self.samples = pipe, 0

    def __call__(self, prompts, **kwargs):
        self.samples += len(prompts)
        return self.pipe(prompts, **kwargs)


def config(tiny_pipeline_dir, toy_data, out, **overrides):
    settings = dict(
        model=tiny_pipeline_dir, data=toy_data, out=out, steps=1, batch_size=2, tasks=["depth", "inv_depth"]
    )
    return ToyworldEvalConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def cli_run(tiny_pipeline_dir, toy_data, tmp_path_factory):
    """One run over every task of the toy data, shared by the tests that read its results."""
    out = tmp_path_factory.mktemp("eval") / "run"
    main(eval_argv("eval-toyworld", tiny_pipeline_dir, toy_data, out, ["--steps", "1", "--batch-size", "9"]))
    return out


def test_cli_writes_the_table_with_every_task(cli_run):
    out = cli_run
    table = (out / "results.md").read_text()
    assert "| task | seen/unseen | metric | model | example-target baseline | query baseline | beats both? |" in table
    rows = json.loads((out / "results.json").read_text())["rows"]
    expected = {
        ("depth", "rmse"),
        ("seg", "rmse"),
        ("inv_depth", "psnr"),
        ("inv_depth", "ssim"),
        ("inv_seg", "psnr"),
        ("inv_seg", "ssim"),
        ("normal", "rmse"),
        ("inv_normal", "psnr"),
        ("inv_normal", "ssim"),
    }
    assert {(r["task"], r["metric"]) for r in rows} == expected
    assert {r["task"]: r["seen"] for r in rows} == {
        "depth": True,
        "seg": True,
        "inv_depth": True,
        "inv_seg": True,
        "normal": False,
        "inv_normal": False,
    }
    assert all(r["samples"] == 3 for r in rows)
    # Trained tasks are listed before unseen ones, forward before inverse.
    assert [r["task"] for r in rows][:2] == ["depth", "seg"] and rows[-1]["task"] == "inv_normal"
    for r in rows:
        beats = (
            r["model"] < min(r["example_target"], r["query"])
            if r["metric"] == "rmse"
            else r["model"] > max(r["example_target"], r["query"])
        )
        assert r["beats_both"] == beats
        assert f"| {r['task']} | {'seen' if r['seen'] else 'unseen'} |" in table


def test_baselines_are_exact_and_scores_match_saved_outputs(cli_run, toy_data):
    out = cli_run
    index = DatasetIndex.load(toy_data)
    by = {
        (r["task"], r["metric"]): SimpleNamespace(**r) for r in json.loads((out / "results.json").read_text())["rows"]
    }
    # inv_depth, "return the query": PSNR of the depth map (as RGB) against the image, computed directly.
    query_psnr = [
        sk_psnr(load_rgb(g.items[1].image) / 255.0, load_rgb(g.items[1].maps["depth"]) / 255.0, data_range=1.0)
        for g in index.groups
    ]
    assert by["inv_depth", "psnr"].query == pytest.approx(np.mean(query_psnr), rel=1e-6)
    # depth, "return the example target": RMSE of item 0's depth map against item 1's.
    depth = lambda g, k: load_rgb(g.items[k].maps["depth"])[:, :, 0] / 255.0  # noqa: E731
    target_rmse = [np.sqrt(np.mean((depth(g, 0) - depth(g, 1)) ** 2)) for g in index.groups]
    assert by["depth", "rmse"].example_target == pytest.approx(np.mean(target_rmse), rel=1e-9)
    # The model's score is the saved PNG's: normal is an RGB map, compared in RGB.
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    record = next(r for r in records if r["task"] == "normal")
    saved = load_rgb(out / "images" / record["image"]) / 255.0
    truth = load_rgb(index.groups[int(record["group"])].items[1].maps["normal"]) / 255.0
    assert record["scores"]["model"]["rmse"] == pytest.approx(np.sqrt(np.mean((saved - truth) ** 2)), rel=1e-9)


def test_rerun_resumes_without_generating_done_samples(tiny_pipeline, tiny_pipeline_dir, toy_data, tmp_path):
    out = tmp_path / "run"
    first = CountingPipeline(tiny_pipeline)
    rows = run_toyworld_eval(config(tiny_pipeline_dir, toy_data, out, groups_limit=2), pipe=first)
    assert first.samples == 2 * 2
    # An interrupted write leaves a partial last line: that sample is redone, the others are not.
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    again = CountingPipeline(tiny_pipeline)
    redone = run_toyworld_eval(config(tiny_pipeline_dir, toy_data, out, groups_limit=2, batch_size=1), pipe=again)
    # The redone sample runs in a batch of one: equal up to float rounding across batch sizes.
    assert [dataclasses.replace(r, model=0.0) for r in redone] == [dataclasses.replace(r, model=0.0) for r in rows]
    assert [r.model for r in redone] == pytest.approx([r.model for r in rows], rel=1e-4)
    assert again.samples == 1
    more = CountingPipeline(tiny_pipeline)
    run_toyworld_eval(config(tiny_pipeline_dir, toy_data, out), pipe=more)
    assert more.samples == 2  # only the third group is new
    with pytest.raises(ValueError, match="another run.*steps"):
        run_toyworld_eval(config(tiny_pipeline_dir, toy_data, out, steps=2), pipe=more)


def test_default_heldout_set_is_generated_once(tmp_path):
    root = heldout_dataset(tmp_path, groups=2, resolution=32)
    index = DatasetIndex.load(root)
    assert len(index) == 2 and index.meta["seed"] == 100000
    stamp = (root / "groups.jsonl").stat().st_mtime_ns
    assert heldout_dataset(tmp_path, groups=2, resolution=32) == root
    assert (root / "groups.jsonl").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]


def test_compile_option_compiles_unet_and_controlnet(tiny_pipeline_dir, monkeypatch):
    # The real compile takes minutes on CPU (benchmarks/RESULTS.md); here only its wiring is checked.
    import torch

    from pdiff_core.evaluation.runner import load_model

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(type(module).__name__) or module)
    load_model(ToyworldEvalConfig(model=tiny_pipeline_dir))
    assert compiled == []
    load_model(ToyworldEvalConfig(model=tiny_pipeline_dir, compile=True))
    assert compiled == ["UNet2DConditionModel", "PromptDiffusionControlNetModel"]


def test_single_photos_take_the_example_from_the_next_group(tmp_path):
    from pdiff_core.data import DatasetWriter, parse_task
    from pdiff_core.evaluation.runner import load_sample, plan_samples

    with DatasetWriter(tmp_path / "singles", maps=["depth"], resolution=8, source="test") as writer:
        for g in range(3):
            writer.add_group(
                f"photo {g}", [(np.full((8, 8, 3), 10 * g, np.uint8), {"depth": np.full((8, 8), 100 + g, np.uint8)})]
            )
    index = DatasetIndex.load(tmp_path / "singles")
    samples = plan_samples(index, [parse_task("depth", index.maps)], None, 1)
    assert [(s.group.id, s.example_group.id) for s in samples] == [
        ("000000", "000001"),
        ("000001", "000002"),
        ("000002", "000000"),
    ]
    assert len({s.key for s in samples}) == 3
    images = load_sample(samples[0], 8)
    assert (images.example_source[0, 0, 0], images.example_target[0, 0], images.query[0, 0, 0], images.truth[0, 0]) == (
        10,
        101,
        0,
        100,
    )
    with pytest.raises(ValueError, match="single photo and the only group"):
        plan_samples(index, [parse_task("depth", index.maps)], 1, 1)


def test_two_processes_give_the_single_process_table_and_resume(tiny_pipeline_dir, toy_data, tmp_path):
    """`accelerate launch` with 2 CPU processes: each generates half the samples into its own file,
    the main one merges them once and writes the table, equal to one process's."""
    args = [
        "eval-toyworld",
        "--model",
        str(tiny_pipeline_dir),
        "--data",
        str(toy_data),
        "--steps",
        "1",
        "--batch-size",
        "1",
        "--tasks",
        "depth,inv_depth,inv_seg",
    ]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main([*args, "--out", str(single)]) == 0
    sharded_args = [*args, "--out", str(sharded)]
    result = launch_two_cpu_processes("pdiff_core.evaluation.cli", sharded_args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "process 1 of 2: 4 of 9 pending samples" in result.stderr  # the work was split
    assert not list(sharded.glob("samples.rank-*.jsonl"))  # merged once, into samples.jsonl

    def rows(out):
        return json.loads((out / "results.json").read_text())["rows"]

    def records(out):
        lines = (out / "samples.jsonl").read_text().splitlines()
        return sorted((json.loads(line) for line in lines), key=lambda r: r["key"])

    assert rows(sharded) == rows(single)
    assert records(sharded) == records(single)
    # Resumable as one process is: nothing left to generate, same table.
    (sharded / "results.json").unlink()
    result = launch_two_cpu_processes("pdiff_core.evaluation.cli", sharded_args)
    assert result.returncode == 0 and "9 of 9 samples already done" in result.stderr
    assert rows(sharded) == rows(single)


def test_a_new_run_merges_what_an_interrupted_sharded_run_left(tiny_pipeline, tiny_pipeline_dir, toy_data, tmp_path):
    out = tmp_path / "run"
    counting = CountingPipeline(tiny_pipeline)
    run_toyworld_eval(config(tiny_pipeline_dir, toy_data, out), pipe=counting)
    lines = (out / "samples.jsonl").read_text().splitlines()
    # As if two processes had each written half and been killed before the merge (one mid-line).
    (out / "samples.jsonl").unlink()
    (out / "samples.rank-0.jsonl").write_text("\n".join(lines[0::2]) + "\n")
    (out / "samples.rank-1.jsonl").write_text("\n".join(lines[1::2]) + "\n" + lines[0][:20])
    counting.samples = 0
    run_toyworld_eval(config(tiny_pipeline_dir, toy_data, out), pipe=counting)
    assert counting.samples == 0
    assert sorted((out / "samples.jsonl").read_text().splitlines()) == sorted(lines)
    assert not list(out.glob("samples.rank-*.jsonl"))


class PromptRecorder:
    """Wraps a pipeline and records the prompts and guidance it is called with."""

    def __init__(self, pipe):
        self.pipe, self.prompts, self.guidance = pipe, [], set()

    def __call__(self, prompts, **kwargs):
        self.prompts += list(prompts)
        self.guidance.add(kwargs["guidance_scale"])
        return self.pipe(prompts, **kwargs)


def test_model_info_sets_trained_tasks_and_guidance_and_empty_prompts_carry_no_text(
    tiny_pipeline, tiny_pipeline_dir, toy_data, tmp_path
):
    import shutil

    from pdiff_core.model_info import write_model_info

    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline_dir, model)
    write_model_info(model, ["normal", "inv_depth"], 2.5)
    recorder = PromptRecorder(tiny_pipeline)
    rows = run_toyworld_eval(
        config(model, toy_data, tmp_path / "a", tasks=["depth", "normal", "inv_depth"]), pipe=recorder
    )
    assert {r.task: r.seen for r in rows} == {"depth": False, "normal": True, "inv_depth": True}
    assert recorder.guidance == {2.5}
    assert "depth map" in recorder.prompts and "normal map" in recorder.prompts

    recorder = PromptRecorder(tiny_pipeline)
    run_toyworld_eval(
        config(model, toy_data, tmp_path / "b", tasks=["depth", "inv_depth"], prompt="empty", guidance=1.0),
        pipe=recorder,
    )
    assert recorder.prompts and set(recorder.prompts) == {""} and recorder.guidance == {1.0}


def test_model_info_file_errors_name_the_file_and_key(tmp_path):
    from pdiff_core.model_info import AUTHORS_GUIDANCE, ModelInfoError, read_model_info

    assert read_model_info(tmp_path).guidance_scale == AUTHORS_GUIDANCE
    (tmp_path / "prompt_diffusion.json").write_text('{"guidance_scale": "high"}')
    with pytest.raises(ModelInfoError, match="prompt_diffusion.json: guidance_scale"):
        read_model_info(tmp_path)
    (tmp_path / "prompt_diffusion.json").write_text('{"trained_tasks": "depth"}')
    with pytest.raises(ModelInfoError, match="trained_tasks"):
        read_model_info(tmp_path)
    (tmp_path / "prompt_diffusion.json").write_text("{not json")
    with pytest.raises(ModelInfoError, match="not valid JSON"):
        read_model_info(tmp_path)
