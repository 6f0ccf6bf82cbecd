"""ComfyUI entry point of the Prompt Diffusion node pack (this folder sits in ComfyUI/custom_nodes/).

The nodes import `pdiff_core`, which lives beside this file. Only that package is registered under its
top-level name: the pack's folder is not put on sys.path, so its `training`, `tests` and `benchmarks`
stay out of ComfyUI's process, where other packs could shadow them or be shadowed (ComfyUI has a
top-level `nodes` module too).
"""

import importlib.util
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))


def _register_core() -> None:
    if "pdiff_core" in sys.modules:  # imported already (the tests put this folder on sys.path): one copy only
        return
    core_dir = os.path.join(_PACK_DIR, "pdiff_core")
    spec = importlib.util.spec_from_file_location(
        "pdiff_core", os.path.join(core_dir, "__init__.py"), submodule_search_locations=[core_dir]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["pdiff_core"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["pdiff_core"]
        raise


try:
    _register_core()
    from .nodes import comfy_entrypoint
except ImportError as err:
    # Imported outside ComfyUI (pytest collects this folder as a package): no node API exists to
    # register with, and in a checkout whose folder name is no Python name (ComfyUI-PromptDiffusion)
    # there is not even a parent package. Inside ComfyUI both always exist, so real import errors still raise.
    outside_comfyui = isinstance(err, ModuleNotFoundError) and err.name in (
        "comfy_api",
        "comfy",
        "folder_paths",
        "node_helpers",
    )
    if __package__ and not outside_comfyui:
        raise
else:
    __all__ = ["comfy_entrypoint"]
