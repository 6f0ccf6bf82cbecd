"""ComfyUI entry point of the Prompt Diffusion node pack (this folder sits in ComfyUI/custom_nodes/).

`pdiff_core` lives beside this file; its folder goes at the end of sys.path so that it imports
without shadowing ComfyUI's own modules (ComfyUI has a top-level `nodes` module too).
"""

import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

try:
    from .nodes import comfy_entrypoint  # noqa: E402
except ImportError as err:
    # Imported outside ComfyUI (pytest collects this folder as a package): no node API exists to
    # register with, and in a checkout whose folder name is no Python name (ComfyUI-PromptDiffusion)
    # there is not even a parent package. Inside ComfyUI both always exist, so real import errors still raise.
    outside_comfyui = isinstance(err, ModuleNotFoundError) and err.name in ("comfy_api", "comfy", "folder_paths", "node_helpers")
    if __package__ and not outside_comfyui:
        raise
else:
    __all__ = ["comfy_entrypoint"]
