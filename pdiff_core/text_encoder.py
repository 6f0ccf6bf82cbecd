"""The CLIP text encoder's weight names in the layout both transformers 4 and 5 read.

transformers 4's `CLIPTextModel` names its weights `text_model.embeddings...`; transformers 5 dropped the
`text_model` submodule and saves a model built from scratch as `embeddings...`, which transformers 4
(and ComfyUI's CLIP loader) do not recognise: transformers 4 would keep random weights. transformers 5
reads the prefixed names too, so those are the ones written and read here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, TypeVar

from safetensors import safe_open
from safetensors.torch import load_file, save_file

PREFIX = "text_model."
INDEX = "model.safetensors.index.json"

T = TypeVar("T")


def with_text_model_prefix(state_dict: Dict[str, T]) -> Dict[str, T]:
    """The state dict with every `CLIPTextModel` weight name under `text_model.` (transformers 4's names)."""
    return {(key if key.startswith(PREFIX) else PREFIX + key): value for key, value in state_dict.items()}


def prefix_saved_text_encoder(folder: Path) -> None:
    """Rename the weights of a saved `CLIPTextModel` folder (its safetensors files and their index) to
    transformers 4's names, where transformers 5 wrote them without the prefix."""
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            metadata, keys = f.metadata(), list(f.keys())
        if all(key.startswith(PREFIX) for key in keys):
            continue
        save_file(with_text_model_prefix(load_file(str(file))), str(file), metadata=metadata)
    index_file = folder / INDEX
    if index_file.is_file():
        index = json.loads(index_file.read_text())
        index["weight_map"] = with_text_model_prefix(index["weight_map"])
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
