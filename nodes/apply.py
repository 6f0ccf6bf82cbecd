"""Apply Prompt Diffusion to conditioning, and image helpers around it."""

from __future__ import annotations

import logging
from typing import Any, List, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw

import comfy.utils
import nodes as comfy_nodes  # ComfyUI's nodes.py (this package is loaded as `<pack>.nodes`)
from comfy_api.latest import io, ui
from comfy_execution.utils import get_executing_context
from server import PromptServer

from .control import PromptDiffusionControl, build_hint

logger = logging.getLogger(__name__)

Conditioning = List[List[Any]]  # ComfyUI's CONDITIONING: [[tensor, {options}], ...]


CATEGORY = "Prompt Diffusion"  # one tree for the whole pack in the node library
ASPECT_TOLERANCE = 0.02  # relative; smaller differences lose at most a pixel row to the centre crop


class ApplyPromptDiffusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_ApplyPromptDiffusion",
            display_name="Apply Prompt Diffusion",
            category=CATEGORY,
            description="Shows the model a task by example (example_source -> example_target) and applies it to the query. "
            "Works like Apply ControlNet (Advanced): chains with other ControlNets, applies to positive and "
            "negative, broadcasts a single pair or query over a batch.",
            inputs=[
                *conditioning_inputs(),
                io.Image.Input(
                    "example_source", tooltip="The example's input: e.g. a photo, for a photo -> depth task."
                ),
                io.Image.Input("example_target", tooltip="What the task makes of example_source: e.g. its depth map."),
                io.Image.Input(
                    "query",
                    tooltip="The image to apply the task to; the result has the latent's size, and the "
                    "example pair is resized (centre crop) to the query's.",
                ),
                *schedule_inputs(),
            ],
            outputs=conditioning_outputs(),
        )

    @classmethod
    def execute(
        cls,
        positive: Conditioning,
        negative: Conditioning,
        control_net: Any,
        example_source: torch.Tensor,
        example_target: torch.Tensor,
        query: torch.Tensor,
        strength: float,
        start_percent: float,
        end_percent: float,
        vae: Any = None,
        mask: Optional[torch.Tensor] = None,
    ) -> io.NodeOutput:
        require_prompt_diffusion_control(control_net)
        check_schedule_and_mask(start_percent, end_percent, mask)
        for name, image in (("example_source", example_source), ("example_target", example_target)):
            if image.ndim == 4 and query.ndim == 4 and aspect_differs(image, query):
                warn(
                    cls,
                    f"{name} is {image.shape[2]}x{image.shape[1]} and the query {query.shape[2]}x{query.shape[1]}: "
                    f"{name} is centre-cropped to the query's aspect ratio, so part of it is not shown to the model",
                )
        hint = build_hint(example_source, example_target, query, mask)
        return attach_control(positive, negative, control_net, hint, strength, start_percent, end_percent, vae)


def attach_control(
    positive: Conditioning,
    negative: Conditioning,
    control: Any,
    hint: torch.Tensor,
    strength: float,
    start_percent: float,
    end_percent: float,
    vae: Any,
) -> io.NodeOutput:
    """Both apply nodes end here: ComfyUI's own apply copies the control, chains the previous one and
    shares it between positive and negative. It takes channels-last images."""
    positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control, hint.movedim(1, -1), strength, start_percent, end_percent, vae=vae
    )
    return io.NodeOutput(positive, negative)


def conditioning_inputs() -> List[io.Input]:
    """positive, negative and control_net: the first inputs of both apply nodes."""
    return [
        io.Conditioning.Input("positive", tooltip="The positive prompt's conditioning: describe the result you want."),
        io.Conditioning.Input(
            "negative", tooltip="The negative prompt's conditioning (the control applies to it too)."
        ),
        io.ControlNet.Input(
            "control_net",
            tooltip="A Prompt Diffusion ControlNet, from 'Load Prompt Diffusion "
            "ControlNet' or 'Load Prompt Diffusion Model (pipeline folder)'.",
        ),
    ]


def schedule_inputs() -> List[io.Input]:
    """strength, start/end percent, vae and mask: the last inputs of both apply nodes."""
    return [
        io.Float.Input(
            "strength",
            default=1.0,
            min=0.0,
            max=10.0,
            step=0.01,
            tooltip="How strongly the control steers the UNet (0 = not at all).",
        ),
        io.Float.Input(
            "start_percent",
            default=0.0,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Fraction of the sampling at which the control starts (0 = first step).",
        ),
        io.Float.Input(
            "end_percent",
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.001,
            tooltip="Fraction of the sampling at which the control stops (1 = last step); not below start_percent.",
        ),
        io.Vae.Input(
            "vae",
            optional=True,
            tooltip="Accepted like Apply ControlNet's; Prompt Diffusion's hint is in pixels and needs none.",
        ),
        io.Mask.Input(
            "mask", optional=True, tooltip="Where the control applies (1) or not (0), aligned with the query image."
        ),
    ]


def conditioning_outputs() -> List[io.Output]:
    return [
        io.Conditioning.Output(display_name="positive", tooltip="positive, with the control attached"),
        io.Conditioning.Output(display_name="negative", tooltip="negative, with the control attached"),
    ]


def require_prompt_diffusion_control(control_net: Any) -> None:
    """A plain ControlNet would run without the second hint encoder: name the loader to use."""
    if not isinstance(control_net, PromptDiffusionControl):
        raise ValueError(
            f"control_net is a {type(control_net).__name__}, not a Prompt Diffusion ControlNet: load it with "
            "'Load Prompt Diffusion ControlNet' or 'Load Prompt Diffusion Model (pipeline folder)'"
        )


def check_schedule_and_mask(start_percent: float, end_percent: float, mask: Optional[torch.Tensor]) -> None:
    """Settings that would silently give no control at all."""
    if start_percent > end_percent:
        raise ValueError(
            f"start_percent {start_percent} is after end_percent {end_percent}: the control would never "
            "apply; set start_percent <= end_percent (or strength 0 to turn the control off)"
        )
    if mask is not None and not bool((mask > 0).any()):
        raise ValueError(
            "the mask is 0 everywhere, so the control would apply nowhere. LoadImage's MASK output is "
            "all zeros for an image without an alpha channel, and 0 where the image is opaque: use a mask "
            "that is 1 where the control should apply, or leave mask unconnected"
        )


def aspect_differs(image: torch.Tensor, query: torch.Tensor) -> bool:
    (height, width), (query_height, query_width) = image.shape[1:3], query.shape[1:3]
    return abs(width * query_height - query_width * height) > ASPECT_TOLERANCE * width * query_height


def warn(node: type, message: str) -> None:
    """A warning in the log and, inside a running server, as text on the node."""
    logger.warning("%s: %s", node.__name__, message)
    server = getattr(PromptServer, "instance", None)
    context = get_executing_context()
    if server is not None and context is not None:
        server.send_progress_text(f"warning: {message}", context.node_id)


class MakeExamplePair(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_MakeExamplePair",
            display_name="Make Prompt Diffusion Example Pair",
            category=f"{CATEGORY}/image",
            description="Makes an example pair from two images: both resized (bilinear, centre crop) to the size of "
            "size_like (e.g. the query) or else of the source, with matching batches.",
            inputs=[
                io.Image.Input("source", tooltip="The example's input image."),
                io.Image.Input("target", tooltip="What the task makes of source."),
                io.Image.Input(
                    "size_like",
                    optional=True,
                    tooltip="An image (e.g. the query) whose size the pair takes; else the source's size.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="example_source", tooltip="source at the chosen size"),
                io.Image.Output(display_name="example_target", tooltip="target at the chosen size"),
            ],
        )

    @classmethod
    def execute(
        cls, source: torch.Tensor, target: torch.Tensor, size_like: Optional[torch.Tensor] = None
    ) -> io.NodeOutput:
        height, width = (size_like if size_like is not None else source).shape[1:3]
        batch = max(source.shape[0], target.shape[0])
        pair = []
        for name, image in (("source", source), ("target", target)):
            if image.shape[0] not in (1, batch):
                raise ValueError(
                    f"{name} has a batch of {image.shape[0]} but the other image has {batch}; pass 1 or {batch}"
                )
            resized = comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(
                1, -1
            )
            pair.append(resized.expand(batch, *resized.shape[1:]).contiguous())
        return io.NodeOutput(*pair)


PANEL_GAP = 4
ARROW_WIDTH = 16


def _arrow(height: int) -> torch.Tensor:
    canvas = Image.new("RGB", (ARROW_WIDTH, height), "white")
    draw = ImageDraw.Draw(canvas)
    middle = height // 2
    draw.line([(2, middle), (ARROW_WIDTH - 4, middle)], fill="black", width=2)
    draw.polygon(
        [(ARROW_WIDTH - 2, middle), (ARROW_WIDTH - 7, middle - 4), (ARROW_WIDTH - 7, middle + 4)], fill="black"
    )
    return torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)


def side_by_side(source: torch.Tensor, target: torch.Tensor, query: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    """(B, H, W', 3): source -> target | query -> result, every panel at the result's size."""
    height, width = result.shape[1:3]
    panels = [
        comfy.utils.common_upscale(p[..., :3].movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
        for p in (source, target, query, result)
    ]
    batch = max(p.shape[0] for p in panels)
    panels = [p.expand(batch, -1, -1, -1) if p.shape[0] == 1 else p for p in panels]
    if any(p.shape[0] != batch for p in panels):
        raise ValueError(f"batches {[p.shape[0] for p in panels]} do not match; each must be 1 or the largest")
    arrow = _arrow(height).expand(batch, -1, -1, -1).to(result)
    gap = torch.ones(batch, height, PANEL_GAP, 3).to(result)
    divider = torch.zeros(batch, height, PANEL_GAP // 2, 3).to(result)
    row = [panels[0], arrow, panels[1], gap, divider, gap, panels[2], arrow, panels[3]]
    return torch.cat(row, dim=2)


class PromptDiffusionPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_PromptDiffusionPreview",
            display_name="Prompt Diffusion Side-by-Side Preview",
            category=f"{CATEGORY}/image",
            description="example source -> example target | query -> result, side by side.",
            inputs=[
                io.Image.Input("example_source", tooltip="The example pair's input image."),
                io.Image.Input("example_target", tooltip="The example pair's output image."),
                io.Image.Input("query", tooltip="The image the task was applied to."),
                io.Image.Input("result", tooltip="The decoded result; every panel takes its size."),
            ],
            outputs=[io.Image.Output(tooltip="The four panels in one row, also shown on the node.")],
            is_output_node=True,
        )

    @classmethod
    def execute(
        cls, example_source: torch.Tensor, example_target: torch.Tensor, query: torch.Tensor, result: torch.Tensor
    ) -> io.NodeOutput:
        image = side_by_side(example_source, example_target, query, result)
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))


APPLY_NODES = [ApplyPromptDiffusion, MakeExamplePair, PromptDiffusionPreview]
