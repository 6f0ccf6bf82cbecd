"""Training samples for Prompt Diffusion, drawn as the authors' `edit_dataset.py` draws them.

Each draw picks a group, a task uniformly from the configured ones, and two different items of
the group: the example pair is (source, target) of the first item, the query and the target come
from the second. A group of one photo (a photo with its own caption, or none) takes its example
from a photo of another group, drawn uniformly: the same task on a different picture. Forward
tasks (image -> map) are prompted with the map's name ("depth map"), as the authors do; inverse
tasks (map -> image) with the group caption.

Every draw is a pure function of (seed, draw number), so a run resumed from step N sees exactly
the samples an uninterrupted run would, whatever the number of loader workers.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from pdiff_core.data import (
    DatasetFormatError,
    DatasetIndex,
    GroupItem,
    Task,
    dataset_tasks,
    load_rgb,
    map_prompt,
    parse_task,
)


class PromptDiffusionDataset(Dataset):
    """Indexed by draw number `k`: draw `k` uses group `k % len(self)`.

    Sample: `example_pair` (6, H, W), `query` (3, H, W), `target` (3, H, W), all float32 in
    [-1, 1]; `caption` (str); `task` (str); `group` (str id); `example_group` (the example's
    group id: `group`, or another one for a single photo); `example_item` and `query_item` (the
    two items' indices in their groups).
    """

    def __init__(
        self,
        root: Union[str, Path],
        tasks: Optional[Sequence[str]],
        resolution: int,
        flip_prob: float = 0.5,
        min_crop_scale: float = 1.0,
        forward_prompt: str = "map_name",
        seed: int = 0,
    ) -> None:
        self.index = DatasetIndex.load(root)
        self.tasks: List[Task] = []
        for name in dataset_tasks(self.index.maps) if tasks is None else tasks:
            try:
                self.tasks.append(parse_task(name, self.index.maps))
            except DatasetFormatError as err:
                raise DatasetFormatError(f"data.tasks: {err} (dataset {self.index.root / 'dataset.json'})") from None
        if sum(len(g.items) for g in self.index.groups) < 2:
            raise DatasetFormatError(
                f"{self.index.root}: one image in all; training needs at least 2 (the example and the query "
                "come from different photos)"
            )
        self.resolution = resolution
        self.flip_prob = flip_prob
        self.min_crop_scale = min_crop_scale
        self.forward_prompt = forward_prompt
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index.groups)

    def captions(self) -> List[str]:
        """Every text the model can be prompted with in training (for a tokenizer)."""
        return [g.caption for g in self.index.groups] + [map_prompt(t.map) for t in self.tasks if not t.inverse]

    def verify_files(self, workers: int = 4) -> int:
        """Decode once every file the configured tasks read and compare each source with its target's
        size, so a bad file stops the run before step 1 rather than at the draw that meets it.
        Raises naming every bad file; returns how many files were read."""
        pairs = {task.paths(item) for group in self.index.groups for item in group.items for task in self.tasks}
        files = sorted({path for pair in pairs for path in pair})
        shapes: Dict[Path, tuple] = {}
        problems: List[str] = []

        def read(path: Path) -> None:
            try:
                shapes[path] = load_rgb(path).shape
            except DatasetFormatError as err:
                problems.append(str(err))

        with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
            list(pool.map(read, files))
        problems.sort()
        for source, target in sorted(pairs):
            if source in shapes and target in shapes and shapes[source][:2] != shapes[target][:2]:
                problems.append(f"{target}: size {shapes[target][:2]} differs from {source} {shapes[source][:2]}")
        if problems:
            shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
            raise DatasetFormatError(f"dataset {self.index.root}: {len(problems)} bad file(s) of {len(files)}: {shown}")
        return len(files)

    def __getitem__(self, k: int) -> Dict[str, Union[torch.Tensor, str]]:
        k = int(k)
        group = self.index.groups[k % len(self)]
        rng = np.random.default_rng([self.seed, k])
        task = self.tasks[rng.integers(len(self.tasks))]
        if len(group.items) > 1:
            example_group = group
            example_i, query_i = rng.choice(len(group.items), size=2, replace=False)
        else:
            # A single photo: the example comes from another group (an offset of 1..n-1 never lands on this one).
            example_group = self.index.groups[(k + rng.integers(1, len(self))) % len(self)]
            example_i, query_i = rng.integers(len(example_group.items)), 0
        example_source, example_target = self._pair(example_group.items[example_i], task, rng)
        query, target = self._pair(group.items[query_i], task, rng)
        return {
            "example_pair": torch.cat([example_source, example_target]),
            "query": query,
            "target": target,
            "caption": self._prompt(group.caption, task, rng),
            "task": task.name,
            "group": group.id,
            "example_group": example_group.id,
            "example_item": int(example_i),
            "query_item": int(query_i),
        }

    def _prompt(self, caption: str, task: Task, rng: np.random.Generator) -> str:
        """The draw's text (see DataConfig.forward_prompt); "mixed" draws once more from `rng`."""
        if self.forward_prompt == "mixed":
            choice = rng.random()
            if task.inverse:
                return caption if choice < 1 / 2 else ""
            return map_prompt(task.map) if choice < 1 / 3 else caption if choice < 2 / 3 else ""
        return caption if task.inverse or self.forward_prompt == "caption" else map_prompt(task.map)

    def _pair(self, item: GroupItem, task: Task, rng: np.random.Generator) -> List[torch.Tensor]:
        """Source and target of one item, with one crop and one flip so they stay pixel-aligned."""
        images = [load_rgb(p) for p in task.paths(item)]
        if images[0].shape != images[1].shape:
            raise DatasetFormatError(
                f"{task.paths(item)[1]}: size {images[1].shape[:2]} differs from {task.paths(item)[0]} "
                f"{images[0].shape[:2]}"
            )
        h, w = images[0].shape[:2]
        side = int(round(min(h, w) * rng.uniform(self.min_crop_scale, 1.0)))
        top, left = rng.integers(h - side + 1), rng.integers(w - side + 1)
        flip = rng.random() < self.flip_prob
        return [self._to_tensor(img[top : top + side, left : left + side], flip) for img in images]

    def _to_tensor(self, image: np.ndarray, flip: bool) -> torch.Tensor:
        if image.shape[0] != self.resolution:
            image = np.asarray(Image.fromarray(image).resize((self.resolution,) * 2, Image.Resampling.LANCZOS))
        if flip:
            image = image[:, ::-1]
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
        return tensor / 127.5 - 1.0  # 2 * x / 255 - 1, as the authors


class ResumableSampler(Sampler[int]):
    """Draw numbers `start, start + 1, ..., start + length - 1` of an endless stream in which epoch
    `e` visits every group once in a seeded random order; yields `e * n + group` so each draw
    has its own key. Restarting at `start = samples already consumed` continues a run exactly."""

    def __init__(self, num_groups: int, seed: int, start: int, length: int) -> None:
        self.num_groups = num_groups
        self.seed = seed
        self.start = start
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        epoch, order = -1, None
        for position in range(self.start, self.start + self.length):
            e, i = divmod(position, self.num_groups)
            if e != epoch:
                epoch = e
                order = np.random.default_rng([self.seed, e]).permutation(self.num_groups).tolist()
            yield e * self.num_groups + order[i]


def collate(samples: Sequence[Dict[str, Union[torch.Tensor, str]]]) -> Dict[str, Union[torch.Tensor, List[str]]]:
    batch: Dict[str, Union[torch.Tensor, List[str]]] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else list(values)
    return batch
