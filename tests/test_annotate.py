"""`python -m training.annotate`: classical fallbacks, missing weights, resume, batched HED."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pdiff_core.data import DatasetIndex
from test_training_support import shapes_image
from training import annotate
from training.annotate import AnnotatorWeightsError, build_annotators, hed_batch, main


def _captioned_folder(root: Path, groups: int = 3, per_group: int = 2, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir()
    for g in range(groups):
        for i in range(per_group):
            Image.fromarray(shapes_image(rng, size)).save(root / f"g{g}_{i}.png")
            (root / f"g{g}_{i}.txt").write_text(f"shapes number {g}")
    Image.fromarray(shapes_image(rng, size)).save(root / "alone.png")  # a caption with one image: a single photo
    (root / "alone.txt").write_text("a lonely caption")
    return root


def annotate_folder(source: Path, out: Path, *flags: str) -> int:
    """`python -m training.annotate --input source --out out flags...`, in this process."""
    return main(["--input", str(source), "--out", str(out), *flags])


def test_fallback_maps_make_a_loadable_dataset(tmp_path: Path) -> None:
    source, out = _captioned_folder(tmp_path / "in"), tmp_path / "out"
    assert (
        annotate_folder(source, out, "--maps", "hed,seg,canny", "--fallback", "--resolution", "32", "--no-progress")
        == 0
    )
    index = DatasetIndex.load(out)
    assert len(index) == 4 and index.maps == ["hed", "seg", "canny"]
    assert {g.caption: len(g.items) for g in index.groups} == {
        "a lonely caption": 1,
        **{f"shapes number {g}": 2 for g in range(3)},
    }
    meta = json.loads((out / "dataset.json").read_text())
    assert "fallback" in meta["annotators"]["hed"] and "fallback" in meta["annotators"]["seg"]
    assert meta["classical_maps"] == ["hed", "seg", "canny"] and meta["source"] == "annotate"
    item = index.groups[0].items[0]
    assert Image.open(item.image).size == (32, 32)
    assert Image.open(item.maps["hed"]).mode == "L" and Image.open(item.maps["seg"]).mode == "RGB"


def test_missing_weights_are_listed(tmp_path: Path, caplog) -> None:
    with pytest.raises(AnnotatorWeightsError) as err:
        build_annotators(["depth", "hed", "seg"], tmp_path, fallback=False)
    message = str(err.value)
    for filename in ("dpt_hybrid-midas-501f0c75.pt", "ControlNetHED.pth", "upernet-convnext-small"):
        assert str(tmp_path / filename) in message
    with pytest.raises(AnnotatorWeightsError, match="sam_vit_h_4b8939.pth"):
        build_annotators(["seg"], tmp_path, fallback=False, segmenter="sam")
    assert "--fallback" in message
    # depth has no classical stand-in: --fallback leaves it out, says so, and goes on with the others...
    with caplog.at_level("WARNING"):
        assert [a.map for a in build_annotators(["depth", "hed"], None, fallback=True)] == ["hed"]
    assert "left out, no weights and no classical fallback: depth" in caplog.text and "['hed']" in caplog.text
    # ...but never down to no map at all.
    with pytest.raises(AnnotatorWeightsError, match="depth.*no classical fallback"):
        build_annotators(["depth"], None, fallback=True)
    source = _captioned_folder(tmp_path / "in")
    assert annotate_folder(source, tmp_path / "out", "--maps", "depth", "--annotator-weights", str(tmp_path)) == 2
    assert "dpt_hybrid-midas-501f0c75.pt" in caplog.text
    assert not (tmp_path / "out").exists()


def test_missing_weights_stop_with_a_command_that_works(tmp_path: Path, caplog) -> None:
    source, out = _captioned_folder(tmp_path / "in"), tmp_path / "out"
    assert annotate_folder(source, out, "--resolution", "32", "--no-progress") == 2
    command = caplog.text.split("A command that works with what is here now:")[1].strip().splitlines()[0]
    assert "--maps hed,seg --fallback" in command and not out.exists()
    caplog.clear()
    assert main(command.split()[3:] + ["--no-progress"]) == 0  # the printed command, as given
    assert DatasetIndex.load(out).maps == ["hed", "seg"]


def test_greyscale_photos_are_stored_rgb_and_unreadable_files_are_skipped(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(5)
    source = tmp_path / "in"
    source.mkdir()
    Image.fromarray(shapes_image(rng, 24)[..., 0]).save(source / "grey.png")  # an L-mode photo
    Image.fromarray(shapes_image(rng, 24)).save(source / "colour.jpg")
    (source / "broken.png").write_bytes(b"not a png")
    (source / "notes.pdf").write_bytes(b"%PDF")
    out = tmp_path / "out"
    assert annotate_folder(source, out, "--maps", "hed", "--fallback", "--resolution", "24", "--no-progress") == 0
    assert f"skipped {source / 'broken.png'}: cannot read as an image" in caplog.text
    assert f"skipped {source / 'notes.pdf'}: not an image file (.pdf" in caplog.text
    index = DatasetIndex.load(out)
    assert [(g.caption, len(g.items)) for g in index.groups] == [("", 1), ("", 1)]  # uncaptioned: single photos
    for group in index.groups:
        assert Image.open(group.items[0].image).mode == "RGB"
        assert Image.open(group.items[0].maps["hed"]).mode == "L"


def test_second_run_resumes_and_skips_done_groups(tmp_path: Path, monkeypatch) -> None:
    source, out = _captioned_folder(tmp_path / "in", groups=4), tmp_path / "out"
    groups = annotate.folder_groups(source).groups
    annotators = build_annotators(["sobel"], None, fallback=False)
    calls = []

    def counting(images):
        calls.append(len(images))
        return [annotate.sobel_edges(im) for im in images]

    annotators[0].run = counting
    real_load = annotate.load_square

    def crash_on_third_group(path, resolution):
        if path.name.startswith("g2_"):
            raise KeyboardInterrupt  # the run is killed while annotating group 2
        return real_load(path, resolution)

    monkeypatch.setattr(annotate, "load_square", crash_on_third_group)
    with pytest.raises(KeyboardInterrupt):
        annotate.annotate(groups, out, annotators, 32, batch_size=2, progress=False)
    assert not (out / "dataset.json").exists()
    first = (out / "groups.jsonl").read_text()
    assert len(first.splitlines()) == 3  # the single photo, groups 0 and 1

    monkeypatch.setattr(annotate, "load_square", real_load)
    calls.clear()
    assert annotate.annotate(groups, out, annotators, 32, batch_size=2, progress=False) == 2
    assert sum(calls) == 4  # only the two missing groups' images were annotated
    assert (out / "groups.jsonl").read_text().startswith(first)
    assert len(DatasetIndex.load(out)) == 5

    calls.clear()
    assert annotate.annotate(groups, out, annotators, 32, batch_size=2, progress=False) == 0
    assert calls == []
    with pytest.raises(ValueError, match="other settings"):
        annotate.annotate(groups, out, annotators, 64, progress=False)


def test_ip2p_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    root = tmp_path / "ip2p"
    for name, seeds in (("p0", [11, 12]), ("p1", [13])):
        (root / name).mkdir(parents=True)
        (root / name / "prompt.json").write_text(json.dumps({"input": "a", "edit": "b", "output": f"out {name}"}))
        for seed in seeds:
            for k in (0, 1):
                Image.fromarray(shapes_image(rng, 24)).save(root / name / f"{seed}_{k}.jpg")
    (root / "seeds.json").write_text(json.dumps([["p0", [11, 12]], ["p1", [13]]]))
    groups = annotate.ip2p_groups(root).groups
    assert [(g.caption, len(g.images)) for g in groups] == [("out p0", 4), ("out p1", 2)]


@pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning"
)  # controlnet-aux import noise
def test_batched_hed_matches_controlnet_aux(tmp_path: Path) -> None:
    from controlnet_aux.hed import ControlNetHED_Apache2, HEDdetector

    torch.manual_seed(0)
    network = ControlNetHED_Apache2().float().eval()  # random weights: the arithmetic is what is compared
    rng = np.random.default_rng(2)
    images = [shapes_image(rng, 64) for _ in range(3)]
    reference = [
        np.asarray(HEDdetector(network)(im, detect_resolution=64, image_resolution=64, output_type="np"))[..., 0]
        for im in images
    ]
    batched = hed_batch(network, 64, "cpu")(images)
    for ref, got in zip(reference, batched):
        np.testing.assert_array_equal(ref, got)


def test_folder_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    meta = tmp_path / "meta"
    meta.mkdir()
    lines = []
    for i, caption in enumerate(["a", "b", "a", "b", "a"]):
        Image.fromarray(shapes_image(rng, 16)).save(meta / f"{i}.png")
        lines.append(json.dumps({"file_name": f"{i}.png", "text": caption}))
    (meta / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    assert [(g.caption, len(g.images)) for g in annotate.folder_groups(meta).groups] == [("a", 3), ("b", 2)]

    sub = tmp_path / "sub"
    for name in ("x", "y"):
        (sub / name).mkdir(parents=True)
        (sub / name / "caption.txt").write_text(f"caption {name}\n")
        for i in range(2):
            Image.fromarray(shapes_image(rng, 16)).save(sub / name / f"{i}.jpg")
    (sub / "z").mkdir()
    Image.fromarray(shapes_image(rng, 16)).save(sub / "z" / "0.png")
    found = annotate.folder_groups(sub)
    assert [(g.key, g.caption, len(g.images)) for g in found.groups] == [("x", "caption x", 2), ("y", "caption y", 2)]
    assert found.skipped == [(sub / "z" / "0.png", "its folder z/ has no caption.txt")]

    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("b", "a"):
        Image.fromarray(shapes_image(rng, 16)).save(plain / f"{name}.png")
    assert [(g.key, g.caption, len(g.images)) for g in annotate.folder_groups(plain).groups] == [
        ("file:a.png", "", 1),
        ("file:b.png", "", 1),
    ]


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
def test_upernet_segmenter_paints_ade20k_classes(tmp_path: Path) -> None:
    from controlnet_aux.util import ade_palette
    from transformers import ConvNextConfig, SegformerImageProcessor, UperNetConfig, UperNetForSemanticSegmentation

    torch.manual_seed(0)  # a random tiny UperNet stands in for the ADE20K weights
    backbone = ConvNextConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    config = UperNetConfig(backbone_config=backbone, hidden_size=16, num_labels=150, use_auxiliary_head=False)
    folder = tmp_path / "weights" / "upernet-convnext-small"
    UperNetForSemanticSegmentation(config).save_pretrained(folder)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)

    (seg,) = build_annotators(["seg"], tmp_path / "weights", fallback=False)
    assert seg.kind == "upernet-convnext-small-ade20k" and not seg.classical
    rng = np.random.default_rng(4)
    maps = seg.run([shapes_image(rng, 32) for _ in range(3)])
    palette = {tuple(c) for c in ade_palette()}
    for m in maps:
        assert m.shape == (32, 32, 3) and m.dtype == np.uint8
        assert {tuple(c) for c in m.reshape(-1, 3)} <= palette
