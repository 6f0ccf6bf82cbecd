"""Write toyworld groups as a `pdiff-groups` dataset (see docs/dataset-format.md)."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from functools import partial
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from ..data import DatasetWriter
from .render import ALL_MAPS, render
from .scene import SEG_CLASSES, sample_group, sample_item

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # 2: the maps shading .. bgr
GroupData = Tuple[str, List[Tuple[np.ndarray, Dict[str, np.ndarray]]]]


def render_group(
    index: int,
    seed: int = 0,
    items_per_group: int = 4,
    resolution: int = 64,
    maps: Sequence[str] = ALL_MAPS,
    supersample: int = 2,
) -> GroupData:
    """Caption and (image, maps) items of group `index`; depends only on the
    arguments, so any worker may render any group."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    spec = sample_group(rng)
    items = []
    for _ in range(items_per_group):
        r = render(sample_item(rng, spec), resolution, supersample)
        items.append((r.image, r.maps(maps)))
    return spec.caption, items


def _groups(n_groups: int, workers: int, job: partial) -> Iterator[GroupData]:
    if workers <= 1:
        yield from map(job, range(n_groups))
        return
    # spawn: safe when the caller has threads (torch, tqdm); results stay in order.
    with mp.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(job, range(n_groups), chunksize=max(1, min(16, n_groups // (8 * workers))))


def iter_groups(
    n_groups: int,
    seed: int = 0,
    items_per_group: int = 4,
    resolution: int = 64,
    maps: Sequence[str] = ALL_MAPS,
    supersample: int = 2,
    workers: Optional[int] = None,
) -> Iterator[GroupData]:
    """Groups `0 .. n_groups - 1` in order, rendered in memory by `workers` processes (default:
    all cores); the same pixels `generate` writes."""
    if workers is None:
        workers = default_workers(n_groups)
    job = partial(
        render_group,
        seed=seed,
        items_per_group=items_per_group,
        resolution=resolution,
        maps=tuple(maps),
        supersample=supersample,
    )
    yield from _groups(n_groups, workers, job)


def default_workers(n_groups: int) -> int:
    """All cores, but no more than one worker per 8 groups."""
    return min(os.cpu_count() or 1, max(1, n_groups // 8))


def generate(
    root: Union[str, Path],
    n_groups: int,
    items_per_group: int = 4,
    resolution: int = 64,
    seed: int = 0,
    maps: Sequence[str] = ALL_MAPS,
    overwrite: bool = False,
    progress: bool = True,
    workers: Optional[int] = None,
    supersample: int = 2,
) -> Path:
    """Render `n_groups` groups into `root`; the same arguments give the same bytes
    whatever `workers` is. Returns `root`."""
    unknown = [m for m in maps if m not in ALL_MAPS]
    if unknown:
        raise ValueError(f"unknown toyworld map(s) {unknown}; available: {list(ALL_MAPS)}")
    if n_groups < 1 or items_per_group < 2:
        raise ValueError(f"need n_groups >= 1 and items_per_group >= 2, got {n_groups}, {items_per_group}")
    if workers is None:
        workers = default_workers(n_groups)
    meta = {
        "generator": "pdiff_core.toyworld",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "items_per_group": items_per_group,
        "supersample": supersample,
        "seg_classes": {k: {"ade20k": name, "index": i, "color": list(c)} for k, (name, i, c) in SEG_CLASSES.items()},
        "conventions": {
            "depth": "inverse z-depth, min-max normalised per image, near=255, sky=0",
            "normal": "camera space: R=right, G=up, B=towards camera, (n+1)/2*255, sky=0",
            "albedo": "unlit sRGB base colour; the sky is its own colour",
            "hed": "blurred object, crease, depth and (weaker) texture edges, white on black",
            "gray": "BT.601 luma of the image",
            "shading": "half the luminance of the image over that of its albedo (linear light, sRGB-encoded), sky=255",
            "instance": "one colour per object in scene order (render.INSTANCE_COLORS), floor grey, sky black",
            "far": "255 - depth: far bright, sky=255",
            "edges": "1-pixel object outlines (a 4-neighbour of another object), white on black",
            "quant": "the image posterised to 3 levels per channel",
            "invert": "255 - image",
            "bgr": "the image with red and blue swapped",
        },
    }
    root = Path(root)
    logger.info(
        "toyworld: %d groups x %d items at %dpx into %s (%d workers)",
        n_groups,
        items_per_group,
        resolution,
        root,
        workers,
    )
    with DatasetWriter(root, maps, resolution, "toyworld", overwrite=overwrite, **meta) as writer:
        bar = tqdm(total=n_groups, unit="group", disable=not progress, desc="toyworld")
        groups = iter_groups(n_groups, seed, items_per_group, resolution, maps, supersample, workers)
        for caption, items in groups:
            writer.add_group(caption, items)
            bar.update()
        bar.close()
    return root
