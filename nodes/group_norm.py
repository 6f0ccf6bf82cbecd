"""ComfyUI operations whose GroupNorm has a model's own group count.

ComfyUI's SD blocks (UNet, ControlNet, VAE) build every GroupNorm with 32 groups, SD1.5's; small
models are trained with fewer, which their diffusers config states as `norm_num_groups`.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

COMFY_GROUP_NORM_GROUPS = 32  # what ComfyUI's SD blocks hard-code, and diffusers' default norm_num_groups


def group_norm_operations(base: type, config: Mapping[str, Any]) -> type:
    """ComfyUI operations `base` (a `comfy.ops` class) whose GroupNorm uses the group count of the
    diffusers `config`; `base` itself where that is ComfyUI's 32."""
    return _with_groups(base, int(config.get("norm_num_groups", COMFY_GROUP_NORM_GROUPS)))


@functools.lru_cache(maxsize=None)
def _with_groups(base: type, groups: int) -> type:
    if groups == COMFY_GROUP_NORM_GROUPS:
        return base

    class GroupNorm(base.GroupNorm):
        def __init__(self, num_groups: int, num_channels: int, *args: Any, **kwargs: Any) -> None:
            super().__init__(groups, num_channels, *args, **kwargs)

    return type(f"{base.__name__}_groups{groups}", (base,), {"GroupNorm": GroupNorm})
