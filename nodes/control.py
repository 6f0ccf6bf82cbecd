"""Prompt Diffusion's control on ComfyUI's own ControlNet machinery.

`PromptDiffusionControlModel` is ComfyUI's `comfy.cldm.cldm.ControlNet` (ComfyUI ops, so fp16,
manual casting and memory management work as for any ControlNet) with the published model's two
hint encoders: `input_hint_block` (example pair, 6 channels) and `input_cond_block` (query,
3 channels), summed and added after the first input block, as in the authors' `cldm.py`.

ComfyUI receives one 9-channel hint, source | target | query, each in [-1, 1] (plus an optional
10th channel, a mask in [0, 1]), as `cond_hint_original`. Its own code then resizes the hint to the
latent size x 8 and broadcasts it over the batch and over cond/uncond chunks (`batched_number`);
the model splits the channels back into the two encoders.

Few-shot (`pdiff_core.shots`): K example pairs make a (6K + 3)-channel hint, s1 | t1 | ... | sK | tK |
query (+ mask: 6K + 4, so the parity tells whether a mask is there); the control's extra arguments
`shot_weights` and `shot_combine` say how the K pairs are combined, as the pipeline does.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.model_management
import comfy.ops
import comfy.supported_models
import comfy.utils
from comfy.ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from pdiff_core.checkpoints import CheckpointError, ControlCheckpoint, diffusers_to_ldm
from pdiff_core.ldm_config import ldm_unet_config
from pdiff_core.model import PAIR_CHANNELS, QUERY_CHANNELS
from pdiff_core.shots import DEFAULT_COMBINE, check_combine, combine_shot_batches, normalise_weights, weighted_mean

from .group_norm import group_norm_operations

logger = logging.getLogger(__name__)


def _hint_encoder(
    in_channels: int,
    widths: Sequence[int],
    out_channels: int,
    operations: type,
    dtype: Optional[torch.dtype],
    device: Optional[torch.device],
) -> TimestepEmbedSequential:
    """The LDM hint encoder (convs at even indices, SiLU between, strided convs between widths)
    for any widths; ComfyUI's own hard-codes SD1.5's 16, 32, 96, 256."""

    # Adapted from ComfyUI 0.3.64 comfy/cldm/cldm.py ControlNet.__init__'s input_hint_block.
    def conv(c_in: int, c_out: int, stride: int = 1) -> torch.nn.Module:
        return operations.conv_nd(2, c_in, c_out, 3, padding=1, stride=stride, dtype=dtype, device=device)

    layers: List[torch.nn.Module] = [conv(in_channels, widths[0]), torch.nn.SiLU()]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [conv(c_in, c_in), torch.nn.SiLU(), conv(c_in, c_out, stride=2), torch.nn.SiLU()]
    layers.append(conv(widths[-1], out_channels))
    return TimestepEmbedSequential(*layers)


class PromptDiffusionControlModel(comfy.cldm.cldm.ControlNet):
    """ComfyUI's ControlNet with an example-pair encoder and a query encoder.

    `hint` is (B, 9, H, W): source, target, query in [-1, 1]; or (B, 10, H, W) with a mask in
    [0, 1] last, which scales every control output where it is below 1.
    """

    def __init__(
        self,
        hint_widths: Sequence[int],
        operations: type,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device] = None,
        **unet_config: Any,
    ) -> None:
        super().__init__(hint_channels=PAIR_CHANNELS, operations=operations, dtype=dtype, device=device, **unet_config)
        self.input_hint_block = _hint_encoder(
            PAIR_CHANNELS, hint_widths, self.model_channels, operations, dtype, device
        )
        self.input_cond_block = _hint_encoder(
            QUERY_CHANNELS, hint_widths, self.model_channels, operations, dtype, device
        )

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        y: Optional[torch.Tensor] = None,
        shot_weights: Optional[Sequence[float]] = None,
        shot_combine: str = DEFAULT_COMBINE,
        **kwargs: Any,
    ) -> Dict[str, List[torch.Tensor]]:
        # Adapted from ComfyUI 0.3.64 comfy/cldm/cldm.py ControlNet.forward: two hint encoders, K example
        # pairs, an optional mask.
        shots, masked = hint_shots(hint.shape[1])
        weights = normalise_weights(shot_weights, shots)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype))
        query_hint = self.input_cond_block(
            hint[:, shots * PAIR_CHANNELS : shots * PAIR_CHANNELS + QUERY_CHANNELS], emb, context
        )
        residual_shots = shots if shots > 1 and check_combine(shot_combine) == "residuals" else 1
        if shots == 1:
            guided_hint = self.input_hint_block(hint[:, :PAIR_CHANNELS], emb, context) + query_hint
        else:
            # shot-major (K * b, 6, H, W), as the pipeline batches its K control passes; ComfyUI leaves a
            # hint of batch b = 1 unbroadcast over x's batch
            pairs = hint[:, : shots * PAIR_CHANNELS].unflatten(1, (shots, PAIR_CHANNELS)).transpose(0, 1).flatten(0, 1)
            pair_hint = self.input_hint_block(pairs, emb, context).unflatten(0, (shots, -1))
            if residual_shots == 1:
                guided_hint = weighted_mean(pair_hint, weights) + query_hint
            else:
                guided_hint = (pair_hint + query_hint).expand(shots, x.shape[0], -1, -1, -1).flatten(0, 1)
                x, emb, context = x.repeat(shots, 1, 1, 1), emb.repeat(shots, 1), context.repeat(shots, 1, 1)
        outputs = []
        h = x
        for index, (module, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = module(h, emb, context)
            if index == 0:
                h = h + guided_hint
            outputs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        middle = [self.middle_block_out(h, emb, context)]
        if residual_shots > 1:
            *outputs, mid = combine_shot_batches([*outputs, middle[0]], weights)
            middle = [mid]
        if masked:
            mask = hint[:, -1:]
            outputs = [out * torch.nn.functional.adaptive_avg_pool2d(mask, out.shape[-2:]) for out in outputs]
            middle = [out * torch.nn.functional.adaptive_avg_pool2d(mask, out.shape[-2:]) for out in middle]
        return {"middle": middle, "output": outputs}


def hint_shots(channels: int) -> Tuple[int, bool]:
    """(K example pairs, whether a mask is last) of a (6K + 3)- or (6K + 4)-channel hint."""
    for extra in (QUERY_CHANNELS, QUERY_CHANNELS + 1):
        shots, rest = divmod(channels - extra, PAIR_CHANNELS)
        if shots >= 1 and rest == 0:
            return shots, extra > QUERY_CHANNELS
    raise ValueError(
        f"the Prompt Diffusion ControlNet got a {channels}-channel hint; it needs the example pair and "
        "the query: apply it with the 'Apply Prompt Diffusion' node (PDiff_ApplyPromptDiffusion), not the "
        "stock ControlNet apply nodes"
    )


class PromptDiffusionControl(comfy.controlnet.ControlNet):
    """A ComfyUI CONTROL_NET whose hint is the 9/10-channel Prompt Diffusion hint (see `build_hint`)."""

    def get_control(
        self,
        x_noisy: torch.Tensor,
        t: torch.Tensor,
        cond: Dict[str, Any],
        batched_number: int,
        transformer_options: Dict[str, Any],
    ) -> Any:
        # ComfyUI's broadcast (comfy.controlnet.broadcast_image_to) silently drops or repeats hints whose
        # batch is neither 1 nor the latent's: two queries over one latent would show only the first.
        hints, latents = self.cond_hint_original.shape[0], x_noisy.shape[0] // max(batched_number, 1)
        if hints not in (1, latents):
            raise ValueError(
                f"Apply Prompt Diffusion got a batch of {hints} (example pairs or queries) but the latent batch is "
                f"{latents}: give the latent (e.g. Empty Latent Image's batch_size) a batch of {hints}, or pass one "
                "example pair and one query"
            )
        return super().get_control(x_noisy, t, cond, batched_number, transformer_options)

    def copy(self) -> "PromptDiffusionControl":
        # Adapted from ComfyUI 0.3.64 comfy/controlnet.py ControlNet.copy, which would build the base class.
        c = PromptDiffusionControl(
            None,
            global_average_pooling=self.global_average_pooling,
            load_device=self.load_device,
            manual_cast_dtype=self.manual_cast_dtype,
        )
        c.control_model = self.control_model
        c.control_model_wrapped = self.control_model_wrapped
        self.copy_to(c)
        return c


def build_control(checkpoint: ControlCheckpoint, dtype: Optional[torch.dtype] = None) -> PromptDiffusionControl:
    """A ComfyUI control object from a Prompt Diffusion checkpoint read by `pdiff_core`; weights go
    in through their LDM names (`diffusers_to_ldm`). `dtype` None lets ComfyUI pick, as its own
    ControlNet loader does."""
    config = checkpoint.config
    unet_config = ldm_unet_config(config, controlnet=True)
    state_dict = diffusers_to_ldm(checkpoint.state_dict, int(config["layers_per_block"]), prefix="")
    load_device = comfy.model_management.get_torch_device()
    if dtype is None:
        dtype = comfy.model_management.unet_dtype(
            model_params=-1,
            supported_dtypes=comfy.supported_models.SD15.supported_inference_dtypes,
            weight_dtype=comfy.utils.weight_dtype(state_dict),
        )
    manual_cast_dtype = comfy.model_management.unet_manual_cast(dtype, load_device)
    operations = group_norm_operations(
        comfy.ops.pick_operations(dtype, manual_cast_dtype, disable_fast_fp8=True), config
    )
    model = PromptDiffusionControlModel(
        list(config["conditioning_embedding_out_channels"]),
        operations=operations,
        dtype=dtype,
        device=comfy.model_management.unet_offload_device(),
        **unet_config,
    )
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{checkpoint.source}: weights do not fit the Prompt Diffusion ControlNet built from its config: "
            f"missing {sorted(missing)[:10]}, unexpected {sorted(unexpected)[:10]}"
        )
    logger.info(
        "Prompt Diffusion ControlNet from %s (%s layout), dtype %s", checkpoint.source, checkpoint.layout, dtype
    )
    return PromptDiffusionControl(
        model,
        global_average_pooling=bool(config.get("global_pool_conditions", False)),
        load_device=load_device,
        manual_cast_dtype=manual_cast_dtype,
    )


def _resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if images.shape[-2:] == (height, width):
        return images
    return comfy.utils.common_upscale(images, width, height, "bilinear", "center")


def build_few_shot_hint(
    sources: torch.Tensor, targets: torch.Tensor, query: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The few-shot hint (B, 6K + 3 or 6K + 4, H, W): the K images of the `sources` and `targets`
    batches are K example pairs shown to each of the B queries (see `build_hint` for sizes)."""
    if sources.ndim != 4 or targets.ndim != 4 or sources.shape[0] != targets.shape[0]:
        raise ValueError(
            f"example_sources and example_targets must be IMAGE batches of one length (one image per "
            f"example pair), got shapes {tuple(sources.shape)} and {tuple(targets.shape)}"
        )
    shots = [
        build_hint(sources[k : k + 1], targets[k : k + 1], query)[:, :PAIR_CHANNELS] for k in range(sources.shape[0])
    ]
    rest = build_hint(sources[:1], targets[:1], query, mask)[:, PAIR_CHANNELS:]
    return torch.cat([*shots, rest], dim=1)


def build_hint(
    source: torch.Tensor, target: torch.Tensor, query: torch.Tensor, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """The Prompt Diffusion hint (B, 9 or 10, H, W) from ComfyUI IMAGEs (B, H, W, 3) in [0, 1] and an
    optional MASK ((B,) H, W). Everything is resized (bilinear, centre crop) to the query's size; a
    batch of 1 is broadcast over the others' batch."""
    images = {"example_source": source, "example_target": target, "query": query}
    for name, image in images.items():
        if image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(f"{name} must be an IMAGE (batch, height, width, 3), got shape {tuple(image.shape)}")
    height, width = query.shape[1:3]
    parts = {
        name: _resize(image[..., :3].movedim(-1, 1).float(), height, width) * 2.0 - 1.0
        for name, image in images.items()
    }
    if mask is not None:
        mask = mask.reshape(-1, 1, *mask.shape[-2:]).float()
        parts["mask"] = _resize(mask, height, width).clamp(0.0, 1.0)
    batch = max(p.shape[0] for p in parts.values())
    if any(p.shape[0] not in (1, batch) for p in parts.values()):
        sizes = ", ".join(f"{name} {p.shape[0]}" for name, p in parts.items())
        raise ValueError(f"batch sizes do not match ({sizes}): each must be 1 (broadcast) or {batch}")
    return torch.cat([p.expand(batch, *p.shape[1:]) for p in parts.values()], dim=1)
