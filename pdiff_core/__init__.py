"""Prompt Diffusion core: model, checkpoints, pipeline and CLI. Imports without ComfyUI.

The public names load lazily, so that light submodules (`pdiff_core.data`) import without torch.
"""

import importlib
from typing import Any

_EXPORTS = {
    "CheckpointError": "checkpoints",
    "load_controlnet": "checkpoints",
    "read_controlnet": "checkpoints",
    "save_controlnet": "checkpoints",
    "PromptDiffusionControlNetModel": "model",
    "PromptDiffusionPipeline": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pdiff_core' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
