"""The templates' input images, copied into ComfyUI's input/ folder when the pack loads, so that a
template opened from the templates dialog runs as opened. A file the user already has under the same
name is never overwritten: it is kept, and the log says so."""

from __future__ import annotations

import filecmp
import logging
import shutil
from pathlib import Path
from typing import List

import folder_paths

logger = logging.getLogger(__name__)

EXAMPLE_INPUTS = Path(__file__).resolve().parents[1] / "workflows" / "inputs"


def copy_example_inputs(source: Path, input_dir: Path) -> List[Path]:
    """Copy every image of `source` missing from `input_dir`; returns the files copied."""
    input_dir.mkdir(parents=True, exist_ok=True)
    copied = []
    for image in sorted(source.glob("*.png")):
        target = input_dir / image.name
        if not target.exists():
            shutil.copyfile(image, target)
            copied.append(target)
        elif not filecmp.cmp(image, target, shallow=False):
            logger.warning(
                "Prompt Diffusion: kept your %s; the templates that use this name will load your file "
                "instead of the pack's example (%s)",
                target,
                image,
            )
    return copied


def install_example_inputs() -> None:
    copied = copy_example_inputs(EXAMPLE_INPUTS, Path(folder_paths.get_input_directory()))
    if copied:
        logger.info("Prompt Diffusion: copied %d template input images into %s", len(copied), copied[0].parent)
