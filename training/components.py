"""The components a training run starts from: a local pretrained folder's, with the config's
replacements (`model.vae`, `model.controlnet`, `model.prediction_type`). Shared by `training.train`
and `training.inmemory`; preset models are built by `pdiff_core.presets`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Dict

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from pdiff_core import presets
from pdiff_core.checkpoints import load_controlnet
from pdiff_core.model import PromptDiffusionControlNetModel
from pdiff_core.tokenizer import load_clip_tokenizer

from .config import ModelConfig

logger = logging.getLogger(__name__)


def load_pretrained_components(root: Path, controlnet: bool = True) -> Dict[str, Any]:
    """The components of a local SD1.5-layout folder. A Prompt Diffusion pipeline folder keeps its
    trained control branch; a plain SD folder gets a copy of its UNet's encoder. `controlnet=False`:
    none (`model.controlnet` replaces it, so it is neither read nor copied)."""
    unet = UNet2DConditionModel.from_pretrained(root / "unet")
    components = dict(
        unet=unet,
        vae=AutoencoderKL.from_pretrained(root / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(
            root / "text_encoder"
        ).float(),  # transformers 5 keeps the saved dtype
        tokenizer=load_clip_tokenizer(root / "tokenizer"),
        scheduler=_pretrained_scheduler(root),
    )
    if not controlnet:
        return components
    if (root / "controlnet" / "config.json").is_file():
        # A Prompt Diffusion pipeline folder: fine-tuning continues its trained control branch.
        components["controlnet"] = load_controlnet(root / "controlnet")
        logger.info("control branch: %s (the pipeline's own)", root / "controlnet")
    else:
        components["controlnet"] = PromptDiffusionControlNetModel.from_unet(unet)
        logger.info("control branch: a copy of the UNet's encoder (%s has no controlnet/)", root)
    return components


def apply_model_overrides(components: Dict[str, Any], m: ModelConfig) -> Dict[str, Any]:
    """`model.vae`, `model.controlnet` and `model.prediction_type` in place of the built ones."""
    if m.vae is not None:
        components["vae"] = AutoencoderKL.from_pretrained(m.vae)
    if m.controlnet is not None:
        components["controlnet"] = load_controlnet(m.controlnet)
        logger.info("control branch: %s (model.controlnet)", m.controlnet)
    if m.prediction_type is not None:
        scheduler = components["scheduler"]
        components["scheduler"] = scheduler.__class__.from_config(scheduler.config, prediction_type=m.prediction_type)
    return components


def _pretrained_scheduler(root: Path) -> DDIMScheduler:
    """SD1.5's DDIM settings, with the folder's prediction type and step spacing where it has a
    scheduler config (a config without the spacing, as SD1.5's, gets SD1.5's "leading")."""
    settings = dict(presets.SD15_SCHEDULER)
    config_file = root / "scheduler" / "scheduler_config.json"
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
        settings["prediction_type"] = saved.get("prediction_type", "epsilon")
        settings["timestep_spacing"] = saved.get("timestep_spacing", "leading")
    return DDIMScheduler(**settings)
