"""Loader nodes: a Prompt Diffusion ControlNet file, and a whole Prompt Diffusion pipeline folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List

import folder_paths
from comfy_api.latest import io

from pdiff_core.checkpoints import read_controlnet
from pdiff_core.defaults import DEFAULT_MODEL_NAME, EMBEDDED_MODELS

from .control import build_control
from .pipeline_folder import load_pipeline_folder

PIPELINE_FOLDER = "prompt_diffusion"
"""ComfyUI model folder of Prompt Diffusion pipeline folders: `models/prompt_diffusion/<name>/model_index.json`
(more paths through `extra_model_paths.yaml`, key `prompt_diffusion`), plus the pack's embedded models."""
MODEL_INDEX = "model_index.json"


def register_model_folders() -> None:
    folder_paths.add_model_folder_path(
        PIPELINE_FOLDER, os.path.join(folder_paths.models_dir, PIPELINE_FOLDER), is_default=True
    )
    folder_paths.add_model_folder_path(PIPELINE_FOLDER, str(EMBEDDED_MODELS))


def pipeline_folder_names() -> List[str]:
    """Names (relative paths) of the folders holding a model_index.json, the default model first."""
    names = sorted(
        {
            os.path.dirname(f).replace(os.sep, "/")
            for f in folder_paths.get_filename_list(PIPELINE_FOLDER)
            if os.path.basename(f) == MODEL_INDEX and os.path.dirname(f)
        }
    )
    return sorted(names, key=lambda n: n != DEFAULT_MODEL_NAME)


class LoadPromptDiffusionControlNet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_LoadPromptDiffusionControlNet",
            display_name="Load Prompt Diffusion ControlNet",
            category="Prompt Diffusion/loaders",
            description="Loads a Prompt Diffusion ControlNet from ComfyUI's controlnet folder: the authors' LDM checkpoint "
            "(only control_model.* is used), a diffusers controlnet/ safetensors (config.json beside it), or this "
            "project's single-file safetensors.",
            inputs=[
                io.Combo.Input(
                    "control_net_name",
                    options=folder_paths.get_filename_list("controlnet"),
                    tooltip="A file in models/controlnet/, e.g. the authors' network-step=04999.ckpt.",
                )
            ],
            outputs=[io.ControlNet.Output(tooltip="For Apply Prompt Diffusion (the stock apply nodes refuse it).")],
        )

    @classmethod
    def validate_inputs(cls, control_net_name: str) -> bool | str:
        # ComfyUI 0.3.64 checks V3 combo values only in the UI; say here which files exist.
        names = folder_paths.get_filename_list("controlnet")
        return control_net_name in names or (
            f"no file {control_net_name!r} in the controlnet folders {folder_paths.get_folder_paths('controlnet')}"
        )

    @classmethod
    def execute(cls, control_net_name: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("controlnet", control_net_name)
        return io.NodeOutput(build_control(read_controlnet(path)))


class LoadPromptDiffusionModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_LoadPromptDiffusionModel",
            display_name="Load Prompt Diffusion Model (pipeline folder)",
            category="Prompt Diffusion/loaders",
            description="Loads a Prompt Diffusion diffusers pipeline folder of any size (models/prompt_diffusion/<name>/) "
            "as ComfyUI's MODEL, CLIP and VAE, plus its Prompt Diffusion CONTROL_NET.",
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=pipeline_folder_names(),
                    tooltip="A folder with model_index.json under models/prompt_diffusion/ (or the pack's embedded models).",
                )
            ],
            outputs=[
                io.Model.Output(tooltip="The UNet, for a stock KSampler."),
                io.Clip.Output(tooltip="The text encoder, for stock CLIPTextEncode nodes."),
                io.Vae.Output(tooltip="The VAE, for a stock VAEDecode."),
                io.ControlNet.Output(tooltip="The Prompt Diffusion ControlNet, for Apply Prompt Diffusion."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name: str) -> bool | str:
        names = pipeline_folder_names()
        return model_name in names or (
            f"no Prompt Diffusion pipeline folder {model_name!r} (a folder with {MODEL_INDEX}) in "
            f"{folder_paths.get_folder_paths(PIPELINE_FOLDER)}; found {names}"
        )

    @classmethod
    def execute(cls, model_name: str) -> io.NodeOutput:
        index = folder_paths.get_full_path_or_raise(PIPELINE_FOLDER, f"{model_name}/{MODEL_INDEX}")
        return io.NodeOutput(*load_pipeline_folder(Path(index).parent))


LOADER_NODES = [LoadPromptDiffusionControlNet, LoadPromptDiffusionModel]
