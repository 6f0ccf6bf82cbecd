"""pdiff_core.data: writer/loader round trip, every validation error, tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from pdiff_core.data import (
    STANDARD_TASKS,
    DatasetFormatError,
    DatasetIndex,
    DatasetWriter,
    load_rgb,
    parse_task,
)

MAPS = ["depth", "seg"]


def _item(rng: np.random.Generator, size: int = 8) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return image, {"depth": rng.integers(0, 256, (size, size), dtype=np.uint8), "seg": image[::-1].copy()}


def _write(root: Path, groups: int = 2, items: int = 3, **kwargs) -> List[List[Tuple[np.ndarray, dict]]]:
    rng = np.random.default_rng(0)
    written = []
    with DatasetWriter(root, MAPS, resolution=8, source="test", **kwargs) as w:
        for g in range(groups):
            group = [_item(rng) for _ in range(items)]
            w.add_group(f"caption {g}", group)
            written.append(group)
    return written


def _rewrite_groups(root: Path, edit) -> None:
    path = root / "groups.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    edit(records)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_round_trip(tmp_path: Path) -> None:
    written = _write(tmp_path / "ds", extra="kept")
    index = DatasetIndex.load(tmp_path / "ds")
    assert index.maps == MAPS
    assert index.meta["resolution"] == 8 and index.meta["source"] == "test" and index.meta["extra"] == "kept"
    assert [g.caption for g in index.groups] == ["caption 0", "caption 1"]
    assert len(index) == 2 and [len(g.items) for g in index.groups] == [3, 3]
    for group, items in zip(index.groups, written):
        for item, (image, maps) in zip(group.items, items):
            np.testing.assert_array_equal(load_rgb(item.image), image)
            np.testing.assert_array_equal(load_rgb(item.maps["seg"]), maps["seg"])
            # Single-channel maps are stored as L and read back as three equal channels.
            assert Image.open(item.maps["depth"]).mode == "L"
            np.testing.assert_array_equal(load_rgb(item.maps["depth"]), np.repeat(maps["depth"][:, :, None], 3, 2))


def test_missing_dataset_json(tmp_path: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: file not found"):
        DatasetIndex.load(tmp_path)


def test_wrong_format_tag_and_version(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    meta_path = tmp_path / "ds" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format": "webdataset"}))
    expected = r"dataset\.json: expected \"format\": 'pdiff-groups', found 'webdataset'"
    with pytest.raises(DatasetFormatError, match=expected):
        DatasetIndex.load(tmp_path / "ds")
    meta_path.write_text(json.dumps({**meta, "version": 2}))
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: expected \"version\": 1, found 2"):
        DatasetIndex.load(tmp_path / "ds")


def test_group_with_one_item_loads_and_one_without_items_does_not(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    _rewrite_groups(tmp_path / "ds", lambda rs: rs[1].update(items=rs[1]["items"][:1]))
    assert [len(g.items) for g in DatasetIndex.load(tmp_path / "ds").groups][1] == 1  # a single photo
    _rewrite_groups(tmp_path / "ds", lambda rs: rs[1].update(items=[]))
    expected = r"groups\.jsonl:2 \(group 000001\): expected \"items\" to list at least 1 item, found 0"
    with pytest.raises(DatasetFormatError, match=expected):
        DatasetIndex.load(tmp_path / "ds")


def test_item_missing_a_map(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    _rewrite_groups(tmp_path / "ds", lambda rs: rs[0]["items"][2]["maps"].pop("seg"))
    with pytest.raises(DatasetFormatError, match=r"group 000000\) item 2: missing map\(s\) \['seg'\]"):
        DatasetIndex.load(tmp_path / "ds")


def test_missing_file_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    gone = tmp_path / "ds" / "000001" / "1_depth.png"
    gone.unlink()
    with pytest.raises(DatasetFormatError, match="file not found") as err:
        DatasetIndex.load(tmp_path / "ds")
    assert str(gone) in str(err.value)
    # Structure-only loading skips the per-file check.
    assert len(DatasetIndex.load(tmp_path / "ds", check_files=False)) == 2


def test_paths_must_stay_inside_the_dataset(tmp_path: Path) -> None:
    _write(tmp_path / "ds")
    _rewrite_groups(tmp_path / "ds", lambda rs: rs[0]["items"][0].update(image="../outside.png"))
    with pytest.raises(DatasetFormatError, match="must be relative to the dataset root"):
        DatasetIndex.load(tmp_path / "ds")


def test_non_empty_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    root.mkdir()
    user_file = root / "notes.txt"
    user_file.write_text("mine")
    with pytest.raises(DatasetFormatError, match="folder is not empty") as err:
        _write(root)
    assert str(root) in str(err.value)
    # overwrite=True replaces datasets only; an unrelated folder stays refused.
    with pytest.raises(DatasetFormatError, match="does not look like a dataset"):
        _write(root, overwrite=True)
    assert user_file.read_text() == "mine"


def test_overwrite_replaces_a_dataset_and_keeps_other_files(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _write(root, groups=3)
    (root / "notes.txt").write_text("mine")
    _write(root, groups=2, overwrite=True)
    assert len(DatasetIndex.load(root)) == 2
    assert not (root / "000002").exists()
    assert (root / "notes.txt").read_text() == "mine"


def test_interrupted_write_is_not_loadable(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(tmp_path / "ds", MAPS, resolution=8, source="test") as w:
            w.add_group("c", [_item(rng), _item(rng)])
            raise KeyboardInterrupt
    with pytest.raises(DatasetFormatError, match=r"dataset\.json: file not found"):
        DatasetIndex.load(tmp_path / "ds")


def test_resumed_writer_keeps_whole_groups_and_continues_after_them(tmp_path: Path) -> None:
    root, rng = tmp_path / "ds", np.random.default_rng(0)
    groups = [[_item(rng), _item(rng)] for _ in range(4)]
    with pytest.raises(KeyboardInterrupt):
        with DatasetWriter(root, MAPS, resolution=8, source="test", resume=True) as w:
            w.add_group("c0", groups[0], source="photos/a")
            w.add_group("c1", groups[1])
            raise KeyboardInterrupt
    whole = (root / "groups.jsonl").read_text()
    # A kill while group 2 was written: its files partly there, its line torn.
    (root / "000002").mkdir()
    (root / "000002" / "0.png").write_bytes(b"half a png")
    with (root / "groups.jsonl").open("a") as f:
        f.write('{"id": "000002", "capt')
    with DatasetWriter(root, MAPS, resolution=8, source="test", resume=True, extra="kept") as w:
        assert w.n_groups == 2
        assert w.add_group("c2", groups[2]) == "000002"
        w.add_group("c3", groups[3])
    assert (root / "groups.jsonl").read_text().startswith(whole + '{"id": "000002", "caption": "c2"')
    index = DatasetIndex.load(root)
    assert [g.caption for g in index.groups] == ["c0", "c1", "c2", "c3"] and index.meta["groups"] == 4
    assert index.meta["extra"] == "kept"
    for group, items in zip(index.groups, groups):
        for item, (image, maps) in zip(group.items, items):
            np.testing.assert_array_equal(load_rgb(item.image), image)
    assert json.loads(whole.splitlines()[0])["source"] == "photos/a"


def test_resume_refuses_a_dataset_it_cannot_continue(tmp_path: Path) -> None:
    _write(tmp_path / "ds", groups=2)
    before = (tmp_path / "ds" / "groups.jsonl").read_text()
    with pytest.raises(
        DatasetFormatError, match=r"cannot resume .*groups\.jsonl:1: not a record \(expected items with"
    ):
        with DatasetWriter(tmp_path / "ds", ["depth"], resolution=8, source="test", resume=True):
            pass
    assert (tmp_path / "ds" / "groups.jsonl").read_text() == before and (tmp_path / "ds" / "dataset.json").is_file()
    _rewrite_groups(tmp_path / "ds", lambda rs: rs.reverse())
    with pytest.raises(DatasetFormatError, match=r"groups\.jsonl:1: not a record \(expected group '000000'"):
        with DatasetWriter(tmp_path / "ds", MAPS, resolution=8, source="test", resume=True):
            pass
    with pytest.raises(ValueError, match="pass one"):
        DatasetWriter(tmp_path / "ds", MAPS, resolution=8, source="test", resume=True, overwrite=True)


def test_writer_rejects_bad_items(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    with DatasetWriter(tmp_path / "ds", MAPS, resolution=8, source="test") as w:
        image, maps = _item(rng)
        with pytest.raises(DatasetFormatError, match="expected at least 1 item, got none"):
            w.add_group("c", [])
        with pytest.raises(DatasetFormatError, match=r"expected maps \['depth', 'seg'\], got \['depth'\]"):
            w.add_group("c", [(image, {"depth": maps["depth"]})] * 2)
        with pytest.raises(DatasetFormatError, match="expected a uint8 array, got dtype float64"):
            w.add_group("c", [(image, {**maps, "depth": maps["depth"] / 255.0})] * 2)
        with pytest.raises(DatasetFormatError, match=r"size \(4, 4\) differs from image \(8, 8\)"):
            w.add_group("c", [(image, {**maps, "seg": maps["seg"][:4, :4]})] * 2)
        # A rejected group leaves nothing behind.
        assert w.n_groups == 0 and not any(p.is_dir() for p in (tmp_path / "ds").iterdir())
        w.add_group("ok", [(Image.fromarray(image), maps), _item(rng)])
    assert len(DatasetIndex.load(tmp_path / "ds")) == 1
    with pytest.raises(DatasetFormatError, match="map name 'inv_depth'"):
        DatasetWriter(tmp_path / "other", ["inv_depth"], resolution=8, source="test")


def test_load_rgb_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match="cannot read as an image") as err:
        load_rgb(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(DatasetFormatError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


def test_parse_task_forward_inverse_unknown(tmp_path: Path) -> None:
    depth = parse_task("depth", ["depth", "seg"])
    assert (depth.map, depth.inverse, depth.source, depth.target) == ("depth", False, "image", "depth")
    inv = parse_task("inv_seg", ["depth", "seg"])
    assert (inv.map, inv.inverse, inv.source, inv.target) == ("seg", True, "seg", "image")
    with pytest.raises(DatasetFormatError, match=r"unknown task 'inv_normal'.*available maps \['depth', 'seg'\]"):
        parse_task("inv_normal", ["depth", "seg"])
    assert [parse_task(t, ["depth", "hed", "seg"]).name for t in STANDARD_TASKS] == list(STANDARD_TASKS)

    _write(tmp_path / "ds")
    item = DatasetIndex.load(tmp_path / "ds").groups[0].items[0]
    assert inv.paths(item) == (item.maps["seg"], item.image)
    assert depth.paths(item) == (item.image, item.maps["depth"])
