"""Shared machinery of `pdiff eval` and `pdiff eval-toyworld`: which samples, batched and
resumable generation, and per-sample scores for the model and two baselines.

A sample is (task, group, example item, query item): the example pair is (source, target) of
the example item, the query and the truth come from the query item. Pair `p` of a group uses
items `p` and `p + 1` (so one pair per group is item 0 as example, item 1 as query). With K shots,
the K - 1 further example pairs are item `p` of the K - 1 groups that follow in the dataset
(wrapping round): the same task shown on other scenes.

Every finished sample is appended to `<out>/samples.jsonl` (and its output saved as a PNG under
`<out>/images/`), so a rerun skips it. Each sample has its own seeded generator, so its starting
noise does not depend on the batch size, on which samples a rerun still had to do, or on which
process made it.

Several processes (`accelerate launch -m pdiff_core.evaluation.cli eval ...`) share the pending
samples round-robin; each appends to its own `samples.rank-K.jsonl`, and the main process merges
them into `samples.jsonl` once all are done (a rerun merges what an interrupted one left) and alone
computes the table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..data import DatasetIndex, Group, GroupItem, Task, map_prompt, parse_task
from ..defaults import DEFAULT_MODEL, DTYPES
from ..image_io import gray_to_rgb
from ..loading import load_pipeline
from ..shots import DEFAULT_COMBINE
from .metrics import score

if TYPE_CHECKING:
    from accelerate import PartialState

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
SAMPLES_FILE = "samples.jsonl"
SHARD_FILE = "samples.rank-{}.jsonl"
IMAGES_DIR = "images"
BASELINES = ("example_target", "query")


@dataclass
class EvalConfig:
    """Settings shared by both evaluations. `None` model means the embedded default."""

    model: Optional[Path] = None
    data: Optional[Path] = None
    out: Path = Path("eval")
    tasks: Optional[List[str]] = None  # None: each command's default set
    # Rows of other tasks are marked "unseen". None: the model's prompt_diffusion.json, else the paper's six.
    trained_tasks: Optional[Sequence[str]] = None
    groups_limit: Optional[int] = None
    pairs_per_group: int = 1
    resolution: Optional[int] = None  # None: the dataset's
    steps: int = 20
    guidance: float = 5.0
    seed: int = 0
    batch_size: int = 8
    device: Optional[str] = None  # None: accelerate's device for this process (its own GPU under launch)
    dtype: str = "fp32"  # a key of pdiff_core.defaults.DTYPES
    compile: bool = False  # torch.compile the UNet and ControlNet (pays off over many batches)
    # "trained": the prompts training used (caption for inverse tasks, "depth map" etc. for forward
    # ones); "caption": always the caption; "empty": no text, so only the example pair tells the task.
    prompt: str = "trained"
    shots: int = 1  # example pairs per query (pdiff_core.shots)
    shot_combine: str = DEFAULT_COMBINE

    def fingerprint(self, model_path: Path, data_root: Path, resolution: int) -> Dict[str, Any]:
        """What makes stored samples reusable: the same model, data and sampling (the pairing is in
        each sample's key)."""
        return {
            "model": str(model_path.resolve()),
            "model_files": _folder_digest(model_path),
            "data": str(data_root.resolve()),
            "resolution": resolution,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
            "dtype": self.dtype,
            "prompt": self.prompt,
            # only when few-shot, so one-shot results stored before shots existed stay reusable
            **({"shots": self.shots, "shot_combine": self.shot_combine} if self.shots > 1 else {}),
        }


@dataclass(frozen=True)
class Sample:
    task: Task
    group: Group
    example_item: int
    query_item: int
    example_group: Optional[Group] = None  # None: `group`
    more_examples: Tuple[Tuple[Group, int], ...] = ()  # few-shot: (group, item) of each further example pair

    @property
    def example(self) -> GroupItem:
        return (self.example_group or self.group).items[self.example_item]

    @property
    def _example_id(self) -> str:
        return f"{self.example_group.id}." if self.example_group is not None else ""

    @property
    def key(self) -> str:
        return self._key("".join(f"+{group.id}:{item}" for group, item in self.more_examples))

    def _key(self, shots: str) -> str:
        return f"{self.task.name}/{self.group.id}/{self._example_id}{self.example_item}{shots}-{self.query_item}"

    @property
    def image_name(self) -> str:
        return f"{self.task.name}/{self.group.id}-{self._example_id}{self.example_item}-{self.query_item}.png"

    def seed(self, base: int) -> int:
        # crc32 is stable across processes (hash() of a str is not). The one-shot key, so that runs with
        # K shots start from the same noise as the one-shot run: K = 1, 2, 4 are compared pairwise.
        one_shot_key = self._key("")
        return (base * 1_000_003 + zlib.crc32(one_shot_key.encode())) % 2**63


@dataclass
class SampleImages:
    """The four images of a sample (uint8; maps stored single-channel stay HxW)."""

    example_source: np.ndarray
    example_target: np.ndarray
    query: np.ndarray
    truth: np.ndarray
    more_examples: Tuple[Tuple[np.ndarray, np.ndarray], ...] = ()  # few-shot: further (source, target)


def resolve_tasks(index: DatasetIndex, names: Optional[Sequence[str]], default: Sequence[str]) -> List[Task]:
    names = list(names) if names else list(default)
    if not names:
        raise ValueError(f"{index.root}: no tasks to evaluate (maps: {index.maps})")
    return [parse_task(name, index.maps) for name in names]


def plan_samples(
    index: DatasetIndex, tasks: Sequence[Task], groups_limit: Optional[int], pairs_per_group: int, shots: int = 1
) -> List[Sample]:
    """Every (task, group, pair) to evaluate, task by task in dataset order; with `shots` K > 1 each
    sample also takes item p of the K - 1 groups after its own as further example pairs."""
    if pairs_per_group < 1:
        raise ValueError(f"pairs per group must be at least 1, got {pairs_per_group}")
    if not 1 <= shots <= len(index.groups):
        raise ValueError(f"shots must be between 1 and the dataset's {len(index.groups)} groups, got {shots}")
    groups = index.groups[:groups_limit] if groups_limit else index.groups
    samples = []
    for task in tasks:
        for g, group in enumerate(groups):
            n = len(group.items)
            if pairs_per_group > n:
                raise ValueError(f"group {group.id} has {n} items: at most {n} pairs per group, got {pairs_per_group}")
            position = index.groups.index(group)
            if n == 1:
                if len(groups) == 1:
                    raise ValueError(
                        f"group {group.id} is a single photo and the only group: no other photo to take the example from"
                    )
                others = [index.groups[(position + j) % len(index.groups)] for j in range(2, shots + 1)]
                samples.append(
                    Sample(
                        task,
                        group,
                        0,
                        0,
                        example_group=groups[(g + 1) % len(groups)],
                        more_examples=tuple((o, 0) for o in others),
                    )
                )
                continue
            others = [index.groups[(position + j) % len(index.groups)] for j in range(1, shots)]
            samples.extend(
                Sample(task, group, p, (p + 1) % n, more_examples=tuple((o, p % len(o.items)) for o in others))
                for p in range(pairs_per_group)
            )
    return samples


def read_image(path: Path, resolution: int) -> np.ndarray:
    """uint8 HxW (single-channel file) or HxWx3, resized to `resolution` if it is not that size."""
    with Image.open(path) as im:
        im = im if im.mode in ("L", "RGB") else im.convert("RGB")
        if im.size != (resolution, resolution):
            im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
        return np.asarray(im)


def load_sample(sample: Sample, resolution: int) -> SampleImages:
    example_source, example_target = sample.task.paths(sample.example)
    query, truth = sample.task.paths(sample.group.items[sample.query_item])
    more = tuple(
        tuple(read_image(p, resolution) for p in sample.task.paths(group.items[item]))
        for group, item in sample.more_examples
    )
    return SampleImages(*(read_image(p, resolution) for p in (example_source, example_target, query, truth)), more)


PROMPT_MODES = ("trained", "caption", "empty")


def prompt_for(sample: Sample, mode: str = "trained") -> str:
    """The sample's prompt under `mode` (see EvalConfig.prompt)."""
    if mode == "empty":
        return ""
    if mode == "caption" or sample.task.inverse:
        return sample.group.caption
    return map_prompt(sample.task.map)


def score_sample(output: np.ndarray, images: SampleImages, inverse: bool) -> Dict[str, Dict[str, float]]:
    """Scores of the model's output and of the two baselines against the truth."""
    return {
        "model": score(output, images.truth, inverse),
        "example_target": score(images.example_target, images.truth, inverse),
        "query": score(images.query, images.truth, inverse),
    }


class ResultStore:
    """`samples.jsonl` in `out`, tied by `run.json` to the settings that produced it. Open it with
    `open_store`, which lets the main process check `run.json` and merge leftovers first."""

    def __init__(self, out: Path, fingerprint: Dict[str, Any], state: Optional["PartialState"] = None) -> None:
        self.state = state or process_state()
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        run_file = self.out / RUN_FILE
        if run_file.is_file():
            stored = json.loads(run_file.read_text())
            changed = {
                k: (stored.get(k), fingerprint.get(k))
                for k in {**stored, **fingerprint}
                if stored.get(k) != fingerprint.get(k)
            }
            samples = self.out / SAMPLES_FILE
            stored_nothing = not samples.is_file() or samples.stat().st_size == 0
            if changed and not stored_nothing:
                detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
                raise ValueError(f"{self.out} holds results of another run ({detail}); choose another output folder")
            if changed:  # a run that failed before its first sample: nothing of it to keep
                logger.info("%s: replacing the settings of an earlier run that stored no result", run_file)
                run_file.write_text(json.dumps(fingerprint, indent=2) + "\n")
        else:
            run_file.write_text(json.dumps(fingerprint, indent=2) + "\n")
        self.path = self.out / SAMPLES_FILE
        # Each process appends to a file of its own; one process writes samples.jsonl directly.
        sharded = self.state.num_processes > 1
        self.write_path = self.out / SHARD_FILE.format(self.state.process_index) if sharded else self.path
        self.done: Dict[str, Dict[str, Any]] = {}
        if self.state.is_main_process:
            self.merge()
        else:
            self.done = dict(self._read(self.path))

    def _read(self, path: Path) -> Iterable[Tuple[str, Dict[str, Any]]]:
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interrupted run; that sample is redone
            if (self.out / IMAGES_DIR / record["image"]).is_file():
                yield record["key"], record

    def merge(self) -> None:
        """Main process: fold every process's file into samples.jsonl, dropping cut lines."""
        shards = sorted(self.out.glob(SHARD_FILE.format("*")))
        text = self.path.read_text() if self.path.is_file() else ""
        self.done = dict(self._read(self.path))
        clean = len(self.done) == len(text.splitlines()) and (not text or text.endswith("\n"))
        for shard in shards:
            self.done.update(self._read(shard))
        if shards or not clean:
            # Rewrite (never append onto a cut line), then drop the merged files.
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text("".join(json.dumps(r) + "\n" for r in self.done.values()))
            os.replace(partial, self.path)
            for shard in shards:
                shard.unlink()

    def append(self, record: Dict[str, Any]) -> None:
        with self.write_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.done[record["key"]] = record


def process_state() -> "PartialState":
    """This process's place among those `accelerate launch` started (one process without it)."""
    from accelerate import PartialState

    return PartialState()


def open_store(out: Path, fingerprint: Dict[str, Any]) -> ResultStore:
    """The result store of this process; every process sees the same finished samples."""
    state = process_state()
    with state.main_process_first():
        store = ResultStore(out, fingerprint, state)
    state.wait_for_everyone()  # no process writes before all have read
    return store


def run_samples(
    pipe: Callable[..., Any],
    samples: Sequence[Sample],
    store: ResultStore,
    config: EvalConfig,
    resolution: int,
) -> List[Dict[str, Any]]:
    """Generate and score every sample not yet in `store`, `config.batch_size` at a time, this
    process's share of them when there are several; returns, on the main process, the records of
    all `samples` in order once every process is done (an empty list on the others)."""
    state = store.state
    pending = [s for s in samples if s.key not in store.done]
    if len(pending) < len(samples) and state.is_main_process:
        logger.info("%d of %d samples already done in %s", len(samples) - len(pending), len(samples), store.path)
    mine = pending[state.process_index :: state.num_processes]
    if state.num_processes > 1:
        logger.info(
            "process %d of %d: %d of %d pending samples",
            state.process_index,
            state.num_processes,
            len(mine),
            len(pending),
        )
    bar = tqdm(total=len(mine), unit="sample", desc="eval", disable=not state.is_local_main_process)
    for start in range(0, len(mine), config.batch_size):
        batch = mine[start : start + config.batch_size]
        images = [load_sample(s, resolution) for s in batch]
        shots = [([gray_to_rgb(i.example_source) for i in images], [gray_to_rgb(i.example_target) for i in images])]
        shots += [
            ([gray_to_rgb(i.more_examples[k][0]) for i in images], [gray_to_rgb(i.more_examples[k][1]) for i in images])
            for k in range(config.shots - 1)
        ]
        few_shot = (
            dict(example_pairs=shots, shot_combine=config.shot_combine)
            if config.shots > 1
            else dict(example_pair=shots[0])
        )
        outputs = pipe(
            [prompt_for(s, config.prompt) for s in batch],
            **few_shot,
            query=[gray_to_rgb(i.query) for i in images],
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            generator=[torch.Generator().manual_seed(s.seed(config.seed)) for s in batch],
            output_type="np",
        ).images
        for sample, sample_images, output in zip(batch, images, outputs):
            # Scores are taken on the saved 8-bit output so they can be recomputed from the PNG.
            output = np.round(np.clip(output, 0, 1) * 255).astype(np.uint8)
            path = store.out / IMAGES_DIR / sample.image_name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(output).save(path)
            store.append(
                {
                    "key": sample.key,
                    "task": sample.task.name,
                    "group": sample.group.id,
                    "example_group": (sample.example_group or sample.group).id,
                    "example_item": sample.example_item,
                    "query_item": sample.query_item,
                    **(
                        {"more_examples": [[g.id, item] for g, item in sample.more_examples]}
                        if sample.more_examples
                        else {}
                    ),
                    "image": sample.image_name,
                    "scores": score_sample(output, sample_images, sample.task.inverse),
                }
            )
        bar.update(len(batch))
    bar.close()
    state.wait_for_everyone()
    if not state.is_main_process:
        return []
    store.merge()
    missing = [s.key for s in samples if s.key not in store.done]
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no result after all processes finished, e.g. {missing[0]}")
    return [store.done[s.key] for s in samples]


def mean_scores(records: Iterable[Dict[str, Any]], task: str) -> Dict[str, Dict[str, float]]:
    """{"model" | baseline: {metric: mean over the task's samples}}."""
    mine = [r["scores"] for r in records if r["task"] == task]
    return (
        {who: {m: float(np.mean([s[who][m] for s in mine])) for m in mine[0][who]} for who in ("model", *BASELINES)}
        if mine
        else {}
    )


def model_path(config: EvalConfig) -> Path:
    """`config.model`, or the embedded default; must be a pipeline folder."""
    path = Path(config.model) if config.model is not None else DEFAULT_MODEL
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"--model: {path} is not a pipeline folder (no model_index.json)")
    return path


def load_model(config: EvalConfig) -> Any:
    """The pipeline at `model_path(config)` on `config.device`, without per-step progress bars."""
    if config.dtype not in DTYPES:
        raise ValueError(f"dtype {config.dtype!r}: expected one of {sorted(DTYPES)}")
    pipe = load_pipeline(model_path(config), dtype=DTYPES[config.dtype], device=config.device or process_state().device)
    pipe.set_progress_bar_config(disable=True)
    if config.compile:
        # diffusers' idiom; compiled modules compute the same samples, so stored ones stay valid.
        pipe.unet = torch.compile(pipe.unet)
        pipe.controlnet = torch.compile(pipe.controlnet)
    return pipe


def dataset_resolution(index: DatasetIndex, config: EvalConfig) -> int:
    resolution = config.resolution or int(index.meta["resolution"])
    if resolution % 8:
        raise ValueError(f"resolution {resolution} is not a multiple of 8; pass --resolution")
    return resolution


def write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def config_dict(config: EvalConfig) -> Dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}


def _folder_digest(folder: Path) -> str:
    """Names, sizes and mtimes of a model folder's files: retraining into the same folder
    changes it, so old samples are not mixed with a new model's."""
    digest = hashlib.sha1()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
