"""Model size presets: the full SD1.5 Prompt Diffusion and small ones with the same architecture.

Every preset builds the same components (CLIP text encoder, KL VAE, UNet, Prompt Diffusion
ControlNet, DDIM scheduler); only the sizes differ. `tiny` is for tests (random weights, built in
well under a second); `embedded` is the embedded default's size (8 latent channels: the 64 px toy
renders keep their detail through the VAE), `small` the first embedded model's; `sd15` is the
published model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerBase

from .model import PromptDiffusionControlNetModel
from .tokenizer import special_token_ids

# SD1.5's noise schedule and DDIM settings (its scheduler_config.json).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)


@dataclass(frozen=True)
class ModelPreset:
    name: str
    unet_channels: Tuple[int, ...]
    layers_per_block: int
    attention_heads: int  # diffusers calls SD1.5's head count `attention_head_dim`
    text_width: int
    text_layers: int
    text_heads: int
    vae_channels: Tuple[int, ...]
    vae_layers_per_block: int
    hint_channels: Tuple[int, ...]
    norm_groups: int = 32
    vae_norm_groups: int = 32
    latent_channels: int = 4
    vae_scaling_factor: float = 0.18215
    resolution: int = 512
    cross_attention_levels: Tuple[bool, ...] = field(default=())
    # Where DDIM's steps fall. SD1.5's "leading" starts 20 steps from pure noise at t = 951, where the
    # model's training inputs still held some of the image; "trailing" starts at t = 999 (Lin et al.
    # 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"), which scored better for
    # the embedded model (its model card).
    timestep_spacing: str = "trailing"

    def unet_config(self) -> Dict[str, Any]:
        levels = self.cross_attention_levels or tuple(
            i < len(self.unet_channels) - 1 for i in range(len(self.unet_channels))
        )
        return dict(
            sample_size=self.resolution // 8,
            in_channels=self.latent_channels,
            out_channels=self.latent_channels,
            block_out_channels=self.unet_channels,
            layers_per_block=self.layers_per_block,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(levels)),
            cross_attention_dim=self.text_width,
            attention_head_dim=self.attention_heads,
            norm_num_groups=self.norm_groups,
        )

    def vae_config(self) -> Dict[str, Any]:
        n = len(self.vae_channels)
        return dict(
            in_channels=3,
            out_channels=3,
            block_out_channels=self.vae_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            layers_per_block=self.vae_layers_per_block,
            latent_channels=self.latent_channels,
            norm_num_groups=self.vae_norm_groups,
            sample_size=self.resolution,
            scaling_factor=self.vae_scaling_factor,
        )

    def text_config(self, tokenizer: PreTrainedTokenizerBase) -> CLIPTextConfig:
        """The text encoder's config for `tokenizer`: its vocabulary size and special-token ids."""
        return CLIPTextConfig(
            vocab_size=len(tokenizer),
            **special_token_ids(tokenizer),
            hidden_size=self.text_width,
            intermediate_size=4 * self.text_width,
            num_hidden_layers=self.text_layers,
            num_attention_heads=self.text_heads,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=self.text_width,
        )


# ComfyUI builds a UNet from a first width and integer multipliers (model_channels x channel_mult),
# and its VAE likewise: every level's width must be a multiple of the first, and a multiple of the
# norm group count. tests/test_comfy_nodes.py loads every preset through the pack's loader.
PRESETS: Dict[str, ModelPreset] = {
    "sd15": ModelPreset(
        name="sd15",
        unet_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_heads=8,
        text_width=768,
        text_layers=12,
        text_heads=12,
        vae_channels=(128, 256, 512, 512),
        vae_layers_per_block=2,
        hint_channels=(16, 32, 96, 256),
        resolution=512,
        timestep_spacing="leading",  # the published model's, as its authors sample it
    ),
    "small": ModelPreset(
        name="small",
        unet_channels=(32, 64, 128),
        layers_per_block=2,
        attention_heads=4,
        text_width=64,
        text_layers=2,
        text_heads=4,
        vae_channels=(32, 32, 64, 64),
        vae_layers_per_block=1,
        hint_channels=(16, 32, 48, 64),
        norm_groups=16,
        vae_norm_groups=16,
        resolution=64,
    ),
    "embedded": ModelPreset(
        name="embedded",
        unet_channels=(32, 96, 128),
        layers_per_block=2,
        attention_heads=4,
        text_width=64,
        text_layers=2,
        text_heads=4,
        vae_channels=(32, 64, 96, 96),
        vae_layers_per_block=1,
        hint_channels=(16, 32, 48, 64),
        norm_groups=16,
        vae_norm_groups=16,
        latent_channels=8,
        resolution=64,
    ),
    "tiny": ModelPreset(
        name="tiny",
        unet_channels=(32, 64),
        layers_per_block=1,
        attention_heads=2,
        text_width=32,
        text_layers=1,
        text_heads=2,
        vae_channels=(8, 8, 16, 16),
        vae_layers_per_block=1,
        hint_channels=(8, 8, 16, 16),
        norm_groups=8,
        vae_norm_groups=8,
        resolution=64,
    ),
}


def get_preset(name: str) -> ModelPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]


def build_preset_components(
    preset: str | ModelPreset, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> Dict[str, Any]:
    """Random-weight components of a Prompt Diffusion pipeline at `preset`'s size. The ControlNet
    starts from the UNet's encoder, as the authors' `tool_add_control.py` does."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**preset.unet_config())
    vae = AutoencoderKL(**preset.vae_config())
    text_encoder = CLIPTextModel(preset.text_config(tokenizer))
    controlnet = PromptDiffusionControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=preset.hint_channels
    )
    return dict(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        controlnet=controlnet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER, timestep_spacing=preset.timestep_spacing),
    )
