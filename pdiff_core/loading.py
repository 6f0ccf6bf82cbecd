"""Loading a `PromptDiffusionPipeline` from a local folder: the one place the CLI, the demo and
the evaluation get a model from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .checkpoints import CheckpointError, read_controlnet

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "unipc": "UniPCMultistepScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}


def check_model_argument(model: Path) -> None:
    """--model names an existing pipeline folder, or (where a network exists) a hub id owner/name."""
    if not Path(model).exists() and not HUB_ID.fullmatch(str(model)):
        raise FileNotFoundError(f"--model: no such pipeline folder: {model} (nor a hub id owner/name)")
    if Path(model).exists() and not (Path(model) / "model_index.json").is_file():
        raise FileNotFoundError(f"--model: {model} is not a pipeline folder: model_index.json is missing")


def load_pipeline(
    model: Union[str, Path],
    controlnet: Optional[Union[str, Path]] = None,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    scheduler: Optional[str] = None,
) -> Any:
    """A `PromptDiffusionPipeline` from a local pipeline folder (or, where a network exists, a hub
    id), optionally with another Prompt Diffusion ControlNet (any supported checkpoint) and one of
    `SCHEDULERS`."""
    import diffusers

    from .pipeline import ControlNetMismatchError, PromptDiffusionPipeline

    check_model_argument(model)
    kwargs = {"torch_dtype": dtype}
    if controlnet is not None:
        kwargs["controlnet"] = read_controlnet(controlnet).build(dtype)
    try:
        pipe = PromptDiffusionPipeline.from_pretrained(str(model), **kwargs)
    except ControlNetMismatchError as err:
        raise CheckpointError(f"--controlnet {controlnet} does not fit --model {model}: {err}") from None
    except OSError as err:  # diffusers' word for a missing or unreadable component file, or a hub id not reachable
        raise CheckpointError(f"--model {model}: {err}") from None
    if scheduler is not None:
        pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    return pipe.to(device)
