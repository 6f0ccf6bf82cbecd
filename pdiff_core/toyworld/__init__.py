"""A procedural world with exact ground truth for training Prompt Diffusion.

Small 3D scenes (spheres, boxes, cylinders, cones on a textured floor) are
ray-cast in numpy; every render comes with exact depth, HED-like edges, ADE20K
segmentation, normals, albedo and grayscale maps. Renders are grouped by a
caption describing the objects, as the paper's data groups by edit prompt.

    python -m training.toyworld --out data/toy64 --groups 5000 --resolution 64
"""

from .generate import GENERATOR_VERSION, generate, iter_groups, render_group
from .render import ALL_MAPS, INSTANCE_COLORS, Render, render
from .scene import (
    SEG_CLASSES,
    SHAPES,
    Camera,
    Ground,
    GroupSpec,
    Light,
    Primitive,
    Scene,
    make_caption,
    sample_group,
    sample_item,
)

__all__ = [
    "ALL_MAPS",
    "GENERATOR_VERSION",
    "INSTANCE_COLORS",
    "SEG_CLASSES",
    "SHAPES",
    "Camera",
    "Ground",
    "GroupSpec",
    "Light",
    "Primitive",
    "Render",
    "Scene",
    "generate",
    "iter_groups",
    "make_caption",
    "render",
    "render_group",
    "sample_group",
    "sample_item",
]
