"""Training configuration: dataclasses filled from a YAML/JSON file plus `key=value` overrides.

A config file has the sections `data`, `model`, `optim`, `train`, `validation` and `vae`; each maps
onto the dataclass of the same name below. Unknown keys and wrongly typed values stop loading with
a message that names the file and the dotted key (`train.max_stepz`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import yaml

from pdiff_core.data import STANDARD_TASKS
from pdiff_core.tokenizer import EXPECTED_FILES, has_clip_tokenizer

STAGES = ("diffusion", "vae")
# `unet_decoder` is what the authors train without --sd_locked: the UNet's output blocks and out conv.
TRAINABLE_MODULES = ("controlnet", "unet", "unet_decoder", "text_encoder")
MIXED_PRECISION = ("no", "fp16", "bf16")
FORWARD_PROMPTS = ("map_name", "caption", "mixed")
PREDICTION_TYPES = ("epsilon", "v_prediction")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and key."""


@dataclass
class DataConfig:
    root: str = ""  # a pdiff-groups dataset folder (docs/dataset-format.md)
    # null: every task the dataset's maps make (each map forward and inverse).
    tasks: Optional[List[str]] = field(default_factory=lambda: list(STANDARD_TASKS))
    resolution: int = 64
    # The authors' EditDataset takes flip_prob but never applies it: 0.0 reproduces their data.
    flip_prob: float = 0.5
    # Random square crop whose side is this fraction (or more) of the short side; 1.0 = no crop.
    min_crop_scale: float = 1.0
    # "map_name": forward tasks are prompted "depth map" / "hed map" / "segmentation map", as the
    # authors do; inverse tasks always use the group caption. "caption": always the caption.
    # "mixed": forward tasks get the map name, the caption or "", inverse
    # tasks the caption or "", equally likely, so that often only the example pair tells the task.
    forward_prompt: str = "map_name"
    num_workers: int = 0
    # training.inmemory only: render this many toy-world groups (seed toyworld_seed) in memory
    # instead of reading data.root.
    toyworld_groups: int = 0
    toyworld_seed: int = 0


@dataclass
class ModelConfig:
    # Exactly one of `pretrained` (a local diffusers SD1.5 folder with unet/ vae/ text_encoder/
    # tokenizer/, or a Prompt Diffusion pipeline folder, whose controlnet/ is then kept) or `preset`
    # (pdiff_core.presets: tiny, small, sd15; random weights).
    pretrained: Optional[str] = None
    preset: Optional[str] = None
    # Preset only: a CLIP-format tokenizer folder; without it one is trained on the captions.
    tokenizer: Optional[str] = None
    tokenizer_vocab_size: int = 1024
    # An AutoencoderKL folder (the output of `stage: vae`) replacing the built or pretrained VAE.
    vae: Optional[str] = None
    # Start the control branch from this Prompt Diffusion ControlNet (any checkpoint load_controlnet
    # reads) instead of model.pretrained's controlnet/ or, without one, a copy of the UNet.
    controlnet: Optional[str] = None
    seed: int = 0  # weights of preset models
    # What the UNet predicts: "epsilon" (SD1.5, the published model) or "v_prediction" (SD2's; small
    # latents learn the high-noise steps far better with it). None: a pretrained folder's scheduler
    # setting, else epsilon. Saved in the output pipeline's scheduler config.
    prediction_type: Optional[str] = None


@dataclass
class OptimConfig:
    learning_rate: float = 1e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    lr_scheduler: str = "constant"  # any diffusers.optimization.get_scheduler name
    lr_warmup_steps: int = 0
    max_grad_norm: float = 0.0  # 0 = no clipping (the authors' Lightning default)


@dataclass
class TrainConfig:
    stage: str = "diffusion"  # "vae" trains the AutoencoderKL alone (reconstruction + KL)
    output_dir: str = "runs/default"
    max_steps: int = 1000
    batch_size: int = 8  # per process
    gradient_accumulation_steps: int = 1
    # ["controlnet"] is the authors' --sd_locked; add "unet_decoder" for their unlocked run, or
    # "unet" and "text_encoder" to train a model from scratch.
    train_modules: List[str] = field(default_factory=lambda: ["controlnet"])
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    drop_rate: float = 0.05  # classifier-free dropout unit of ControlLDM.get_input
    # Min-SNR-gamma loss weighting (Hang et al. 2023, as diffusers' train scripts' --snr_gamma):
    # per-sample weight min(SNR, gamma) / SNR; None = the authors' plain MSE.
    snr_gamma: Optional[float] = None
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    checkpoint_every: int = 500
    checkpoints_keep: int = 3
    log_every: int = 10
    cpu: bool = False  # force CPU even when an accelerator is present
    # training.inmemory only: after a few steps, cut max_steps to what fits in this many minutes
    # (the cosine schedule follows); 0 = no budget.
    time_budget_minutes: float = 0.0


@dataclass
class ValidationConfig:
    every: int = 500  # steps between validation grids; 0 = only at the end
    samples: int = 4
    inference_steps: int = 20
    guidance_scale: float = 9.0
    seed: int = 1234


@dataclass
class VAEConfig:
    reconstruction_loss: str = "l1"  # "l1" or "l2"
    kl_weight: float = 1e-6
    # After training, set scaling_factor to 1 / std of the latents (as SD's 0.18215 was chosen).
    fit_scaling_factor: bool = True
    scaling_batches: int = 8
    # Train the decoder only (as SD's ft-MSE VAE was): the encoder, hence the latent space a trained
    # diffusion model works in, stays as it is, so a better decoder can replace a model's own.
    decoder_only: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: Union[str, os.PathLike, None], overrides: Sequence[str] = ()) -> Config:
    """Read `path` (YAML or JSON; None = all defaults), apply `section.key=value` overrides (values
    parsed as YAML), validate, and return the config."""
    raw: Dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_text(encoding="utf-8")
            raw = (json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)) or {}
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot parse: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, train, ...)")
    for item in overrides:
        _apply_override(raw, item)
    config = _build(Config, raw, "", where)
    validate(config, where)
    return config


def add_override_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--override section.key=value ...`, repeatable, for `load_config`'s `overrides`."""
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help=help)


def _apply_override(raw: Dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"--override {item!r}: expected section.key=value, e.g. train.max_steps=100")
    *sections, leaf = key.strip().split(".")
    node = raw
    for section in sections:
        node = node.setdefault(section, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--override {item!r}: {section} is not a section")
    try:
        node[leaf] = yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise ConfigError(f"--override {item!r}: cannot parse the value: {err}") from err


def _build(cls: type, raw: Any, prefix: str, where: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'the file'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown config key {prefix + unknown[0]!r}; valid keys here: {', '.join(sorted(names))}"
        )
    values = {}
    for name, value in raw.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.", where)
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}", where)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, where)
    if origin in (list, List):
        if isinstance(value, str):  # a comma list from the command line
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML reads 1e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key}: expected {hint.__name__}, got {value!r}")
    return value


def _check(condition: bool, where: str, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"{where}: {key}: {message}")


def missing_inputs(config: Config) -> List[str]:
    """Every local file or folder the config names that is not there, as "key: path (what is expected)"."""
    d, m = config.data, config.model
    missing = []
    if d.root and not (Path(d.root) / "dataset.json").is_file():
        missing.append(
            f"data.root: {Path(d.root) / 'dataset.json'} (a pdiff-groups dataset; python -m training.annotate makes one)"
        )
    if m.pretrained is not None:
        missing += [
            f"model.pretrained: {Path(m.pretrained) / sub} (diffusers subfolder)"
            for sub in ("unet", "vae", "text_encoder", "tokenizer")
            if not (Path(m.pretrained) / sub).is_dir()
        ]
    if m.vae is not None and not (Path(m.vae) / "config.json").is_file():
        missing.append(
            f"model.vae: {Path(m.vae) / 'config.json'} (an AutoencoderKL folder, e.g. a `stage: vae` run's vae/)"
        )
    if m.controlnet is not None and not Path(m.controlnet).exists():
        missing.append(f"model.controlnet: {m.controlnet} (a Prompt Diffusion ControlNet checkpoint or folder)")
    if m.tokenizer is not None and not has_clip_tokenizer(Path(m.tokenizer)):
        missing.append(f"model.tokenizer: {m.tokenizer} (a CLIP tokenizer folder: {EXPECTED_FILES})")
    return missing


def validate(config: Config, where: str = "config") -> None:
    """Cross-field checks; raises ConfigError naming the key."""
    t, d, m = config.train, config.data, config.model
    _check(t.stage in STAGES, where, "train.stage", f"expected one of {STAGES}, got {t.stage!r}")
    _check(bool(d.root) or d.toyworld_groups > 0, where, "data.root", "required: a pdiff-groups dataset folder")
    _check(
        (m.pretrained is None) != (m.preset is None),
        where,
        "model.pretrained",
        "set exactly one of model.pretrained (a diffusers SD folder) and model.preset (tiny, small, sd15)",
    )
    bad = [x for x in t.train_modules if x not in TRAINABLE_MODULES]
    _check(not bad, where, "train.train_modules", f"unknown module(s) {bad}; expected from {TRAINABLE_MODULES}")
    _check(t.stage == "vae" or bool(t.train_modules), where, "train.train_modules", "empty: nothing would train")
    _check(
        not ({"unet", "unet_decoder"} <= set(t.train_modules)),
        where,
        "train.train_modules",
        "'unet' already includes 'unet_decoder'; list one of them",
    )
    _check(t.mixed_precision in MIXED_PRECISION, where, "train.mixed_precision", f"expected one of {MIXED_PRECISION}")
    _check(
        m.prediction_type in (None, *PREDICTION_TYPES),
        where,
        "model.prediction_type",
        f"expected one of {PREDICTION_TYPES} or null, got {m.prediction_type!r}",
    )
    _check(
        t.snr_gamma is None or t.snr_gamma > 0, where, "train.snr_gamma", f"must be positive or null, got {t.snr_gamma}"
    )
    _check(d.forward_prompt in FORWARD_PROMPTS, where, "data.forward_prompt", f"expected one of {FORWARD_PROMPTS}")
    _check(d.tasks is None or bool(d.tasks), where, "data.tasks", "empty: list at least one task, or null for all")
    for key, value in (
        ("data.resolution", d.resolution),
        ("train.max_steps", t.max_steps),
        ("train.batch_size", t.batch_size),
        ("train.gradient_accumulation_steps", t.gradient_accumulation_steps),
        ("train.checkpoint_every", t.checkpoint_every),
        ("train.log_every", t.log_every),
    ):
        _check(value > 0, where, key, f"must be positive, got {value}")
    _check(d.resolution % 8 == 0, where, "data.resolution", f"must be a multiple of 8, got {d.resolution}")
    _check(0.0 <= d.flip_prob <= 1.0, where, "data.flip_prob", f"must be in [0, 1], got {d.flip_prob}")
    _check(0.0 < d.min_crop_scale <= 1.0, where, "data.min_crop_scale", f"must be in (0, 1], got {d.min_crop_scale}")
    _check(0.0 <= t.drop_rate <= 1.0 / 3.0, where, "train.drop_rate", f"must be in [0, 1/3], got {t.drop_rate}")
    _check(
        not (config.vae.decoder_only and config.vae.fit_scaling_factor),
        where,
        "vae.fit_scaling_factor",
        "must be false with vae.decoder_only (the encoder, hence the latents' scale, does not change)",
    )
    _check(
        not (t.stage == "vae" and config.vae.decoder_only and m.vae is None and m.pretrained is None),
        where,
        "vae.decoder_only",
        "needs a trained encoder to keep: set model.vae (an AutoencoderKL folder) or model.pretrained "
        "(a pipeline folder); a preset's VAE is random",
    )
    _check(config.vae.reconstruction_loss in ("l1", "l2"), where, "vae.reconstruction_loss", "expected 'l1' or 'l2'")
    _check(config.validation.every >= 0, where, "validation.every", "must be >= 0")
