"""Helpers shared by the training and annotation tests (no tests here)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from pdiff_core.data import DatasetWriter

MAPS = ("depth", "hed", "seg")


def shapes_image(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """A uint8 RGB picture of a few coloured rectangles on a coloured background."""
    image = np.empty((resolution, resolution, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    for _ in range(3):
        y, x = rng.integers(0, resolution - 4, 2)
        h, w = rng.integers(4, resolution // 2, 2)
        image[y : y + h, x : x + w] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image


def make_dataset(
    root: Path, groups: int = 6, items: int = 3, resolution: int = 32, maps: Sequence[str] = MAPS, seed: int = 0
) -> Path:
    """A small pdiff-groups dataset whose maps are simple functions of the image."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, maps=list(maps), resolution=resolution, source="test") as writer:
        for g in range(groups):
            group_items = []
            for _ in range(items):
                image = shapes_image(rng, resolution)
                gray = image.mean(axis=2).astype(np.uint8)
                derived = {
                    "depth": gray,
                    "hed": (np.abs(np.diff(gray.astype(int), axis=0, prepend=0)) > 10).astype(np.uint8) * 255,
                    "seg": (image // 128 * 255).astype(np.uint8),
                }
                group_items.append((image, {m: derived.get(m, gray) for m in maps}))
            writer.add_group(f"group {g} of shapes", group_items)
    return root
