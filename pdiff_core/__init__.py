"""Prompt Diffusion core: model, checkpoints, pipeline and CLI. Imports without ComfyUI."""

from .checkpoints import CheckpointError, load_controlnet, read_controlnet, save_controlnet
from .model import PromptDiffusionControlNetModel
from .pipeline import PromptDiffusionPipeline

__all__ = [
    "CheckpointError",
    "PromptDiffusionControlNetModel",
    "PromptDiffusionPipeline",
    "load_controlnet",
    "read_controlnet",
    "save_controlnet",
]
