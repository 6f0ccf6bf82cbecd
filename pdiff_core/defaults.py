"""Defaults shared by the CLI, the evaluation, the ComfyUI nodes, the scripts and the tests, each defined here once."""

from pathlib import Path

import torch

EMBEDDED_MODELS = Path(__file__).resolve().parent / "assets"
"""Folder of the pipeline folders shipped inside the package."""
DEFAULT_MODEL_NAME = "pdiff-toyworld"
DEFAULT_MODEL = EMBEDDED_MODELS / DEFAULT_MODEL_NAME
"""The embedded pipeline folder every entry point uses when no model is named."""

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
"""Weight precisions by their command-line names."""


def default_device() -> str:
    """`cuda` where a GPU is visible, else `cpu`."""
    return "cuda" if torch.cuda.is_available() else "cpu"
