"""`pdiff eval` (the paper's protocol) end to end: tiny pipeline, tiny FID network, toy data."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import eval_argv
from pdiff_core.cli import main
from pdiff_core.data import DatasetIndex, load_rgb
from pdiff_core.evaluation import metrics
from pdiff_core.evaluation.paper import PaperEvalConfig, run_paper_eval
from pdiff_core.toyworld import generate

GROUPS = 6


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    """A held-out split with the paper's three maps (as `training.annotate` writes them)."""
    root = tmp_path_factory.mktemp("paper") / "test"
    generate(
        root,
        GROUPS,
        items_per_group=2,
        resolution=32,
        seed=100000,
        maps=("depth", "hed", "seg"),
        progress=False,
        workers=1,
    )
    return root


class TinyFeatures(torch.nn.Module):
    """A small random conv net in place of the Inception: uint8 images -> 4 features."""

    num_features = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 5, stride=2)

    def forward(self, images):
        return torch.tanh(self.conv(images.float() / 255.0)).mean(dim=(2, 3))


def reference_fid(features, real, fake):
    """FID with numpy/scipy: |mu1 - mu2|^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    f1, f2 = (features(metrics.images_to_batch(x)).double().numpy() for x in (real, fake))
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    return float(np.sum((f1.mean(0) - f2.mean(0)) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_paper_table_with_fid_and_rmse(tiny_pipeline, tiny_pipeline_dir, annotated, tmp_path):
    out = tmp_path / "eval"
    features = TinyFeatures()
    config = PaperEvalConfig(model=tiny_pipeline_dir, data=annotated, out=out, steps=1, batch_size=GROUPS)
    columns = run_paper_eval(config, pipe=tiny_pipeline, feature_extractor=features)
    assert [c.task for c in columns] == ["inv_depth", "inv_hed", "inv_seg", "depth", "hed", "seg"]
    by = {c.task: c for c in columns}
    assert by["inv_depth"].metric == "fid" and by["depth"].metric == "rmse"
    assert (
        by["inv_hed"].paper["Prompt Diffusion (paper)"] == 13.35 and by["seg"].paper["Prompt Diffusion (paper)"] == 0.31
    )

    index = DatasetIndex.load(annotated)
    images = [load_rgb(g.items[1].image) for g in index.groups]
    with torch.no_grad():
        # Baseline "return the query" of inv_hed: FID of the hed maps against the real images.
        hed_maps = [load_rgb(g.items[1].maps["hed"]) for g in index.groups]
        assert by["inv_hed"].ours["query"] == pytest.approx(
            reference_fid(features, images, hed_maps), rel=1e-4, abs=1e-6
        )
        # The model's FID is over its saved outputs.
        records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        outputs = [load_rgb(out / "images" / r["image"]) for r in records if r["task"] == "inv_seg"]
        assert len(outputs) == GROUPS
        assert by["inv_seg"].ours["model"] == pytest.approx(
            reference_fid(features, images, outputs), rel=1e-4, abs=1e-6
        )
    # RMSE: the mean over samples of per-image RMSE (grayscale for depth).
    depth = [
        np.sqrt(
            np.mean(
                (
                    load_rgb(g.items[0].maps["depth"])[:, :, 0] / 255.0
                    - load_rgb(g.items[1].maps["depth"])[:, :, 0] / 255.0
                )
                ** 2
            )
        )
        for g in index.groups
    ]
    assert by["depth"].ours["example_target"] == pytest.approx(np.mean(depth), rel=1e-9)

    table = (out / "results.md").read_text()
    assert (
        "| method | Depth→Image FID ↓ | HED→Image FID ↓ | Seg→Image FID ↓ | Image→Depth RMSE ↓ | Image→HED RMSE ↓ | Image→Seg RMSE ↓ |"
        in table
    )
    assert "| Prompt Diffusion (paper) | 18.60 | 13.35 | 19.46 | 0.210 | 0.140 | 0.310 |" in table
    assert "| this model | " in table and "| baseline: return the query | " in table
    saved = json.loads((out / "results.json").read_text())
    assert [c["task"] for c in saved["columns"]] == [c.task for c in columns]


def test_missing_inception_fails_before_generating(tiny_pipeline_dir, annotated, tmp_path, capsys):
    out = tmp_path / "eval"
    missing = tmp_path / "weights.pth"
    with pytest.raises(SystemExit) as info:
        main(eval_argv("eval", tiny_pipeline_dir, annotated, out, ["--inception-weights", str(missing)]))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert str(missing) in err and metrics.INCEPTION_FILE in err
    assert not out.exists()
    # Forward tasks alone need no FID network.
    main(
        eval_argv(
            "eval",
            tiny_pipeline_dir,
            annotated,
            out,
            ["--tasks", "depth", "--groups-limit", "2", "--steps", "1", "--inception-weights", str(missing)],
        )
    )
    assert "Image→Depth RMSE" in (out / "results.md").read_text()


def test_table_says_fallback_maps_are_not_comparable_with_the_paper(
    tiny_pipeline, tiny_pipeline_dir, annotated, tmp_path
):
    import shutil

    data = tmp_path / "fallback"
    shutil.copytree(annotated, data)
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "classical_maps": ["hed", "seg"]}))
    config = PaperEvalConfig(model=tiny_pipeline_dir, data=data, out=tmp_path / "eval", steps=1, tasks=["depth", "hed"])
    run_paper_eval(config, pipe=tiny_pipeline)
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "Not comparable with the paper: this dataset's hed maps were made by classical stand-ins" in table
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["classical_maps"] == ["hed"]
    config = PaperEvalConfig(model=tiny_pipeline_dir, data=annotated, out=tmp_path / "exact", steps=1, tasks=["depth"])
    run_paper_eval(config, pipe=tiny_pipeline)
    assert "Not comparable" not in (tmp_path / "exact" / "results.md").read_text()
