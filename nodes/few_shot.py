"""Apply Prompt Diffusion with several example pairs (shots) for every query."""

from __future__ import annotations

from typing import Any, Optional

import torch

import nodes as comfy_nodes  # ComfyUI's nodes.py (this package is loaded as `<pack>.nodes`)
from comfy_api.latest import io

from pdiff_core.shots import COMBINE_MODES, DEFAULT_COMBINE, normalise_weights, parse_shot_weights

from .apply import CATEGORY, Conditioning
from .control import PromptDiffusionControl, build_few_shot_hint


class ApplyPromptDiffusionFewShot(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PDiff_ApplyPromptDiffusionFewShot",
            display_name="Apply Prompt Diffusion (Few-Shot)",
            category=CATEGORY,
            description="Shows the model a task by several examples: image k of example_sources -> image k of "
                        "example_targets is example pair k, and every query gets all of them. Otherwise like "
                        "Apply Prompt Diffusion. K pairs cost K control passes per step with 'residuals', one with "
                        "'embedding'.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The positive prompt's conditioning: describe the result you want."),
                io.Conditioning.Input("negative", tooltip="The negative prompt's conditioning (the control applies to it too)."),
                io.ControlNet.Input("control_net", tooltip="A Prompt Diffusion ControlNet, from 'Load Prompt Diffusion "
                                                           "ControlNet' or 'Load Prompt Diffusion Model (pipeline folder)'."),
                io.Image.Input("example_sources", tooltip="A batch of K images: the sources of the K example pairs."),
                io.Image.Input("example_targets", tooltip="A batch of K images: the targets, in the same order."),
                io.Image.Input("query", tooltip="The image(s) to apply the task to; every query gets all K pairs, "
                                                "resized (centre crop) to the query's size."),
                io.Combo.Input("combine", options=list(COMBINE_MODES), default=DEFAULT_COMBINE,
                               tooltip="residuals: one control pass per pair, their outputs averaged. "
                                       "embedding: the pairs' hint embeddings averaged, one pass (cheaper)."),
                io.String.Input("shot_weights", default="",
                                tooltip="Comma-separated weights, one per pair (e.g. '1, 1, 2'); empty: equal. "
                                        "Normalised to sum to 1."),
                io.Float.Input("strength", default=1.0, min=0.0, max=10.0, step=0.01,
                               tooltip="How strongly the control steers the UNet (0 = not at all)."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the control starts (0 = first step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.001,
                               tooltip="Fraction of the sampling at which the control stops (1 = last step)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="Accepted like Apply ControlNet's; Prompt Diffusion's hint is in pixels and needs none."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where the control applies (1) or not (0), aligned with the query image."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive", tooltip="positive, with the control attached"),
                     io.Conditioning.Output(display_name="negative", tooltip="negative, with the control attached")],
        )

    @classmethod
    def execute(cls, positive: Conditioning, negative: Conditioning, control_net: Any, example_sources: torch.Tensor,
                example_targets: torch.Tensor, query: torch.Tensor, combine: str, shot_weights: str, strength: float,
                start_percent: float, end_percent: float, vae: Any = None,
                mask: Optional[torch.Tensor] = None) -> io.NodeOutput:
        weights = normalise_weights(parse_shot_weights(shot_weights), example_sources.shape[0])
        hint = build_few_shot_hint(example_sources, example_targets, query, mask)
        if not isinstance(control_net, PromptDiffusionControl):
            raise ValueError(
                f"control_net is a {type(control_net).__name__}, not a Prompt Diffusion ControlNet: load it with "
                "'Load Prompt Diffusion ControlNet' or 'Load Prompt Diffusion Model (pipeline folder)'")
        control = control_net.copy()
        # ComfyUI passes a control's extra args to its model at every step, and its copies keep them.
        control.set_extra_arg("shot_weights", weights)
        control.set_extra_arg("shot_combine", combine)
        # As Apply Prompt Diffusion: ComfyUI's own apply copies, chains and shares the control.
        positive, negative = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(
            positive, negative, control, hint.movedim(1, -1), strength, start_percent, end_percent, vae=vae)
        return io.NodeOutput(positive, negative)


FEW_SHOT_NODES = [ApplyPromptDiffusionFewShot]
