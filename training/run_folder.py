"""A training run's files on disk: never mixed with another run's, written atomically, and checked
before a resume trusts them.

accelerate's `load_state` only logs when it cannot read the RNG states, and then the run is no
longer exact; a truncated optimizer file surfaces as a bare unpickling error. So every file of a
checkpoint is opened here first, and a failure names the file.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open

from pdiff_core.jsonl import JsonLinesError, read_jsonl

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
# What a run writes into train.output_dir (logs and validation grids included: they would mix).
RUN_OUTPUTS = (
    CHECKPOINT_DIR,
    METRICS_FILE,
    "pipeline",
    "controlnet.safetensors",
    "vae",
    "validation",
    "logs",
    "checksums",
    "tokenizer",
)


class CheckpointRestoreError(ValueError):
    """A checkpoint (or a run's files) that cannot be trusted; the message names the file."""


def prepare_output_dir(output_dir: Path, overwrite: bool, resume: bool, remove: bool = True) -> None:
    """Refuse an output folder that holds another run unless resuming it or told to overwrite it;
    with `overwrite`, remove that run's outputs (and nothing else) first, where `remove` (one
    process of a distributed run does)."""
    found = [name for name in RUN_OUTPUTS[:5] if (output_dir / name).exists()]
    if not found or resume:
        return
    if not overwrite:
        raise CheckpointRestoreError(
            f"train.output_dir {output_dir} holds a run ({', '.join(found)}); pass --resume latest to continue it, "
            f"--overwrite to replace it, or choose another train.output_dir"
        )
    if not remove:
        return
    for name in RUN_OUTPUTS:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    logger.warning("--overwrite: removed the previous run's outputs from %s", output_dir)


def write_atomic(path: Path, text: str) -> None:
    """Write `path` through a temporary file in its folder and a rename: a reader (or a kill)
    sees the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The records of a metrics.jsonl, read as `pdiff_core.jsonl` reads every appended file: a torn
    last line (a kill while appending) is dropped with a warning, a broken line before it is an error."""
    try:
        return read_jsonl(path, check=_check_metrics_record)
    except JsonLinesError as err:
        raise CheckpointRestoreError(str(err)) from None


def _check_metrics_record(record: Any) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("no integer 'step'")


def read_trainer_state(folder: Path) -> Dict[str, Any]:
    path = folder / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        if not all(isinstance(state.get(k), int) for k in ("step", "samples")) or not isinstance(
            state.get("stage"), str
        ):
            raise ValueError("expected integer 'step' and 'samples' and a 'stage'")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointRestoreError(f"{path}: not a trainer state ({err})") from None
    return state


def verify_checkpoint(folder: Path, process_index: int) -> None:
    """Open every file accelerate will read from `folder` (safetensors headers, torch files through
    accelerate's weights-only loader, this process's RNG states); raise naming the first bad one."""
    read_trainer_state(folder)
    rng_file = folder / f"random_states_{process_index}.pkl"
    if not rng_file.is_file():
        raise CheckpointRestoreError(
            f"{rng_file}: not found; without it a resumed run is not exact "
            f"(was the checkpoint saved by fewer processes?)"
        )
    for path in sorted(folder.iterdir()):
        if path.name.startswith("custom_checkpoint_") or not path.is_file():
            continue  # accelerate's custom-object pickles are never read (see ema_state)
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), "pt") as f:
                    for key in f.keys():
                        f.get_slice(key)
            elif path.suffix == ".bin":
                accelerate_load(str(path), map_location="cpu", mmap=True)
            elif path.suffix == ".pkl" and path.name.startswith("random_states_"):
                accelerate_load(str(path))
        except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            raise CheckpointRestoreError(f"{path}: cannot be restored ({type(err).__name__}: {err})") from None


def find_checkpoint(output_dir: Path, resume: str, process_index: int = 0) -> Path:
    """`latest` (the highest step in output_dir/checkpoints that verifies, falling back past broken
    ones with a warning) or a given checkpoint folder (verified)."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).is_file():
            raise FileNotFoundError(f"--resume {resume}: not a checkpoint folder (no {TRAINER_STATE})")
        verify_checkpoint(path, process_index)
        newer = [
            p.name
            for p in sorted((output_dir / CHECKPOINT_DIR).glob(CHECKPOINT_PREFIX + "*"))
            if p.name > path.name and path.parent.resolve() == (output_dir / CHECKPOINT_DIR).resolve()
        ]
        if newer:
            logger.warning(
                "--resume %s: later checkpoints %s belong to the run being redone; until this run "
                "replaces them, --resume latest would pick them",
                path,
                newer,
            )
        return path
    found = sorted((output_dir / CHECKPOINT_DIR).glob(CHECKPOINT_PREFIX + "*"), reverse=True)
    found = [p for p in found if (p / TRAINER_STATE).is_file()]
    if not found:
        raise FileNotFoundError(f"--resume latest: no checkpoint in {output_dir / CHECKPOINT_DIR}")
    errors = []
    for path in found:
        try:
            verify_checkpoint(path, process_index)
        except CheckpointRestoreError as err:
            errors.append(str(err))
            logger.warning("--resume latest: skipping %s: %s", path, err)
            continue
        if errors:
            logger.warning("--resume latest: resuming from the older %s", path)
        return path
    raise CheckpointRestoreError(
        f"--resume latest: no checkpoint in {output_dir / CHECKPOINT_DIR} can be restored: " + "; ".join(errors)
    )
