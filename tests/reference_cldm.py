"""An independent, functional implementation of the published Prompt Diffusion control branch.

Written from the architecture of the authors' `cldm/cldm.py` (LDM `ControlNet` with `input_hint_block`
and `input_cond_block`), reading weights by their LDM names. It shares no code with diffusers or
pdiff_core, so agreement with `PromptDiffusionControlNetModel` checks the key conversion and the model.
"""

import math
from typing import Dict, List

import torch
import torch.nn.functional as F

Weights = Dict[str, torch.Tensor]


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def conv(w: Weights, name: str, x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    weight = w[name + ".weight"]
    return F.conv2d(x, weight, w[name + ".bias"], stride=stride, padding=weight.shape[-1] // 2)


def hint_encoder(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    # 8 convs at indices 0, 2, ..., 14 with SiLU between; convs 4, 8 and 12 have stride 2.
    for index in range(0, 15, 2):
        x = conv(w, f"{name}.{index}", x, stride=2 if index in (4, 8, 12) else 1)
        if index != 14:
            x = F.silu(x)
    return x


def resblock(w: Weights, name: str, x: torch.Tensor, emb: torch.Tensor, groups: int) -> torch.Tensor:
    h = F.group_norm(x, groups, w[f"{name}.in_layers.0.weight"], w[f"{name}.in_layers.0.bias"], eps=1e-5)
    h = conv(w, f"{name}.in_layers.2", F.silu(h))
    e = F.linear(F.silu(emb), w[f"{name}.emb_layers.1.weight"], w[f"{name}.emb_layers.1.bias"])
    h = h + e[:, :, None, None]
    h = F.group_norm(h, groups, w[f"{name}.out_layers.0.weight"], w[f"{name}.out_layers.0.bias"], eps=1e-5)
    h = conv(w, f"{name}.out_layers.3", F.silu(h))
    skip = conv(w, f"{name}.skip_connection", x) if f"{name}.skip_connection.weight" in w else x
    return skip + h


def attention(w: Weights, name: str, x: torch.Tensor, context: torch.Tensor, heads: int) -> torch.Tensor:
    q = F.linear(x, w[f"{name}.to_q.weight"])
    k = F.linear(context, w[f"{name}.to_k.weight"])
    v = F.linear(context, w[f"{name}.to_v.weight"])
    b, n, d = q.shape
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    scores = split(q) @ split(k).transpose(-1, -2) / math.sqrt(d // heads)
    out = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(b, n, d)
    return F.linear(out, w[f"{name}.to_out.0.weight"], w[f"{name}.to_out.0.bias"])


def layer_norm(w: Weights, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[name + ".weight"], w[name + ".bias"], eps=1e-5)


def spatial_transformer(
    w: Weights, name: str, x: torch.Tensor, context: torch.Tensor, heads: int, groups: int
) -> torch.Tensor:
    b, c, hgt, wid = x.shape
    h = F.group_norm(x, groups, w[f"{name}.norm.weight"], w[f"{name}.norm.bias"], eps=1e-6)
    h = conv(w, f"{name}.proj_in", h).flatten(2).transpose(1, 2)
    blk = f"{name}.transformer_blocks.0"
    h = attention(w, f"{blk}.attn1", layer_norm(w, f"{blk}.norm1", h), layer_norm(w, f"{blk}.norm1", h), heads) + h
    h = attention(w, f"{blk}.attn2", layer_norm(w, f"{blk}.norm2", h), context, heads) + h
    proj = F.linear(layer_norm(w, f"{blk}.norm3", h), w[f"{blk}.ff.net.0.proj.weight"], w[f"{blk}.ff.net.0.proj.bias"])
    value, gate = proj.chunk(2, dim=-1)
    h = F.linear(value * F.gelu(gate), w[f"{blk}.ff.net.2.weight"], w[f"{blk}.ff.net.2.bias"]) + h
    h = h.transpose(1, 2).reshape(b, c, hgt, wid)
    return conv(w, f"{name}.proj_out", h) + x


def control_outputs(
    w: Weights,
    x: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    pair: torch.Tensor,
    query: torch.Tensor,
    model_channels: int,
    heads: int,
    groups: int,
) -> List[torch.Tensor]:
    """The 13 control tensors (12 input zero-convs, then the middle one) for LDM weights `w`
    (keys without `control_model.`)."""
    emb = timestep_embedding(t, model_channels)
    emb = F.linear(
        F.silu(F.linear(emb, w["time_embed.0.weight"], w["time_embed.0.bias"])),
        w["time_embed.2.weight"],
        w["time_embed.2.bias"],
    )
    guided_hint = hint_encoder(w, "input_hint_block", pair) + hint_encoder(w, "input_cond_block", query)
    h = conv(w, "input_blocks.0.0", x) + guided_hint
    outs = [conv(w, "zero_convs.0.0", h)]
    block = 1
    while f"zero_convs.{block}.0.weight" in w:
        prefix = f"input_blocks.{block}"
        if f"{prefix}.0.op.weight" in w:
            h = conv(w, f"{prefix}.0.op", h, stride=2)
        else:
            h = resblock(w, f"{prefix}.0", h, emb, groups)
            if f"{prefix}.1.proj_in.weight" in w:
                h = spatial_transformer(w, f"{prefix}.1", h, context, heads, groups)
        outs.append(conv(w, f"zero_convs.{block}.0", h))
        block += 1
    h = resblock(w, "middle_block.0", h, emb, groups)
    h = spatial_transformer(w, "middle_block.1", h, context, heads, groups)
    h = resblock(w, "middle_block.2", h, emb, groups)
    outs.append(conv(w, "middle_block_out.0", h))
    return outs


def ldm_control_shapes(
    model_channels: int,
    channel_mult: List[int],
    num_res_blocks: int,
    attention_levels: List[bool],
    context_dim: int,
    hint_channels: List[int],
    in_channels: int = 4,
) -> Dict[str, tuple]:
    """Names and shapes of an LDM control branch as the authors' `ControlNet.__init__` lays it out."""
    shapes: Dict[str, tuple] = {}

    def add_conv(name, cin, cout, k=3):
        shapes[name + ".weight"] = (cout, cin, k, k)
        shapes[name + ".bias"] = (cout,)

    def add_norm(name, ch):
        shapes[name + ".weight"] = (ch,)
        shapes[name + ".bias"] = (ch,)

    def add_linear(name, cin, cout, bias=True):
        shapes[name + ".weight"] = (cout, cin)
        if bias:
            shapes[name + ".bias"] = (cout,)

    def add_resblock(name, cin, cout):
        add_norm(f"{name}.in_layers.0", cin)
        add_conv(f"{name}.in_layers.2", cin, cout)
        add_linear(f"{name}.emb_layers.1", 4 * model_channels, cout)
        add_norm(f"{name}.out_layers.0", cout)
        add_conv(f"{name}.out_layers.3", cout, cout)
        if cin != cout:
            add_conv(f"{name}.skip_connection", cin, cout, 1)

    def add_transformer(name, ch):
        add_norm(f"{name}.norm", ch)
        add_conv(f"{name}.proj_in", ch, ch, 1)
        blk = f"{name}.transformer_blocks.0"
        for attn, kv_dim in (("attn1", ch), ("attn2", context_dim)):
            add_linear(f"{blk}.{attn}.to_q", ch, ch, bias=False)
            add_linear(f"{blk}.{attn}.to_k", kv_dim, ch, bias=False)
            add_linear(f"{blk}.{attn}.to_v", kv_dim, ch, bias=False)
            add_linear(f"{blk}.{attn}.to_out.0", ch, ch)
        add_linear(f"{blk}.ff.net.0.proj", ch, ch * 8)
        add_linear(f"{blk}.ff.net.2", ch * 4, ch)
        for norm in ("norm1", "norm2", "norm3"):
            add_norm(f"{blk}.{norm}", ch)
        add_conv(f"{name}.proj_out", ch, ch, 1)

    add_linear("time_embed.0", model_channels, 4 * model_channels)
    add_linear("time_embed.2", 4 * model_channels, 4 * model_channels)
    add_conv("input_blocks.0.0", in_channels, model_channels)
    add_conv("zero_convs.0.0", model_channels, model_channels, 1)
    for encoder, cin in (("input_hint_block", 6), ("input_cond_block", 3)):
        h0, h1, h2, h3 = hint_channels
        for index, (a, b) in enumerate(
            [(cin, h0), (h0, h0), (h0, h1), (h1, h1), (h1, h2), (h2, h2), (h2, h3), (h3, model_channels)]
        ):
            add_conv(f"{encoder}.{2 * index}", a, b)
    ch, block = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            add_resblock(f"input_blocks.{block}.0", ch, mult * model_channels)
            ch = mult * model_channels
            if attention_levels[level]:
                add_transformer(f"input_blocks.{block}.1", ch)
            add_conv(f"zero_convs.{block}.0", ch, ch, 1)
            block += 1
        if level != len(channel_mult) - 1:
            add_conv(f"input_blocks.{block}.0.op", ch, ch)
            add_conv(f"zero_convs.{block}.0", ch, ch, 1)
            block += 1
    add_resblock("middle_block.0", ch, ch)
    add_transformer("middle_block.1", ch)
    add_resblock("middle_block.2", ch, ch)
    add_conv("middle_block_out.0", ch, ch, 1)
    return shapes
