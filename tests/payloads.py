"""Hostile files for the tests: a pickle whose unpickling writes a marker file, and a model folder
whose component is a Python module that would do the same when imported."""

import json
from pathlib import Path
from typing import Any

import torch


class _WritesMarker:
    """Unpickling this runs `exec`, which writes the marker: proof that a loader ran our code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def plant_pickle(path: Path, marker: Path, content: Any = None) -> Path:
    """Save `content` (default: a dict) with a payload inside, as torch.save would a state dict."""
    payload = {"weight": torch.zeros(2), "payload": _WritesMarker(marker)} if content is None else content
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def plant_module(folder: Path, component: str, marker: Path) -> Path:
    """Point `component` of the pipeline folder's model_index.json at `evilmod.EvilModel` and put
    `component/evilmod.py` beside it, which writes the marker when imported."""
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index[component] = ["evilmod", "EvilModel"]
    index_file.write_text(json.dumps(index))
    module = folder / component / "evilmod.py"
    module.write_text(f"open({str(marker)!r}, 'w').write('ran')\n\nclass EvilModel:\n    pass\n")
    return module
