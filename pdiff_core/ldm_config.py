"""ComfyUI's LDM model arguments from a diffusers UNet or ControlNet config.

ComfyUI builds SD1.5-family models as `comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel` and
`comfy.cldm.cldm.ControlNet`, the LDM code's classes, with the arguments the LDM `.yaml` configs give;
a diffusers folder states the same model in diffusers' terms. This is that translation (plain dict
arithmetic, no ComfyUI import), beside the weight-name translation in `checkpoints`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import torch

from .checkpoints import CheckpointError

# What the LDM classes cannot express, with the only value this translation supports.
_FIXED = {
    "only_cross_attention": False,
    "resnet_time_scale_shift": "default",
    "class_embed_type": None,
    "addition_embed_type": None,
    "encoder_hid_dim_type": None,
    "norm_eps": 1e-5,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "controlnet_conditioning_channel_order": "rgb",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "time_cond_proj_dim": None,
}


def ldm_unet_config(config: Mapping[str, Any], controlnet: bool = False) -> Dict[str, Any]:
    """The LDM arguments for a diffusers SD1.5-family UNet config, or with `controlnet` for a
    ControlNet config (which has no output half: no `out_channels` nor output transformer depths)."""
    for key, expected in _FIXED.items():
        if config.get(key, expected) != expected:
            raise CheckpointError(f"unsupported config: {key}={config[key]!r} (this loader supports {expected!r})")
    channels = list(config["block_out_channels"])
    if any(c % channels[0] for c in channels):
        raise CheckpointError(f"block_out_channels {channels} are not multiples of the first width")
    layers = int(config["layers_per_block"])
    down_types = list(config["down_block_types"])
    depth = config.get("transformer_layers_per_block", 1)
    depths = list(depth) if isinstance(depth, (list, tuple)) else [depth] * len(channels)
    per_level = [d if kind.startswith("CrossAttn") else 0 for kind, d in zip(down_types, depths)]
    ldm = {
        "image_size": 32,  # unused by the model
        "in_channels": int(config["in_channels"]),
        "model_channels": channels[0],
        "num_res_blocks": [layers] * len(channels),
        "channel_mult": [c // channels[0] for c in channels],
        "transformer_depth": [d for d in per_level for _ in range(layers)],
        "transformer_depth_middle": int(depths[-1]),
        "context_dim": int(config["cross_attention_dim"]),
        "num_heads": _heads(config),
        "num_head_channels": -1,
        "use_linear_in_transformer": bool(config.get("use_linear_projection", False)),
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "use_checkpoint": False,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "attn_precision": torch.float32 if config.get("upcast_attention") else None,
    }
    if controlnet:
        return ldm
    return {
        **ldm,
        "transformer_depth_output": [d for d in per_level for _ in range(layers + 1)],
        "out_channels": int(config.get("out_channels", 4)),
    }


def _heads(config: Mapping[str, Any]) -> int:
    # diffusers' SD1.5 configs store the head count in `attention_head_dim`.
    heads = config.get("num_attention_heads") or config["attention_head_dim"]
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise CheckpointError(
                f"per-level attention head counts {list(heads)} are not supported; expected one count"
            )
        heads = heads[0]
    return int(heads)
