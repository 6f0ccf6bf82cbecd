"""The ComfyUI node pack: ComfyUI glue over `pdiff_core`. Import only inside ComfyUI (it imports
ComfyUI's modules); the repository's root `__init__.py` is the entry point ComfyUI loads."""

from __future__ import annotations

from typing import List, Type

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

from .annotators import ANNOTATOR_NODES, register_annotator_folder
from .apply import APPLY_NODES
from .example_inputs import install_example_inputs
from .few_shot import FEW_SHOT_NODES
from .loaders import LOADER_NODES, register_model_folders


class PromptDiffusionExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> List[Type[io.ComfyNode]]:
        return [*LOADER_NODES, *APPLY_NODES, *FEW_SHOT_NODES, *ANNOTATOR_NODES]


async def comfy_entrypoint() -> PromptDiffusionExtension:
    register_model_folders()
    register_annotator_folder()
    install_example_inputs()
    return PromptDiffusionExtension()
