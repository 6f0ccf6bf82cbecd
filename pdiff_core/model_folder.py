"""What a pipeline folder may hold before anything loads it: known component classes, no code.

diffusers imports whatever module a model_index.json names for a component, from a
`<component>/<module>.py` beside it if there is one, without asking for `trust_remote_code`:
a downloaded model folder could run code. So a folder is data only: every component must be one
of the (library, class) pairs below, and no Python file may sit anywhere in it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, FrozenSet, Tuple

from diffusers.schedulers import KarrasDiffusionSchedulers

MODEL_INDEX = "model_index.json"
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyd", ".so")

# The pipeline's own component types; a scheduler may be any of the pipeline's declared kinds.
ALLOWED_COMPONENTS: Dict[str, FrozenSet[Tuple[str, str]]] = {
    "vae": frozenset({("diffusers", "AutoencoderKL")}),
    "unet": frozenset({("diffusers", "UNet2DConditionModel")}),
    "text_encoder": frozenset({("transformers", "CLIPTextModel")}),
    "tokenizer": frozenset({("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast")}),
    "controlnet": frozenset({("pdiff_core.model", "PromptDiffusionControlNetModel")}),
    "scheduler": frozenset(("diffusers", kind.name) for kind in KarrasDiffusionSchedulers),
}


class ModelFolderError(ValueError):
    """A pipeline folder that may not be loaded; the message names the file and what is allowed."""


def check_model_folder(folder: Path) -> None:
    """Refuse `folder` unless its model_index.json names only allowed components and it holds no
    Python code. Entries `[null, null]` (an absent optional component) load nothing and pass."""
    folder = Path(folder)
    _refuse_code(folder)
    index_file = folder / MODEL_INDEX
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFolderError(f"{folder} is not a pipeline folder: {MODEL_INDEX} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{index_file}: not readable JSON: {err}") from None
    if not isinstance(index, dict):
        raise ModelFolderError(f"{index_file}: expected a JSON object of components, got {type(index).__name__}")
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, (list, tuple)):
            continue  # metadata (_class_name, ...) and plain config values: nothing is imported
        pair = tuple(entry)
        if pair == (None, None):
            continue
        allowed = ALLOWED_COMPONENTS.get(name)
        if allowed is None:
            raise ModelFolderError(
                f"{index_file}: unknown component {name!r} {list(pair)}; a Prompt Diffusion pipeline has "
                f"{sorted(ALLOWED_COMPONENTS)} (an unused one may be [null, null])"
            )
        if pair not in allowed:
            raise ModelFolderError(
                f"{index_file}: component {name!r} is {list(pair)}; refused: only {sorted(map(list, allowed))} are "
                f"loaded, so that no module named by a model folder is imported"
            )


def _refuse_code(folder: Path) -> None:
    seen = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        for name in sorted(files):
            if name.endswith(CODE_SUFFIXES):
                raise ModelFolderError(
                    f"{Path(root) / name}: a model folder may hold weights, configs and tokenizer files, never "
                    f"code: refused to load {folder}"
                )
