"""ComfyUI's own MODEL, CLIP and VAE from a Prompt Diffusion diffusers pipeline folder, at any size.

ComfyUI's checkpoint detection recognises SD1.5 only at full size, so this builds the objects from the
folder's explicit configs: `comfy.supported_models.SD15` with the folder's UNet config, an SD1 CLIP
with the folder's text-model config and tokenizer, and `comfy.sd.VAE` with the folder's VAE config.
Stock CLIPTextEncode, KSampler and VAEDecode then run on them unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Tuple

import torch

import comfy.latent_formats
import comfy.ldm.modules.diffusionmodules.model as comfy_vae_blocks
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils
import folder_paths

from pdiff_core.checkpoints import FOLDER_WEIGHT_NAMES, CheckpointError, PipelineFolderError, read_controlnet
from pdiff_core.ldm_config import ldm_unet_config
from pdiff_core.model_folder import check_model_folder
from pdiff_core.text_encoder import with_text_model_prefix
from pdiff_core.tokenizer import TokenizerFolderError, clip_tokenizer_class, read_clip_vocab

from .control import PromptDiffusionControl, build_control
from .group_norm import group_norm_operations

# ComfyUI's sampling schedules, by diffusers' names: "linear" in ComfyUI is diffusers' "scaled_linear".
BETA_SCHEDULES = {"scaled_linear": "linear", "linear": "sqrt_linear"}
PREDICTION_TYPES = {"epsilon": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION}
CLIP_VOCAB_SIZE = 49408  # ComfyUI's CLIP text model always builds this many token embeddings


def read_component(folder: Path, name: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """`(config, state_dict)` of the subfolder `name` (config.json + weights)."""
    sub = folder / name
    config_file = sub / "config.json"
    if not config_file.is_file():
        raise PipelineFolderError(
            f"{config_file} not found: a Prompt Diffusion pipeline folder needs {name}/config.json"
        )
    weights = next((sub / w for w in FOLDER_WEIGHT_NAMES if (sub / w).is_file()), None)
    if weights is None:
        raise PipelineFolderError(f"no weights in {sub}: expected one of {', '.join(FOLDER_WEIGHT_NAMES)}")
    return json.loads(config_file.read_text()), comfy.utils.load_torch_file(str(weights), safe_load=True)


class SmallSD15(comfy.supported_models.SD15):
    """SD1.5 at the folder's size: the head count comes from its config, not SD1.5's 8."""

    unet_extra_config: Dict[str, Any] = {}

    def __init__(
        self,
        unet_config: Dict[str, Any],
        model_type: comfy.model_base.ModelType,
        sampling_settings: Dict[str, Any],
        vae_scale: float,
    ) -> None:
        super().__init__(unet_config)
        self.prediction = model_type
        self.sampling_settings = dict(sampling_settings)
        self.latent_format = comfy.latent_formats.SD15(scale_factor=vae_scale)
        channels = int(unet_config["in_channels"])
        if channels != self.latent_format.latent_channels:
            # KSampler widens an empty latent to this; SD1.5's preview factors are for 4 channels.
            self.latent_format.latent_channels = channels
            self.latent_format.latent_rgb_factors = None
            self.latent_format.latent_rgb_factors_bias = None
            self.latent_format.taesd_decoder_name = None

    def model_type(self, state_dict: Mapping[str, Any], prefix: str = "") -> comfy.model_base.ModelType:
        return self.prediction

    def inpaint_model(self) -> bool:
        # ComfyUI's check (supported_models_base, 0.3.64) is in_channels > 4, meant for SD's 4-channel latents.
        return self.unet_config["in_channels"] > self.latent_format.latent_channels


def _sampling(folder: Path) -> Tuple[comfy.model_base.ModelType, Dict[str, Any]]:
    config_file = folder / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise PipelineFolderError(f"{config_file} not found: the noise schedule is needed to sample")
    config = json.loads(config_file.read_text())
    schedule = config.get("beta_schedule", "scaled_linear")
    prediction = config.get("prediction_type", "epsilon")
    if schedule not in BETA_SCHEDULES or config.get("trained_betas") is not None:
        raise PipelineFolderError(
            f"{config_file}: beta_schedule {schedule!r} is not supported; expected one of {list(BETA_SCHEDULES)}"
        )
    if prediction not in PREDICTION_TYPES:
        raise PipelineFolderError(
            f"{config_file}: prediction_type {prediction!r} is not supported; expected one of {list(PREDICTION_TYPES)}"
        )
    settings = {
        "beta_schedule": BETA_SCHEDULES[schedule],
        "linear_start": config.get("beta_start", 0.00085),
        "linear_end": config.get("beta_end", 0.012),
        "timesteps": config.get("num_train_timesteps", 1000),
        "zsnr": bool(config.get("rescale_betas_zero_snr", False)),
    }
    return PREDICTION_TYPES[prediction], settings


def load_unet(folder: Path, vae_scale: float) -> comfy.model_patcher.ModelPatcher:
    config, diffusers_sd = read_component(folder, "unet")
    try:
        unet_config = ldm_unet_config(config)
    except CheckpointError as error:
        raise PipelineFolderError(f"{folder / 'unet' / 'config.json'}: {error}") from error
    key_map = comfy.utils.unet_to_diffusers(unet_config)  # also lists optional keys
    state_dict = {ldm: diffusers_sd[diffusers] for diffusers, ldm in key_map.items() if diffusers in diffusers_sd}
    leftover = sorted(set(diffusers_sd) - set(key_map))

    model_type, sampling = _sampling(folder)
    model_config = SmallSD15(unet_config, model_type, sampling, vae_scale)
    load_device = comfy.model_management.get_torch_device()
    dtype = comfy.model_management.unet_dtype(
        model_params=comfy.utils.calculate_parameters(state_dict),
        supported_dtypes=model_config.supported_inference_dtypes,
        weight_dtype=comfy.utils.weight_dtype(state_dict),
    )
    manual_cast_dtype = comfy.model_management.unet_manual_cast(
        dtype, load_device, model_config.supported_inference_dtypes
    )
    model_config.set_inference_dtype(dtype, manual_cast_dtype)
    model_config.custom_operations = group_norm_operations(comfy.ops.pick_operations(dtype, manual_cast_dtype), config)
    offload_device = comfy.model_management.unet_offload_device()
    model = model_config.get_model(state_dict, "").to(offload_device)
    missing = sorted(set(model.diffusion_model.state_dict()) - set(state_dict))
    if missing or leftover:
        raise PipelineFolderError(
            f"{folder / 'unet'}: weights do not fit its config.json: missing {missing[:10]}, unexpected {leftover[:10]}"
        )
    model.load_model_weights(state_dict, "")
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def load_clip(folder: Path) -> comfy.sd.CLIP:
    config, state_dict = read_component(folder, "text_encoder")
    state_dict = with_text_model_prefix(state_dict)  # the names transformers 4 and ComfyUI use
    tokenizer_dir = folder / "tokenizer"
    try:  # vocab.json + merges.txt (transformers 4) or tokenizer.json (transformers 5)
        vocab, _ = read_clip_vocab(tokenizer_dir)
        tokenizer_class = clip_tokenizer_class(tokenizer_dir)
    except TokenizerFolderError as err:
        raise PipelineFolderError(str(err)) from err
    tokenizer_config_file = tokenizer_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_file.read_text()) if tokenizer_config_file.is_file() else {}
    start, end = vocab.get("<|startoftext|>"), vocab.get("<|endoftext|>")
    pad_token = tokenizer_config.get("pad_token") or "<|endoftext|>"
    if isinstance(pad_token, dict):  # older transformers save special tokens as AddedToken dicts
        pad_token = pad_token.get("content", "<|endoftext|>")
    pad = vocab.get(pad_token, end)
    if start is None or end is None:
        raise PipelineFolderError(
            f"{tokenizer_dir}: its vocabulary lacks <|startoftext|> or <|endoftext|>: not a CLIP tokenizer"
        )

    key = "text_model.embeddings.token_embedding.weight"
    vocab_size, width = state_dict[key].shape
    if vocab_size > CLIP_VOCAB_SIZE:
        raise PipelineFolderError(
            f"{folder / 'text_encoder'}: {vocab_size} tokens; ComfyUI's CLIP holds at most {CLIP_VOCAB_SIZE}"
        )
    # Rows past the tokenizer's vocabulary are never looked up; ComfyUI's CLIP always has 49408.
    state_dict[key] = torch.cat([state_dict[key], state_dict[key].new_zeros(CLIP_VOCAB_SIZE - vocab_size, width)])
    text_config = {
        "num_hidden_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "num_attention_heads": config["num_attention_heads"],
        "intermediate_size": config["intermediate_size"],
        "hidden_act": config.get("hidden_act", "quick_gelu"),
        "max_position_embeddings": config["max_position_embeddings"],
        "eos_token_id": end,
        "vocab_size": CLIP_VOCAB_SIZE,
        "projection_dim": config.get("projection_dim", width),
    }
    max_length = int(config["max_position_embeddings"])
    tokenizer = functools.partial(
        comfy.sd1_clip.SD1Tokenizer,
        tokenizer=functools.partial(
            comfy.sd1_clip.SDTokenizer,
            tokenizer_path=str(tokenizer_dir),
            max_length=max_length,
            embedding_size=width,
            pad_token=pad,
            tokenizer_class=tokenizer_class,
        ),
    )
    text_model = functools.partial(
        comfy.sd1_clip.SD1ClipModel,
        clip_model=functools.partial(
            comfy.sd1_clip.SDClipModel,
            textmodel_json_config=text_config,
            max_length=max_length,
            special_tokens={"start": start, "end": end, "pad": pad},
            return_projected_pooled=False,
        ),
    )
    clip = comfy.sd.CLIP(
        comfy.supported_models_base.ClipTarget(tokenizer, text_model),
        embedding_directory=folder_paths.get_folder_paths("embeddings"),
        parameters=comfy.utils.calculate_parameters(state_dict),
    )
    missing, unexpected = clip.load_sd(state_dict)
    missing = [k for k in missing if not k.startswith("text_projection")]  # pooled output: unused by SD1.5
    if missing or unexpected:
        raise PipelineFolderError(
            f"{folder / 'text_encoder'}: weights do not fit its config.json: missing {missing[:10]}, unexpected {unexpected[:10]}"
        )
    return clip


@contextlib.contextmanager
def vae_norm_groups(config: Mapping[str, Any]) -> Iterator[None]:
    """ComfyUI's VAE blocks build their GroupNorms as `ops.GroupNorm(num_groups=32, ...)` from their
    module's `ops`, with no way to ask for another count: swap in ops with the group count of the VAE's
    diffusers `config` while the VAE is built (ComfyUI builds models on one thread)."""
    original = comfy_vae_blocks.ops
    comfy_vae_blocks.ops = group_norm_operations(original, config)
    try:
        yield
    finally:
        comfy_vae_blocks.ops = original


def vae_params(config: Mapping[str, Any], config_file: Path) -> Dict[str, Any]:
    """The arguments of ComfyUI's `AutoencoderKL` for the diffusers VAE `config` (read from `config_file`)."""
    channels = list(config["block_out_channels"])
    layers = int(config.get("layers_per_block", 2))
    if len(channels) != 4 or layers > 2 or any(c % channels[0] for c in channels):
        raise PipelineFolderError(
            f"{config_file}: ComfyUI's SD VAE needs 4 levels (8x downscaling) of multiples of the first "
            f"width and at most 2 layers per block; got block_out_channels {channels}, layers_per_block {layers}"
        )
    latent_channels = int(config.get("latent_channels", 4))
    ddconfig = {
        "double_z": True,
        "z_channels": latent_channels,
        "resolution": int(config.get("sample_size", 512)),
        "in_channels": int(config.get("in_channels", 3)),
        "out_ch": int(config.get("out_channels", 3)),
        "ch": channels[0],
        "ch_mult": [c // channels[0] for c in channels],
        "num_res_blocks": layers,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    return {"embed_dim": latent_channels, "ddconfig": ddconfig}


def load_vae(folder: Path) -> Tuple[comfy.sd.VAE, float]:
    config, state_dict = read_component(folder, "vae")
    params = vae_params(config, folder / "vae" / "config.json")
    with vae_norm_groups(config):
        vae = comfy.sd.VAE(sd=state_dict, config={"params": params})
    vae.latent_channels = params["embed_dim"]  # comfy.sd.VAE assumes SD's 4 when given a config
    return vae, float(config.get("scaling_factor", 0.18215))


def load_pipeline_folder(
    folder: Path,
) -> Tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE, PromptDiffusionControl]:
    """MODEL, CLIP, VAE and CONTROL_NET of a Prompt Diffusion pipeline folder."""
    if not (folder / "model_index.json").is_file():
        raise PipelineFolderError(f"{folder} is not a diffusers pipeline folder: model_index.json not found")
    check_model_folder(folder)  # the rule diffusers' loader is held to, though nothing here imports by name
    vae, vae_scale = load_vae(folder)
    model = load_unet(folder, vae_scale)
    clip = load_clip(folder)
    try:
        control = build_control(read_controlnet(folder))
    except (CheckpointError, FileNotFoundError) as err:
        raise PipelineFolderError(f"{folder / 'controlnet'}: {err}") from err
    return model, clip, vae, control
