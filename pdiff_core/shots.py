"""Few-shot: several example pairs (shots) for one query, combined without retraining.

Prompt Diffusion was trained on one example pair. Two ways to show it K pairs with the weights as
they are, each a weighted mean (the weights are normalised to sum to 1, so K copies of one pair give
exactly the one-pair result and the control's strength stays `controlnet_conditioning_scale`'s):

- "residuals": the control branch runs once per pair (K control passes per step) and its residuals
  are averaged. Each pass sees a hint the model was trained on.
- "embedding": the hint embeddings (pair encoder + query encoder) are averaged and the control
  branch runs once per step, as cheap as one pair. The averaged embedding is one no training saw.

Both run the hint encoders once per generation.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

COMBINE_MODES = ("residuals", "embedding")
DEFAULT_COMBINE = "residuals"


def check_combine(mode: str) -> str:
    if mode not in COMBINE_MODES:
        raise ValueError(f"shot_combine {mode!r}: expected one of {list(COMBINE_MODES)}")
    return mode


def normalise_weights(weights: Optional[Sequence[float]], shots: int) -> List[float]:
    """The K weights normalised to sum to 1; None gives equal weights."""
    if shots < 1:
        raise ValueError(f"at least one example pair is needed, got {shots}")
    if weights is None:
        return [1.0 / shots] * shots
    weights = [float(w) for w in weights]
    if len(weights) != shots:
        raise ValueError(f"shot_weights has {len(weights)} weights for {shots} example pairs; pass one per pair")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"shot_weights must be finite, non-negative and not all zero, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def parse_shot_weights(text: str) -> Optional[List[float]]:
    """'1, 1, 2' -> [1.0, 1.0, 2.0]; an empty string -> None (equal weights)."""
    parts = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    if not parts:
        return None
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"shot_weights {text!r}: expected comma-separated numbers, e.g. '1, 1, 2'") from None


def weighted_mean(stacked: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """sum_k weights[k] * stacked[k] over the leading (shot) dimension."""
    if stacked.shape[0] != len(weights):
        raise ValueError(f"{stacked.shape[0]} shots but {len(weights)} weights")
    # Python-float scales, no weight tensor: nothing to copy to the device inside a captured CUDA graph.
    total = stacked[0] * weights[0]
    for k in range(1, len(weights)):
        total = total + stacked[k] * weights[k]
    return total


def combine_shot_batches(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> List[torch.Tensor]:
    """Each tensor holds K shot-major batches (K * B, ...); return their weighted means (B, ...)."""
    return [weighted_mean(t.unflatten(0, (len(weights), -1)), weights) for t in tensors]
