"""Apply Prompt Diffusion with several example pairs (shots) for every query."""

from __future__ import annotations

from typing import Any, Optional

import torch

from comfy_api.latest import io

from pdiff_core.shots import COMBINE_MODES, DEFAULT_COMBINE, normalise_weights, parse_shot_weights

from .apply import (
    CATEGORY,
    Conditioning,
    attach_control,
    check_schedule_and_mask,
    conditioning_inputs,
    conditioning_outputs,
    require_prompt_diffusion_control,
    schedule_inputs,
)
from .control import build_few_shot_hint


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
                *conditioning_inputs(),
                io.Image.Input("example_sources", tooltip="A batch of K images: the sources of the K example pairs."),
                io.Image.Input("example_targets", tooltip="A batch of K images: the targets, in the same order."),
                io.Image.Input(
                    "query",
                    tooltip="The image(s) to apply the task to; every query gets all K pairs, "
                    "resized (centre crop) to the query's size.",
                ),
                io.Combo.Input(
                    "combine",
                    options=list(COMBINE_MODES),
                    default=DEFAULT_COMBINE,
                    tooltip="residuals: one control pass per pair, their outputs averaged. "
                    "embedding: the pairs' hint embeddings averaged, one pass (cheaper).",
                ),
                io.String.Input(
                    "shot_weights",
                    default="",
                    tooltip="Comma-separated weights, one per pair (e.g. '1, 1, 2'); empty: equal. "
                    "Normalised to sum to 1.",
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
        example_sources: torch.Tensor,
        example_targets: torch.Tensor,
        query: torch.Tensor,
        combine: str,
        shot_weights: str,
        strength: float,
        start_percent: float,
        end_percent: float,
        vae: Any = None,
        mask: Optional[torch.Tensor] = None,
    ) -> io.NodeOutput:
        require_prompt_diffusion_control(control_net)
        check_schedule_and_mask(start_percent, end_percent, mask)
        weights = normalise_weights(parse_shot_weights(shot_weights), example_sources.shape[0])
        hint = build_few_shot_hint(example_sources, example_targets, query, mask)
        control = control_net.copy()
        # ComfyUI passes a control's extra args to its model at every step, and its copies keep them.
        control.set_extra_arg("shot_weights", weights)
        control.set_extra_arg("shot_combine", combine)
        return attach_control(positive, negative, control, hint, strength, start_percent, end_percent, vae)


FEW_SHOT_NODES = [ApplyPromptDiffusionFewShot]
