"""The EMA weights of a checkpoint as `ema.safetensors`: tensors plus JSON settings, no pickle.

accelerate saves objects registered for checkpointing as `custom_checkpoint_N.pkl` and reads
them back with `torch.load(weights_only=False)`, so a planted checkpoint could run code. The EMA
state is saved here instead; an older checkpoint's pickle is read only with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

EMA_FILE = "ema.safetensors"
LEGACY_EMA_FILE = "custom_checkpoint_0.pkl"  # accelerate's name for the first registered object
SETTINGS_KEY = "ema"


class EMAStateError(ValueError):
    """An EMA state that cannot be restored; the message names the file."""


def save_ema(ema: EMAModel, folder: Path) -> Path:
    """Write `ema`'s shadow weights and settings to `folder/ema.safetensors`."""
    state = ema.state_dict()
    tensors = {f"shadow.{i:05d}": p.detach().cpu().contiguous() for i, p in enumerate(state.pop("shadow_params"))}
    path = Path(folder) / EMA_FILE
    save_file(tensors, str(path), metadata={SETTINGS_KEY: json.dumps(state)})
    return path


def load_ema(ema: EMAModel, folder: Path) -> Path:
    """Restore `ema` from `folder` (ema.safetensors, or an older checkpoint's weights-only-safe
    pickle); its shadow weights stay on the device they were on. Returns the file read."""
    folder = Path(folder)
    path = folder / EMA_FILE
    if path.is_file():
        state = _read_safetensors(path)
    elif (folder / LEGACY_EMA_FILE).is_file():
        path = folder / LEGACY_EMA_FILE
        state = _read_legacy(path)
    else:
        raise EMAStateError(
            f"{path}: not found; train.ema is on but checkpoint {folder} holds no EMA state "
            f"(was it saved with train.ema: false?)"
        )
    shadow = state.get("shadow_params")
    if not isinstance(shadow, list) or len(shadow) != len(ema.shadow_params):
        count = len(shadow) if isinstance(shadow, list) else "no"
        raise EMAStateError(
            f"{path}: {count} EMA tensors, but this run trains {len(ema.shadow_params)} "
            f"(train.train_modules must match the checkpoint's)"
        )
    for i, (saved, current) in enumerate(zip(shadow, ema.shadow_params)):
        if not isinstance(saved, torch.Tensor) or saved.shape != current.shape:
            raise EMAStateError(
                f"{path}: EMA tensor {i} has shape {getattr(saved, 'shape', None)}, expected "
                f"{tuple(current.shape)} (train.train_modules and the model must match the checkpoint's)"
            )
    devices = [p.device for p in ema.shadow_params]
    try:
        ema.load_state_dict(state)
    except ValueError as err:
        raise EMAStateError(f"{path}: not an EMA state: {err}") from err
    ema.shadow_params = [p.to(device) for p, device in zip(ema.shadow_params, devices)]
    return path


@contextlib.contextmanager
def accelerate_view(folder: Path) -> Iterator[Path]:
    """`folder` as `Accelerator.load_state` may read it: without accelerate's custom-object pickles
    (it would unpickle them freely, or refuse them as unregistered), as a temporary folder of links."""
    folder = Path(folder)
    if not list(folder.glob("custom_checkpoint_*.pkl")):
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="pdiff-resume-") as view:
        for entry in folder.iterdir():
            if not (entry.name.startswith("custom_checkpoint_") and entry.suffix == ".pkl"):
                (Path(view) / entry.name).symlink_to(entry.resolve())
        yield Path(view)


def _read_safetensors(path: Path) -> dict:
    try:
        with safe_open(str(path), "pt") as f:
            settings = json.loads((f.metadata() or {})[SETTINGS_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise EMAStateError(f"{path}: unreadable EMA state ({type(err).__name__}: {err})") from err
    if not isinstance(settings, dict):
        raise EMAStateError(f"{path}: EMA settings are not a JSON object")
    return {**settings, "shadow_params": [tensors[k] for k in sorted(tensors)]}


def _read_legacy(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise EMAStateError(
            f"{path}: refused: an EMA pickle is read only if it holds plain tensors and numbers "
            f"(weights_only=True) ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(state, dict):
        raise EMAStateError(f"{path}: not an EMA state (a {type(state).__name__})")
    return state
