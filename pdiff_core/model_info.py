"""`prompt_diffusion.json` beside a pipeline's `model_index.json`: what a model was trained on and
the guidance it does best with, so that the CLI, the evaluation and the workflows need not guess.

    {"trained_tasks": ["depth", "inv_depth", ...], "guidance_scale": 1.5}

Both keys are optional; a folder without the file (the authors' model, any diffusers folder) gets
the paper's six tasks and the authors' guidance 9.0.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .data import STANDARD_TASKS

MODEL_INFO_FILE = "prompt_diffusion.json"
AUTHORS_GUIDANCE = 9.0


class ModelInfoError(ValueError):
    """A `prompt_diffusion.json` that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class ModelInfo:
    trained_tasks: List[str]
    guidance_scale: float


def read_model_info(folder: Union[str, Path]) -> ModelInfo:
    """The folder's `prompt_diffusion.json`, with the defaults for what it does not say."""
    path = Path(folder) / MODEL_INFO_FILE
    raw = {}
    if path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelInfoError(f"{path}: not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise ModelInfoError(f"{path}: expected an object with trained_tasks and guidance_scale")
    tasks = raw.get("trained_tasks", list(STANDARD_TASKS))
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise ModelInfoError(f"{path}: trained_tasks: expected a list of task names, got {tasks!r}")
    guidance = raw.get("guidance_scale", AUTHORS_GUIDANCE)
    if (
        isinstance(guidance, bool)
        or not isinstance(guidance, (int, float))
        or not math.isfinite(guidance)
        or guidance < 1
    ):
        raise ModelInfoError(f"{path}: guidance_scale: expected a number >= 1, got {guidance!r}")
    return ModelInfo(trained_tasks=list(tasks), guidance_scale=float(guidance))


def write_model_info(folder: Union[str, Path], trained_tasks: Sequence[str], guidance_scale: Optional[float]) -> Path:
    """Write `prompt_diffusion.json` into `folder` (a pipeline folder); returns its path."""
    info = {"trained_tasks": list(trained_tasks)}
    if guidance_scale is not None:
        info["guidance_scale"] = float(guidance_scale)
    path = Path(folder) / MODEL_INFO_FILE
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path
