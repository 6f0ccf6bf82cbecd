"""`pdiff eval-toyworld --shots`: which example pairs a few-shot sample gets, and the K = 1, 2, ... table."""

import json

import numpy as np
import pytest

from conftest import eval_argv, heldout_toy_data
from pdiff_core.cli import main
from pdiff_core.data import DatasetIndex, load_rgb, parse_task
from pdiff_core.evaluation.runner import plan_samples
from pdiff_core.evaluation.toyworld import ToyworldEvalConfig, run_toyworld_eval
from pdiff_core.model_info import read_model_info

MAPS = ("depth", "normal")


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    return heldout_toy_data(tmp_path_factory, MAPS)


def test_further_shots_are_item_p_of_the_next_groups_wrapping_round(toy_data):
    index = DatasetIndex.load(toy_data)
    depth = parse_task("depth", index.maps)
    samples = plan_samples(index, [depth], None, pairs_per_group=2, shots=3)
    ids = [g.id for g in index.groups]
    last = [s for s in samples if s.group.id == ids[2]]
    assert [(s.example_item, s.query_item) for s in last] == [(0, 1), (1, 0)]
    assert [[(g.id, item) for g, item in s.more_examples] for s in last] == [
        [(ids[0], 0), (ids[1], 0)],
        [(ids[0], 1), (ids[1], 1)],
    ]
    assert len({s.key for s in samples}) == len(samples) == 6
    one_shot = plan_samples(index, [depth], None, pairs_per_group=1)
    assert [s.key for s in one_shot] == [f"depth/{i}/0-1" for i in ids]  # one-shot keys as before shots existed
    # every K starts from the one-shot run's noise, so settings are compared sample by sample
    few = [s for s in samples if s.example_item == 0]
    assert [s.seed(3) for s in few] == [s.seed(3) for s in one_shot] and len(set(s.seed(3) for s in one_shot)) == 3
    with pytest.raises(ValueError, match="shots must be between 1 and the dataset's 3 groups, got 4"):
        plan_samples(index, [depth], None, pairs_per_group=1, shots=4)


class RecordingPipeline:
    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, prompts, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(prompts, **kwargs)


def test_a_few_shot_run_passes_every_pair_to_the_pipeline(tiny_pipeline, tiny_pipeline_dir, toy_data, tmp_path):
    recorder = RecordingPipeline(tiny_pipeline)
    config = ToyworldEvalConfig(
        model=tiny_pipeline_dir,
        data=toy_data,
        out=tmp_path / "k2",
        steps=1,
        batch_size=3,
        tasks=["inv_depth"],
        shots=2,
        shot_combine="embedding",
    )
    run_toyworld_eval(config, pipe=recorder)
    (call,) = recorder.calls
    assert call["shot_combine"] == "embedding" and "example_pair" not in call
    (sources0, targets0), (sources1, targets1) = call["example_pairs"]
    index = DatasetIndex.load(toy_data)
    # inverse depth: the source is the depth map, the target the image; shot 2 of group g is group g+1's item 0
    for g in range(3):
        following = index.groups[(g + 1) % 3].items[0]
        np.testing.assert_array_equal(sources1[g], load_rgb(following.maps["depth"]))
        np.testing.assert_array_equal(targets1[g], load_rgb(following.image))
        np.testing.assert_array_equal(targets0[g], load_rgb(index.groups[g].items[0].image))
    records = [json.loads(line) for line in (tmp_path / "k2" / "samples.jsonl").read_text().splitlines()]
    assert [r["more_examples"] for r in records] == [[[index.groups[(g + 1) % 3].id, 0]] for g in range(3)]
    # A one-shot run may not resume into a few-shot folder (or the reverse).
    with pytest.raises(ValueError, match="another run"):
        run_toyworld_eval(ToyworldEvalConfig(**{**config.__dict__, "shots": 1}), pipe=recorder)


def test_cli_table_puts_each_setting_beside_the_baselines(tiny_pipeline_dir, toy_data, tmp_path):
    out = tmp_path / "table"
    settings = ["--steps", "1", "--batch-size", "6", "--tasks", "depth,inv_normal"]
    shots = ["--shots", "1,2", "--shot-combine", "residuals,embedding"]
    main(eval_argv("eval-toyworld", tiny_pipeline_dir, toy_data, out, [*settings, *shots]))
    assert sorted(p.name for p in out.iterdir()) == [
        "few-shot.json",
        "few-shot.md",
        "shots-1",
        "shots-2-embedding",
        "shots-2-residuals",
    ]
    table = (out / "few-shot.md").read_text()
    guidance = read_model_info(tiny_pipeline_dir).guidance_scale  # the model's, as no --guidance was given
    assert f"1 steps, guidance {guidance}, seed" in table
    assert "| example-target baseline | query baseline | K=1 | K=2 residuals | K=2 embedding |" in table
    per_setting = {
        name: json.loads((out / name / "results.json").read_text())["rows"]
        for name in ("shots-1", "shots-2-residuals", "shots-2-embedding")
    }
    for row_index, row in enumerate(per_setting["shots-1"]):
        models = [per_setting[name][row_index]["model"] for name in per_setting]
        digits = 4 if row["metric"] != "psnr" else 2
        line = next(
            line
            for line in table.splitlines()
            if line.startswith(f"| {row['task']} |") and row["metric"].upper() in line.upper()
        )
        cells = [c.strip().strip("*") for c in line.strip("|").split("|")]
        assert cells[3:] == [f"{v:.{digits}f}" for v in (row["example_target"], row["query"], *models)]
        # shot 1 is the same pair in every setting, so the baselines agree
        assert {per_setting[name][row_index]["example_target"] for name in per_setting} == {row["example_target"]}
    assert "K=2 residuals beats K=1 on" in table and "of 1 seen rows" in table and "of 2 unseen rows" in table


def test_bad_shot_options_are_named(tiny_pipeline_dir, toy_data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            eval_argv(
                "eval-toyworld", tiny_pipeline_dir, toy_data, tmp_path, ["--shots", "1,2", "--shot-combine", "median"]
            )
        )
    assert "shot_combine 'median'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval-toyworld", "--shots", "two"])
    assert "expected comma-separated whole numbers" in capsys.readouterr().err
