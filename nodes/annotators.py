"""Annotators (depth, soft edge, segmentation) from `controlnet-aux`, with weights from a local folder.

They turn your own photos into the maps Prompt Diffusion's tasks use (an example pair of image -> depth,
say, or a query depth map). Weights are read from ComfyUI's `models/annotators/` (key `annotators` in
extra_model_paths.yaml); nothing is downloaded, and controlnet-aux (optional) is imported only when an
annotator runs.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict, Tuple

import numpy as np
import torch

import comfy.utils
import folder_paths
from comfy_api.latest import io

ANNOTATOR_FOLDER = "annotators"
# name -> (controlnet_aux class, weights file, where the file is published)
ANNOTATORS: Dict[str, Tuple[str, str, str]] = {
    "depth (MiDaS)": ("MidasDetector", "dpt_hybrid-midas-501f0c75.pt", "lllyasviel/Annotators"),
    "soft edge (HED)": ("HEDdetector", "ControlNetHED.pth", "lllyasviel/Annotators"),
    "soft edge (PiDiNet)": ("PidiNetDetector", "table5_pidinet.pth", "lllyasviel/Annotators"),
    "segmentation (SAM)": ("SamDetector", "sam_vit_h_4b8939.pth", "ybelkada/segment-anything (checkpoints/)"),
}


def register_annotator_folder() -> None:
    folder_paths.add_model_folder_path(
        ANNOTATOR_FOLDER, os.path.join(folder_paths.models_dir, ANNOTATOR_FOLDER), is_default=True
    )


def weights_path(annotator: str) -> str:
    _, filename, source = ANNOTATORS[annotator]
    path = folder_paths.get_full_path(ANNOTATOR_FOLDER, filename)
    if path is None:
        raise FileNotFoundError(
            f"{annotator}: weights file {filename!r} not found in {folder_paths.get_folder_paths(ANNOTATOR_FOLDER)}; "
            f"get it from {source} and put it in one of these folders (nothing is downloaded automatically)"
        )
    return path


@functools.lru_cache(maxsize=1)
def load_detector(annotator: str, path: str) -> Any:
    try:
        import controlnet_aux
    except ImportError as err:
        raise ImportError(
            f"{annotator} needs the optional package controlnet-aux: pip install 'controlnet-aux>=0.0.9'"
        ) from err
    class_name, filename, _ = ANNOTATORS[annotator]
    return getattr(controlnet_aux, class_name).from_pretrained(os.path.dirname(path), filename=filename)


class Annotate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_Annotate",
            display_name="Prompt Diffusion Annotator (local weights)",
            category="Prompt Diffusion/image",
            description="Depth, soft-edge or segmentation map of an image with controlnet-aux, from weights in "
            "models/annotators/. The map has the image's size.",
            inputs=[
                io.Image.Input("image", tooltip="The images to annotate."),
                io.Combo.Input(
                    "annotator",
                    options=list(ANNOTATORS),
                    tooltip="Which map; its weights file must be in models/annotators/.",
                ),
                io.Int.Input(
                    "resolution",
                    default=512,
                    min=64,
                    max=16384,
                    step=64,
                    tooltip="The size (shorter side) the annotator sees, as comfyui_controlnet_aux's "
                    "resolution; the map is returned at the image's size.",
                ),
            ],
            outputs=[io.Image.Output(tooltip="The map, at the image's size, 3 channels.")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, annotator: str, resolution: int = 512) -> io.NodeOutput:
        detector = load_detector(annotator, weights_path(annotator))
        height, width = image.shape[1:3]
        maps = []
        for item in image:
            pixels = (item[..., :3].clamp(0, 1) * 255).round().byte().cpu().numpy()
            result = detector(pixels, detect_resolution=resolution, image_resolution=resolution, output_type="np")
            result = np.asarray(result, dtype=np.float32) / 255.0
            if result.ndim == 2:
                result = np.repeat(result[..., None], 3, axis=-1)
            maps.append(
                comfy.utils.common_upscale(
                    torch.from_numpy(result).movedim(-1, 0)[None], width, height, "bilinear", "center"
                )
            )
        return io.NodeOutput(torch.cat(maps).movedim(1, -1))


ANNOTATOR_NODES = [Annotate]
