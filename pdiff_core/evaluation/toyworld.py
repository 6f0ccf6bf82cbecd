"""`pdiff eval-toyworld`: every task of held-out toy-world scenes, scored against exact maps.

Forward tasks (image -> map) are scored by RMSE, inverse tasks (map -> image) by PSNR and SSIM,
each beside two baselines that need no model: "return the example target" and "return the
query". A model that has learnt a task beats both. Tasks the model was never trained on
(normal, albedo, gray and their inverses by default) are the in-context test.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, List, Optional

from ..data import DatasetIndex, Task
from ..model_info import read_model_info
from ..toyworld import GENERATOR_VERSION, generate
from .metrics import better
from .runner import (
    EvalConfig,
    config_dict,
    dataset_resolution,
    load_model,
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

# Training draws its scenes from seeds 0.. ; the held-out world uses a far-away seed.
HELDOUT_SEED = 100000
HELDOUT_GROUPS = 100
HELDOUT_RESOLUTION = 64
METRIC_NAMES = {"rmse": "RMSE ↓", "psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑"}
DIGITS = {"rmse": 4, "psnr": 2, "ssim": 4}


@dataclass
class ToyworldEvalConfig(EvalConfig):
    out: Path = Path("eval-toyworld")
    # None: the model's prompt_diffusion.json (the embedded model's best on a validation world,
    # seed 200000; see its card), else the authors' 9.0.
    guidance: Optional[float] = None
    cache_dir: Optional[Path] = None  # where the default held-out set is generated
    heldout_groups: int = HELDOUT_GROUPS


@dataclass
class ToyworldRow:
    task: str
    seen: bool
    metric: str
    model: float
    example_target: float
    query: float
    samples: int

    @property
    def beats_both(self) -> bool:
        return better(self.metric, self.model, self.example_target) and better(self.metric, self.model, self.query)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pdiff"


def heldout_dataset(
    cache_dir: Optional[Path] = None, groups: int = HELDOUT_GROUPS, resolution: int = HELDOUT_RESOLUTION
) -> Path:
    """The held-out toy world (seed 100000), generated once into the cache folder."""
    # The generator version is in the name: a newer toy world (more maps) is generated anew.
    name = f"toyworld-v{GENERATOR_VERSION}-heldout-seed{HELDOUT_SEED}-{groups}g-{resolution}px"
    root = Path(cache_dir or default_cache_dir()) / name
    if (root / "dataset.json").is_file():
        return root
    # Generate beside it and rename: a concurrent or interrupted run never leaves half a dataset there.
    partial = root.with_name(f"{root.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    logger.info("generating the held-out toy world (%d groups, seed %d) into %s", groups, HELDOUT_SEED, root)
    generate(partial, groups, resolution=resolution, seed=HELDOUT_SEED)
    try:
        partial.rename(root)
    except OSError:
        if not (root / "dataset.json").is_file():
            raise
        shutil.rmtree(partial)  # another run finished first; same seed, same bytes
    return root


def all_tasks(index: DatasetIndex, trained: List[str]) -> List[str]:
    """Every forward and inverse task of the dataset's maps: trained ones first, forward before inverse."""
    names = list(index.maps) + [f"inv_{m}" for m in index.maps]
    return sorted(names, key=lambda n: (n not in trained, n.startswith("inv_")))


def with_model_defaults(config: ToyworldEvalConfig, model: Path) -> ToyworldEvalConfig:
    """`config` with the guidance and trained tasks it leaves open taken from the model's
    prompt_diffusion.json."""
    info = read_model_info(model)
    return replace(
        config,
        guidance=info.guidance_scale if config.guidance is None else config.guidance,
        trained_tasks=info.trained_tasks if config.trained_tasks is None else list(config.trained_tasks),
    )


def run_toyworld_eval(config: ToyworldEvalConfig, pipe: Any = None) -> List[ToyworldRow]:
    """Evaluate, write `results.md` and `results.json` into `config.out`, return the rows.
    `pipe`: an already loaded pipeline for `config.model` (default: load it). Under several
    processes each generates its share; the main process alone writes the table (the others return [])."""
    state = process_state()
    if config.data is not None:
        root = Path(config.data)
    else:
        with state.main_process_first():
            root = heldout_dataset(config.cache_dir, config.heldout_groups, config.resolution or HELDOUT_RESOLUTION)
    index = DatasetIndex.load(root)
    resolution = dataset_resolution(index, config)
    model = model_path(config)
    config = with_model_defaults(config, model)
    trained = list(config.trained_tasks)
    tasks = resolve_tasks(index, config.tasks, all_tasks(index, trained))
    samples = plan_samples(index, tasks, config.groups_limit, config.pairs_per_group, config.shots)
    store = open_store(Path(config.out), config.fingerprint(model, root, resolution))
    if pipe is None:
        pipe = load_model(config)
    records = run_samples(pipe, samples, store, config, resolution)
    if not state.is_main_process:
        return []

    rows = rows_from_records(records, tasks, trained)
    markdown = format_table(rows, model, root, config)
    (Path(config.out) / "results.md").write_text(markdown)
    write_json(
        Path(config.out) / "results.json",
        {
            "model": str(model),
            "data": str(root),
            "config": config_dict(config),
            "rows": [{**asdict(r), "beats_both": r.beats_both} for r in rows],
        },
    )
    logger.info("results in %s\n%s", Path(config.out) / "results.md", markdown)
    return rows


def rows_from_records(records: List[dict], tasks: List[Task], trained: List[str]) -> List[ToyworldRow]:
    rows = []
    for task in tasks:
        means = mean_scores(records, task.name)
        count = sum(r["task"] == task.name for r in records)
        for metric in means["model"]:
            rows.append(
                ToyworldRow(
                    task=task.name,
                    seen=task.name in trained,
                    metric=metric,
                    model=means["model"][metric],
                    example_target=means["example_target"][metric],
                    query=means["query"][metric],
                    samples=count,
                )
            )
    return rows


def format_table(rows: List[ToyworldRow], model: Path, data: Path, config: EvalConfig) -> str:
    lines = [
        f"Model `{model}` on `{data}`: {config.steps} steps, guidance {config.guidance}, seed {config.seed}; "
        f"{rows[0].samples if rows else 0} samples per task (example from item p, query from item p+1 of each group"
        + (
            f"; {config.shots} shots: also item p of the {config.shots - 1} next groups, {config.shot_combine} averaged)."
            if config.shots > 1
            else ")."
        ),
        "",
        "| task | seen/unseen | metric | model | example-target baseline | query baseline | beats both? |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = DIGITS[r.metric]
        lines.append(
            f"| {r.task} | {'seen' if r.seen else 'unseen'} | {METRIC_NAMES[r.metric]} | {r.model:.{d}f} | "
            f"{r.example_target:.{d}f} | {r.query:.{d}f} | {'yes' if r.beats_both else 'no'} |"
        )
    return "\n".join(lines) + "\n"
