"""`pdiff eval`: the paper's protocol, to compare a checkpoint with its Table 1.

Inverse tasks (depth/hed/seg -> image): FID between the generated images and the real images
they should reproduce (the query items' images of the held-out split). Forward tasks
(image -> depth/hed/seg): RMSE on [0, 1] between the generated maps and the dataset's annotator
maps. Sampling as the authors: DDIM, 50 steps, guidance 9.0. Works on any `pdiff-groups`
dataset (real data from `python -m training.annotate`, or the toy world; FID of 64 px toy images
is not comparable with the paper's numbers, which are for 256 px photos).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data import DatasetIndex, Task
from ..image_io import gray_to_rgb
from .metrics import images_to_batch, load_inception, make_fid
from .runner import (
    BASELINES,
    IMAGES_DIR,
    EvalConfig,
    config_dict,
    dataset_resolution,
    load_model,
    load_sample,
    mean_scores,
    model_path,
    open_store,
    plan_samples,
    process_state,
    resolve_tasks,
    run_samples,
    write_json,
)

logger = logging.getLogger(__name__)

# Table 1 of "In-Context Learning Unlocked for Diffusion Models" (FID / RMSE, lower is better).
PAPER_RESULTS = {
    "Prompt Diffusion (paper)": {
        "inv_depth": 18.60,
        "inv_hed": 13.35,
        "inv_seg": 19.46,
        "depth": 0.21,
        "hed": 0.14,
        "seg": 0.31,
    },
    "ControlNet, task-specific (paper)": {
        "inv_depth": 19.81,
        "inv_hed": 13.07,
        "inv_seg": 20.71,
        "depth": 0.20,
        "hed": 0.18,
        "seg": 0.36,
    },
}
# The paper's column order: map -> image tasks, then image -> map tasks.
PAPER_ORDER = ("inv_depth", "inv_hed", "inv_seg", "depth", "hed", "seg")
MAP_TITLES = {"depth": "Depth", "hed": "HED", "seg": "Seg"}
DIGITS = {"fid": 2, "rmse": 3}
ROW_NAMES = {
    "model": "this model",
    "example_target": "baseline: return the example target",
    "query": "baseline: return the query",
}


@dataclass
class PaperEvalConfig(EvalConfig):
    out: Path = Path("eval")  # tasks=None: the paper's six (those the dataset has maps for)
    steps: int = 50
    guidance: float = 9.0
    inception_weights: Optional[Path] = None  # None: torch-fidelity's cache file
    fid_batch_size: int = 32


@dataclass
class PaperColumn:
    """One task: its metric, the paper's numbers and ours (model and baselines)."""

    task: str
    metric: str
    title: str
    ours: Dict[str, float]  # "model" and each baseline
    paper: Dict[str, Optional[float]]
    samples: int


def default_tasks(index: DatasetIndex) -> List[str]:
    return [t for t in PAPER_ORDER if t.removeprefix("inv_") in index.maps]


def column_title(task: Task, metric: str) -> str:
    name = MAP_TITLES.get(task.map, task.map.replace("_", " ").title())
    return f"{name}→Image {metric.upper()} ↓" if task.inverse else f"Image→{name} {metric.upper()} ↓"


def run_paper_eval(
    config: PaperEvalConfig, pipe: Any = None, feature_extractor: Optional[torch.nn.Module] = None
) -> List[PaperColumn]:
    """Evaluate, write `results.md` and `results.json` into `config.out`, return the columns.
    `pipe`: an already loaded pipeline for `config.model`; `feature_extractor`: the FID network
    (default: the standard Inception from `config.inception_weights`). Under several processes
    each generates its share; the main process alone scores and writes (the others return [])."""
    if config.data is None:
        raise ValueError("--data: pass the held-out split (a pdiff-groups dataset folder)")
    index = DatasetIndex.load(config.data)
    resolution = dataset_resolution(index, config)
    tasks = resolve_tasks(index, config.tasks, default_tasks(index))
    state = process_state()
    if feature_extractor is None and any(t.inverse for t in tasks) and state.is_main_process:
        # Before any generation: a missing weights file should not cost a whole run.
        feature_extractor = load_inception(config.inception_weights)
    samples = plan_samples(index, tasks, config.groups_limit, config.pairs_per_group, config.shots)
    model = model_path(config)
    store = open_store(Path(config.out), config.fingerprint(model, Path(config.data), resolution))
    if pipe is None:
        pipe = load_model(config)
    records = run_samples(pipe, samples, store, config, resolution)
    if not state.is_main_process:
        return []

    by_key = {s.key: s for s in samples}
    columns = []
    for task in tasks:
        mine = [r for r in records if r["task"] == task.name]
        if task.inverse:
            metric = "fid"
            ours = fid_scores(
                [by_key[r["key"]] for r in mine], store.out, resolution, feature_extractor, config.fid_batch_size
            )
        else:
            metric = "rmse"
            ours = {who: scores["rmse"] for who, scores in mean_scores(records, task.name).items()}
        paper = {name: numbers.get(task.name) for name, numbers in PAPER_RESULTS.items()}
        columns.append(PaperColumn(task.name, metric, column_title(task, metric), ours, paper, len(mine)))

    classical = sorted({t.map for t in tasks} & set(index.meta.get("classical_maps", [])))
    markdown = format_table(columns, model, Path(config.data), config, classical)
    (store.out / "results.md").write_text(markdown)
    write_json(
        store.out / "results.json",
        {
            "model": str(model),
            "data": str(config.data),
            "config": config_dict(config),
            "columns": [vars(c) for c in columns],
            "classical_maps": classical,
        },
    )
    logger.info("results in %s\n%s", store.out / "results.md", markdown)
    return columns


@torch.no_grad()
def fid_scores(
    samples: List[Any], out: Path, resolution: int, feature_extractor: torch.nn.Module, batch_size: int
) -> Dict[str, float]:
    """FID against the samples' real images of the model's outputs and of each baseline."""
    if len(samples) < 2:
        raise ValueError(f"FID needs at least 2 samples per task, got {len(samples)}; evaluate more groups")
    feature_extractor.eval()
    fid = make_fid(feature_extractor)
    results = {}
    bar = tqdm(total=4 * len(samples), desc=f"FID {samples[0].task.name}", unit="image", leave=False)
    for who in ("real", "model", *BASELINES):
        for start in range(0, len(samples), batch_size):
            batch = samples[start : start + batch_size]
            if who == "model":
                images = [np.asarray(Image.open(out / IMAGES_DIR / s.image_name).convert("RGB")) for s in batch]
            else:
                attribute = "truth" if who == "real" else who  # baselines are SampleImages fields
                images = [gray_to_rgb(getattr(load_sample(s, resolution), attribute)) for s in batch]
            fid.update(images_to_batch(images), real=who == "real")
            bar.update(len(batch))
        if who != "real":
            results[who] = float(fid.compute())
            fid.reset()  # keeps the real features (reset_real_features=False)
    bar.close()
    return results


def format_table(
    columns: List[PaperColumn], model: Path, data: Path, config: EvalConfig, classical: Sequence[str] = ()
) -> str:
    """The Markdown table; `classical`: maps made by classical stand-ins, named in a note since
    their columns do not measure what the paper's do."""

    def cells(values: List[Optional[float]]) -> str:
        return " | ".join("—" if v is None else f"{v:.{DIGITS[c.metric]}f}" for v, c in zip(values, columns))

    lines = [
        f"Model `{model}` on `{data}`: DDIM {config.steps} steps, guidance {config.guidance}, seed {config.seed}; "
        + ", ".join(f"{c.task}: {c.samples} samples" for c in columns)
        + ".",
        "",
        "| method | " + " | ".join(c.title for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for name in PAPER_RESULTS:
        lines.append(f"| {name} | {cells([c.paper[name] for c in columns])} |")
    for who in ("model", *BASELINES):
        lines.append(f"| {ROW_NAMES[who]} | {cells([c.ours[who] for c in columns])} |")
    if classical:
        lines += [
            "",
            f"Not comparable with the paper: this dataset's {', '.join(classical)} maps were made by classical "
            "stand-ins (Sobel edges, k-means regions; `dataset.json` classical_maps), not the paper's annotators "
            "(MiDaS, HED, UniFormer), so the columns of those maps measure another task than the paper's.",
        ]
    return "\n".join(lines) + "\n"
