"""The Prompt Diffusion ControlNet: an SD1.5 ControlNet with two hint encoders.

The example pair (source and target concatenated on channels, 6 channels) goes through
`controlnet_cond_embedding`, the query (3 channels) through `controlnet_query_cond_embedding`;
their outputs are summed and added to the first conv's output, as in the authors'
`cldm.py` (`input_hint_block` + `input_cond_block`). Parameter names follow the diffusers
research port (`PromptDiffusionControlNetModel`) so its `controlnet/` folders load as they are.

Every image enters in [-1, 1], the range the published weights were trained on.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import torch
from diffusers import (
    ControlNetModel,
    ModelMixin,  # noqa: F401  diffusers' pipeline loader looks up a component's base class in its module
)
from diffusers.configuration_utils import register_to_config
from diffusers.models.controlnets import ControlNetOutput
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding  # no public path; diffusers >= 0.32

PAIR_CHANNELS = 6
QUERY_CHANNELS = 3


class PromptDiffusionControlNetModel(ControlNetModel):
    """A `ControlNetModel` whose conditioning is an example pair plus a query image."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        conditioning_channels: int = PAIR_CHANNELS,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: Optional[str] = "UNetMidBlock2DCrossAttn",
        only_cross_attention: Union[bool, Tuple[bool]] = False,
        block_out_channels: Tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: Optional[int] = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        transformer_layers_per_block: Union[int, Tuple[int, ...]] = 1,
        encoder_hid_dim: Optional[int] = None,
        encoder_hid_dim_type: Optional[str] = None,
        attention_head_dim: Union[int, Tuple[int, ...]] = 8,
        num_attention_heads: Optional[Union[int, Tuple[int, ...]]] = None,
        use_linear_projection: bool = False,
        class_embed_type: Optional[str] = None,
        addition_embed_type: Optional[str] = None,
        addition_time_embed_dim: Optional[int] = None,
        num_class_embeds: Optional[int] = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        projection_class_embeddings_input_dim: Optional[int] = None,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: Optional[Tuple[int, ...]] = (16, 32, 96, 256),
        global_pool_conditions: bool = False,
        addition_embed_type_num_heads: int = 64,
    ):
        if class_embed_type is not None or addition_embed_type is not None or encoder_hid_dim_type is not None:
            raise ValueError(
                "PromptDiffusionControlNetModel is an SD1.5-family ControlNet: class_embed_type, "
                "addition_embed_type and encoder_hid_dim_type must be None, got "
                f"{class_embed_type!r}, {addition_embed_type!r}, {encoder_hid_dim_type!r}"
            )
        if conditioning_channels != PAIR_CHANNELS:
            raise ValueError(
                f"conditioning_channels is the example pair's channel count and must be {PAIR_CHANNELS} "
                f"(source and target RGB images concatenated), got {conditioning_channels}"
            )
        super().__init__(
            in_channels=in_channels,
            conditioning_channels=conditioning_channels,
            flip_sin_to_cos=flip_sin_to_cos,
            freq_shift=freq_shift,
            down_block_types=down_block_types,
            mid_block_type=mid_block_type,
            only_cross_attention=only_cross_attention,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            downsample_padding=downsample_padding,
            mid_block_scale_factor=mid_block_scale_factor,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
            encoder_hid_dim=encoder_hid_dim,
            encoder_hid_dim_type=encoder_hid_dim_type,
            attention_head_dim=attention_head_dim,
            num_attention_heads=num_attention_heads,
            use_linear_projection=use_linear_projection,
            class_embed_type=class_embed_type,
            addition_embed_type=addition_embed_type,
            addition_time_embed_dim=addition_time_embed_dim,
            num_class_embeds=num_class_embeds,
            upcast_attention=upcast_attention,
            resnet_time_scale_shift=resnet_time_scale_shift,
            projection_class_embeddings_input_dim=projection_class_embeddings_input_dim,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            global_pool_conditions=global_pool_conditions,
            addition_embed_type_num_heads=addition_embed_type_num_heads,
        )
        self.controlnet_query_cond_embedding = ControlNetConditioningEmbedding(
            conditioning_embedding_channels=block_out_channels[0],
            block_out_channels=conditioning_embedding_out_channels,
            conditioning_channels=QUERY_CHANNELS,
        )

    def encode_hints(self, example_pair: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Sum of both hint encoders' outputs. It does not depend on the timestep, so a
        sampler computes it once per generation and passes it as `hint_embedding`."""
        if example_pair.shape[1] != PAIR_CHANNELS:
            raise ValueError(f"example_pair must have {PAIR_CHANNELS} channels, got shape {tuple(example_pair.shape)}")
        if query.shape[1] != QUERY_CHANNELS:
            raise ValueError(f"query must have {QUERY_CHANNELS} channels, got shape {tuple(query.shape)}")
        if example_pair.shape[-2:] != query.shape[-2:]:
            raise ValueError(
                f"example_pair and query must have the same size, got {tuple(example_pair.shape[-2:])} "
                f"and {tuple(query.shape[-2:])}"
            )
        if self.config.controlnet_conditioning_channel_order == "bgr":
            example_pair = torch.cat([example_pair[:, 2::-1], example_pair[:, :2:-1]], dim=1)
            query = torch.flip(query, dims=[1])
        return self.controlnet_cond_embedding(example_pair) + self.controlnet_query_cond_embedding(query)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Union[torch.Tensor, float, int],
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: Optional[torch.Tensor] = None,
        controlnet_query_cond: Optional[torch.Tensor] = None,
        conditioning_scale: float = 1.0,
        hint_embedding: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        timestep_cond: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        added_cond_kwargs: Optional[Dict[str, torch.Tensor]] = None,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        guess_mode: bool = False,
        return_dict: bool = True,
    ) -> Union[ControlNetOutput, Tuple[Tuple[torch.Tensor, ...], torch.Tensor]]:
        """Control residuals for the UNet.

        `controlnet_cond` is the example pair (B, 6, H, W) and `controlnet_query_cond` the query
        (B, 3, H, W), as in the diffusers research port; or pass `hint_embedding` from
        `encode_hints` to skip the encoders. `class_labels`, `timestep_cond` and
        `added_cond_kwargs` are accepted because diffusers' `MultiControlNetModel` passes them,
        and must be empty: an SD1.5 ControlNet has no class, timestep-condition or SDXL embeddings.
        """
        # Adapted from diffusers 0.35 models/controlnets/controlnet.py ControlNetModel.forward: the two hint
        # encoders replace controlnet_cond_embedding, and the hints may come precomputed.
        if class_labels is not None or timestep_cond is not None or added_cond_kwargs:
            raise ValueError("PromptDiffusionControlNetModel takes no class_labels, timestep_cond or added_cond_kwargs")
        if hint_embedding is None:
            if controlnet_cond is None or controlnet_query_cond is None:
                raise ValueError(
                    "pass controlnet_cond (example pair) and controlnet_query_cond (query), or hint_embedding"
                )
            hint_embedding = self.encode_hints(controlnet_cond, controlnet_query_cond)

        if attention_mask is not None:
            attention_mask = (1 - attention_mask.to(sample.dtype)) * -10000.0
            attention_mask = attention_mask.unsqueeze(1)

        timesteps = timestep
        if not torch.is_tensor(timesteps):
            timesteps = torch.tensor([timesteps], device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None].to(sample.device)
        timesteps = timesteps.expand(sample.shape[0])
        # time_proj always returns float32; the embedding may run in fp16/bf16.
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype))

        sample = self.conv_in(sample) + hint_embedding

        down_block_res_samples: Tuple[torch.Tensor, ...] = (sample,)
        for downsample_block in self.down_blocks:
            if getattr(downsample_block, "has_cross_attention", False):
                sample, res_samples = downsample_block(
                    hidden_states=sample,
                    temb=emb,
                    encoder_hidden_states=encoder_hidden_states,
                    attention_mask=attention_mask,
                    cross_attention_kwargs=cross_attention_kwargs,
                )
            else:
                sample, res_samples = downsample_block(hidden_states=sample, temb=emb)
            down_block_res_samples += res_samples

        if self.mid_block is not None:
            sample = self.mid_block(
                sample,
                emb,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=attention_mask,
                cross_attention_kwargs=cross_attention_kwargs,
            )

        down_residuals = [block(res) for res, block in zip(down_block_res_samples, self.controlnet_down_blocks)]
        mid_residual = self.controlnet_mid_block(sample)

        if guess_mode and not self.config.global_pool_conditions:
            # As diffusers' ControlNetModel: shallow residuals weigh less (0.1 to 1.0).
            scales = torch.logspace(-1, 0, len(down_residuals) + 1, device=sample.device) * conditioning_scale
            down_residuals = [res * scale for res, scale in zip(down_residuals, scales)]
            mid_residual = mid_residual * scales[-1]
        else:
            down_residuals = [res * conditioning_scale for res in down_residuals]
            mid_residual = mid_residual * conditioning_scale

        if self.config.global_pool_conditions:
            down_residuals = [torch.mean(res, dim=(2, 3), keepdim=True) for res in down_residuals]
            mid_residual = torch.mean(mid_residual, dim=(2, 3), keepdim=True)

        if not return_dict:
            return (tuple(down_residuals), mid_residual)
        return ControlNetOutput(down_block_res_samples=tuple(down_residuals), mid_block_res_sample=mid_residual)

    @classmethod
    def from_unet(
        cls, unet, conditioning_embedding_out_channels: Tuple[int, ...] = (16, 32, 96, 256)
    ) -> "PromptDiffusionControlNetModel":
        """A control branch initialised from a UNet's encoder, as the authors' `tool_add_control.py`
        does; both hint encoders start with a zero output conv, like every zero conv."""
        base = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=conditioning_embedding_out_channels)
        config = {k: v for k, v in base.config.items() if not k.startswith("_")}
        model = cls(**{**config, "conditioning_channels": PAIR_CHANNELS})
        # Only the pair encoder's first conv differs in shape (6 input channels); both encoders
        # keep their fresh initialisation, whose zero output conv leaves the UNet unchanged at first.
        copied = {k: v for k, v in base.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        missing, unexpected = model.load_state_dict(copied, strict=False)
        if unexpected or not all("cond_embedding." in k for k in missing):
            raise ValueError(
                f"{type(unet).__name__} does not match a Prompt Diffusion ControlNet: parameters the control branch "
                f"lacks: {unexpected}; control-branch parameters it did not provide: "
                f"{[k for k in missing if 'cond_embedding.' not in k]}"
            )
        return model.to(dtype=unet.dtype)
