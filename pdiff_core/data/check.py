"""`pdiff data check DIR`: what training will see in a dataset, or what annotation will make of a
folder of photos, before either runs.

A `pdiff-groups` dataset: its groups (of 2+ images, or single photos), captions, maps and the
annotator of each, the tasks training draws, and every file that would stop a run. A folder of
photos: the groups `python -m training.annotate` would form, the files it would skip and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from PIL import Image

from .format import DATASET_FILE, DatasetFormatError, DatasetIndex, dataset_tasks, parse_task
from .photos import PhotoFolder, folder_groups, ip2p_groups


@dataclass
class CheckReport:
    """Lines to show, and the problems that would stop training or annotation (empty: all fine)."""

    lines: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)

    def text(self) -> str:
        body = self.lines + (
            [f"{len(self.problems)} problem(s):"] + [f"  {p}" for p in self.problems]
            if self.problems
            else ["no problems found"]
        )
        return "\n".join(body) + "\n"


def _groups_line(sizes: Sequence[int], captions: Sequence[str]) -> List[str]:
    singles = sum(n == 1 for n in sizes)
    return [
        f"groups: {len(sizes)}: {len(sizes) - singles} of 2+ images (example and query drawn from two images of the "
        f"group), {singles} single photo(s) (example drawn from another photo)",
        f"images: {sum(sizes)}; captions: {len(set(c for c in captions if c))} distinct, {sum(not c for c in captions)} "
        "group(s) without one (their inverse tasks are prompted with the empty text)",
    ]


def check_dataset(root: Path, tasks: Optional[Sequence[str]] = None) -> CheckReport:
    """Report on a `pdiff-groups` dataset; `tasks` as in a training config's `data.tasks` (None: all)."""
    report = CheckReport()
    try:
        index = DatasetIndex.load(root)
    except DatasetFormatError as err:
        report.problems.append(str(err))
        return report
    meta = index.meta
    annotators = meta.get("annotators", {})
    classical = set(meta.get("classical_maps", []))
    report.lines.append(f"{root}: pdiff-groups dataset, {meta['resolution']} px, source {meta.get('source', '?')}")
    report.lines += _groups_line([len(g.items) for g in index.groups], [g.caption for g in index.groups])
    report.lines.append(
        "maps: "
        + ", ".join(
            m + (f" ({annotators[m]}{', classical' if m in classical else ''})" if m in annotators else "")
            for m in index.maps
        )
    )
    if classical:
        report.lines.append(
            f"note: {', '.join(sorted(classical))} made by classical stand-ins, not the paper's annotators: "
            "an eval on them is not comparable with the paper's numbers"
        )
    names = list(tasks) if tasks else dataset_tasks(index.maps)
    good = []
    for name in names:
        try:
            good.append(parse_task(name, index.maps).name)
        except DatasetFormatError as err:
            report.problems.append(f"task {err}")
    report.lines.append(
        f"tasks training draws ({'as given' if tasks else 'all of the maps'}): {', '.join(good) or 'none'}"
    )
    if sum(len(g.items) for g in index.groups) < 2:
        report.problems.append("one image in all: training needs at least 2 (example and query from different photos)")
    for group in index.groups:
        for k, item in enumerate(group.items):
            sizes = {}
            for name, path in [("image", item.image), *item.maps.items()]:
                try:
                    with Image.open(path) as im:
                        sizes[name] = im.size
                except (OSError, ValueError, SyntaxError) as err:
                    report.problems.append(f"group {group.id} item {k} {name}: {path}: cannot read as an image ({err})")
            if len(set(sizes.values())) > 1:
                report.problems.append(f"group {group.id} item {k}: image and maps differ in size {sizes}")
    return report


def check_photos(root: Path, layout: str = "folder") -> CheckReport:
    """Report on a folder of photos as `python -m training.annotate --layout LAYOUT` reads it."""
    report = CheckReport()
    try:
        found: PhotoFolder = folder_groups(root) if layout == "folder" else ip2p_groups(root)
    except DatasetFormatError as err:
        report.problems.append(str(err))
        return report
    report.lines.append(
        f"{root}: a folder of photos (layout: {found.layout}), not yet a dataset ({DATASET_FILE} missing)"
    )
    report.lines += _groups_line([len(g.images) for g in found.groups], [g.caption for g in found.groups])
    report.lines.append(f"skipped: {len(found.skipped)} file(s)")
    report.lines += [f"  {path}: {reason}" for path, reason in found.skipped]
    if sum(len(g.images) for g in found.groups) < 2:
        report.problems.append("fewer than 2 usable images: training needs an example and a query photo")
    report.lines.append(
        f"next: python -m training.annotate --input {root} --out {root}-pdiff [--annotator-weights DIR] "
        "[--fallback] (docs/dataset-format.md)"
    )
    return report


def check(root: Path, tasks: Optional[Sequence[str]] = None, layout: str = "folder") -> CheckReport:
    """`check_dataset` where `root` holds a dataset.json, else `check_photos`."""
    root = Path(root)
    if not root.is_dir():
        return CheckReport(problems=[f"{root}: not a folder"])
    return check_dataset(root, tasks) if (root / DATASET_FILE).is_file() else check_photos(root, layout)
