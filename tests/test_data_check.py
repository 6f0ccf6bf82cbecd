"""`pdiff data check DIR`: what training sees in a dataset, what annotation makes of a photo folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pdiff_core.cli import main
from pdiff_core.data import DatasetWriter


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)

    def item():
        return rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), {"hed": rng.integers(0, 255, (8, 8), dtype=np.uint8)}

    with DatasetWriter(
        root,
        maps=["hed"],
        resolution=8,
        source="annotate",
        annotators={"hed": "opencv-sobel (classical fallback for hed)"},
        classical_maps=["hed"],
    ) as writer:
        writer.add_group("two views of a cat", [item(), item()])
        writer.add_group("a dog", [item()])
        writer.add_group("", [item()])
    return root


def test_dataset_report_names_groups_maps_tasks_and_fallbacks(tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "ds")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "groups: 3: 1 of 2+ images (example and query drawn from two images of the group), 2 single photo(s)" in out
    assert "images: 4; captions: 2 distinct, 1 group(s) without one" in out
    assert "maps: hed (opencv-sobel (classical fallback for hed), classical)" in out
    assert "not comparable with the paper's numbers" in out
    assert "tasks training draws (all of the maps): hed, inv_hed" in out
    assert out.endswith("no problems found\n")


def test_dataset_problems_are_listed_and_fail_the_check(tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "ds")
    (root / "000001" / "0_hed.png").write_bytes(b"torn")
    Image.new("RGB", (16, 16)).save(root / "000000" / "1.png")
    assert main(["data", "check", str(root), "--tasks", "hed,inv_depth"]) == 1
    out = capsys.readouterr().out
    assert "tasks training draws (as given): hed\n" in out
    assert "task unknown task 'inv_depth'" in out
    assert f"group 000001 item 0 hed: {root / '000001' / '0_hed.png'}: cannot read as an image" in out
    assert "group 000000 item 1: image and maps differ in size {'image': (16, 16), 'hed': (8, 8)}" in out
    groups = root / "groups.jsonl"
    groups.write_text(groups.read_text().replace('"caption": "a dog"', '"caption": 3'))
    assert main(["data", "check", str(root)]) == 1
    assert 'expected a string "caption", found 3' in capsys.readouterr().out


def test_photo_folder_report_shows_groups_and_skipped_files(tmp_path: Path, capsys) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (20, 12), (40, 80, 120)).save(photos / f"{name}.jpg")
    (photos / "a.txt").write_text("a red door")
    (photos / "b.txt").write_text("a red door")
    (photos / "d.png").write_bytes(b"nope")
    (photos / "sheet.csv").write_text("x")
    assert main(["data", "check", str(photos)]) == 0
    out = capsys.readouterr().out
    assert "layout: images with optional sidecar .txt captions" in out
    assert "groups: 2: 1 of 2+ images" in out and "1 single photo(s)" in out
    assert "images: 3; captions: 1 distinct, 1 group(s) without one" in out
    assert f"  {photos / 'd.png'}: cannot read as an image" in out
    assert f"  {photos / 'sheet.csv'}: not an image file (.csv" in out
    assert f"next: python -m training.annotate --input {photos}" in out
    (photos / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "x"}) + "\n")
    assert main(["data", "check", str(photos)]) == 1
    out = capsys.readouterr().out
    assert f"{photos / 'gone.png'}: listed in metadata.jsonl but not found" in out
    assert "fewer than 2 usable images" in out
