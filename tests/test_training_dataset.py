"""The training dataset draws as the authors' EditDataset does, and says which file is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pdiff_core.data import DatasetFormatError, DatasetWriter
from training.dataset import PromptDiffusionDataset, ResumableSampler, collate

RES = 16
GROUPS, ITEMS = 4, 3


def _image_color(g: int, i: int) -> tuple:
    return (10 + 40 * g, 20 + 60 * i, 100)


def _depth_value(g: int, i: int) -> int:
    return 5 + 30 * g + 7 * i


def _seg_color(g: int, i: int) -> tuple:
    return (20 + 60 * i, 200, 10 + 40 * g)


def _half(color, other, channels: int) -> np.ndarray:
    """Left half `color`, right half `other`: a flip shows as the coloured half changing sides."""
    out = np.empty((RES, RES, channels), dtype=np.uint8)
    out[:, : RES // 2] = color
    out[:, RES // 2 :] = other
    return out[..., 0] if channels == 1 else out


@pytest.fixture(scope="module")
def coded(tmp_path_factory) -> Path:
    """Every (group, item, map) has its own colour, so a sample tells where each image came from."""
    root = tmp_path_factory.mktemp("coded")
    with DatasetWriter(root, maps=["depth", "seg"], resolution=RES, source="test") as writer:
        for g in range(GROUPS):
            items = [
                (
                    _half(_image_color(g, i), 0, 3),
                    {"depth": _half(_depth_value(g, i), 255, 1), "seg": _half(_seg_color(g, i), 255, 3)},
                )
                for i in range(ITEMS)
            ]
            writer.add_group(f"caption {g}", items)
    return root


def _left_color(t: torch.Tensor) -> tuple:
    """Colour (0..255) of the coloured half, and whether it is on the left."""
    pixels = ((t + 1) * 127.5).round().to(torch.int64)
    left = tuple(pixels[:, 0, 0].tolist())
    right = tuple(pixels[:, 0, -1].tolist())
    on_left = left not in ((0, 0, 0), (255, 255, 255))
    return (left if on_left else right), on_left


def _expected(task: str, g: int, i: int) -> tuple:
    source = {"depth": (_depth_value(g, i),) * 3, "seg": _seg_color(g, i)}
    name = task.removeprefix("inv_")
    image, cmap = _image_color(g, i), source[name]
    return (cmap, image) if task.startswith("inv_") else (image, cmap)


def test_example_and_query_come_from_different_items_of_one_group(coded: Path) -> None:
    ds = PromptDiffusionDataset(coded, ["depth", "seg", "inv_depth", "inv_seg"], RES, flip_prob=0.5, min_crop_scale=0.9)
    tasks, flips = set(), set()
    for k in range(200):
        s = ds[k]
        g = k % GROUPS
        assert s["group"] == f"{g:06d}"
        assert s["example_item"] != s["query_item"]
        assert s["example_pair"].shape == (6, RES, RES) and s["query"].shape == s["target"].shape == (3, RES, RES)
        assert all(
            -1.0 <= float(s[key].min()) and float(s[key].max()) <= 1.0 for key in ("example_pair", "query", "target")
        )
        ex_src, ex_tgt = _expected(s["task"], g, s["example_item"])
        q_src, q_tgt = _expected(s["task"], g, s["query_item"])
        (a, a_left), (b, b_left) = _left_color(s["example_pair"][:3]), _left_color(s["example_pair"][3:])
        (c, c_left), (d, d_left) = _left_color(s["query"]), _left_color(s["target"])
        assert (a, b, c, d) == (ex_src, ex_tgt, q_src, q_tgt), s["task"]
        # One flip per pair keeps source and target aligned.
        assert a_left == b_left and c_left == d_left
        flips.add((a_left, c_left))
        tasks.add(s["task"])
        # Forward tasks are prompted with the map's name, inverse tasks with the caption (as the authors).
        expected_caption = (
            f"caption {g}"
            if s["task"].startswith("inv_")
            else {"depth": "depth map", "seg": "segmentation map"}[s["task"]]
        )
        assert s["caption"] == expected_caption
    assert tasks == {"depth", "seg", "inv_depth", "inv_seg"}
    assert len(flips) == 4  # example and query are flipped independently of each other


def test_single_photos_take_their_example_from_another_photo(tmp_path: Path) -> None:
    """One photo per group (its own caption, or none): the query is the photo, the example pair
    another photo of the dataset under the same task, and the photo's own caption prompts."""
    with DatasetWriter(tmp_path / "singles", maps=["depth", "seg"], resolution=RES, source="test") as writer:
        for g in range(GROUPS):
            writer.add_group(
                "" if g == 0 else f"caption {g}",
                [
                    (
                        _half(_image_color(g, 0), 0, 3),
                        {"depth": _half(_depth_value(g, 0), 255, 1), "seg": _half(_seg_color(g, 0), 255, 3)},
                    )
                ],
            )
    ds = PromptDiffusionDataset(tmp_path / "singles", ["depth", "inv_depth", "inv_seg"], RES)
    partners = {g: set() for g in range(GROUPS)}
    for k in range(120):
        s = ds[k]
        g, e = k % GROUPS, int(s["example_group"])
        assert s["group"] == f"{g:06d}" and e != g and s["example_item"] == s["query_item"] == 0
        partners[g].add(e)
        assert (_left_color(s["example_pair"][:3])[0], _left_color(s["example_pair"][3:])[0]) == _expected(
            s["task"], e, 0
        )
        assert (_left_color(s["query"])[0], _left_color(s["target"])[0]) == _expected(s["task"], g, 0)
        if s["task"].startswith("inv_"):
            assert s["caption"] == ("" if g == 0 else f"caption {g}")
    assert all(p == set(range(GROUPS)) - {g} for g, p in partners.items())  # every other photo serves as example


def test_one_image_in_all_cannot_train(tmp_path: Path) -> None:
    with DatasetWriter(tmp_path / "one", maps=["depth"], resolution=RES, source="test") as writer:
        writer.add_group("alone", [(_half(_image_color(0, 0), 0, 3), {"depth": _half(9, 255, 1)})])
    with pytest.raises(DatasetFormatError, match="one image in all; training needs at least 2"):
        PromptDiffusionDataset(tmp_path / "one", ["depth"], RES)


def test_draws_are_reproducible_and_collate(coded: Path) -> None:
    ds = PromptDiffusionDataset(coded, ["depth", "inv_seg"], RES, seed=3)
    again = PromptDiffusionDataset(coded, ["depth", "inv_seg"], RES, seed=3)
    batch = collate([ds[k] for k in range(5)])
    assert torch.equal(batch["example_pair"], collate([again[k] for k in range(5)])["example_pair"])
    assert batch["example_pair"].shape == (5, 6, RES, RES) and len(batch["caption"]) == 5


def test_sampler_visits_each_group_once_per_epoch_and_resumes_exactly() -> None:
    full = list(ResumableSampler(num_groups=5, seed=1, start=0, length=13))
    assert full == list(ResumableSampler(5, 1, 0, 6)) + list(ResumableSampler(5, 1, 6, 7))
    for epoch in range(2):
        keys = full[epoch * 5 : (epoch + 1) * 5]
        assert sorted(k % 5 for k in keys) == list(range(5)) and all(k // 5 == epoch for k in keys)
    assert full[:5] != full[5:10] or full[:5] != list(range(5))


def test_unknown_task_names_the_config_key(coded: Path) -> None:
    with pytest.raises(DatasetFormatError, match=r"data\.tasks.*unknown task 'normal'"):
        PromptDiffusionDataset(coded, ["depth", "normal"], RES)


def test_missing_map_names_the_file_and_line(coded: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("dataset.json",):
        (broken / name).write_text((coded / name).read_text())
    lines = (coded / "groups.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    del record["items"][0]["maps"]["seg"]
    lines[1] = json.dumps(record)
    (broken / "groups.jsonl").write_text("\n".join(lines) + "\n")
    for sub in coded.iterdir():
        if sub.is_dir():
            (broken / sub.name).symlink_to(sub)
    with pytest.raises(DatasetFormatError, match=r"groups\.jsonl:2.*missing map\(s\) \['seg'\]"):
        PromptDiffusionDataset(broken, ["seg"], RES)


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    with DatasetWriter(root, maps=["depth"], resolution=RES, source="test") as writer:
        writer.add_group("c", [(np.zeros((RES, RES, 3), np.uint8), {"depth": np.zeros((RES, RES), np.uint8)})] * 2)
    bad = root / "000000" / "1.png"
    bad.write_bytes(b"not a png")
    ds = PromptDiffusionDataset(root, ["inv_depth"], RES)
    with pytest.raises(DatasetFormatError, match=r"000000/1\.png: cannot read"):
        ds[0]
