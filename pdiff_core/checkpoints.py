"""Reading, recognising and converting Prompt Diffusion ControlNet checkpoints.

Two layouts exist in the wild:
- **LDM** (the authors' release, `network-step=04999.ckpt`): `control_model.*` beside
  `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`; the hint encoders are
  `control_model.input_hint_block.*` (example pair) and `control_model.input_cond_block.*` (query).
- **diffusers** (the research port, `controlnet/` folder): `controlnet_cond_embedding.*` and
  `controlnet_query_cond_embedding.*` beside the usual `ControlNetModel` names.

The key map between them is derived from diffusers' own ControlNet converter (a pure renaming,
checked to be one-to-one) plus the query encoder, which follows the pair encoder's names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .model import PromptDiffusionControlNetModel

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]
PathLike = Union[str, os.PathLike]

LDM_CONTROL_PREFIX = "control_model."
LDM_PAIR_ENCODER = "input_hint_block."
LDM_QUERY_ENCODER = "input_cond_block."
DIFFUSERS_PAIR_ENCODER = "controlnet_cond_embedding."
DIFFUSERS_QUERY_ENCODER = "controlnet_query_cond_embedding."
CONFIG_METADATA_KEY = "pdiff_controlnet_config"
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# The weights file of a diffusers model folder (beside its config.json), in order of preference.
FOLDER_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


class CheckpointError(ValueError):
    """A file that is not a usable Prompt Diffusion checkpoint; the message says what it is."""


class PipelineFolderError(CheckpointError):
    """A pipeline folder that cannot be loaded; the message names the file and what was expected."""


# --------------------------------------------------------------------------- reading files


def read_state_dict(path: PathLike) -> StateDict:
    """Tensors of one weights file. safetensors is read as is; a pickle-based file (.ckpt, .pt,
    .pth, .bin) only through `torch.load(weights_only=True)`, which runs no code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: not a readable .safetensors file ({err}): {looks_like(path)}") from None
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as err:  # pickle refusing a non-tensor object lands here
            raise CheckpointError(
                f"{path} could not be read with torch.load(weights_only=True): {err}. It {looks_like(path)}. Only "
                "plain tensor checkpoints are loaded; convert other pickles to .safetensors in a trusted environment."
            ) from err
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise CheckpointError(f"{path} holds no state dict of tensors")
        return dict(loaded)
    raise CheckpointError(
        f"{path}: unsupported weights file type {suffix or '(none)'}; expected one of {', '.join(WEIGHT_SUFFIXES)}"
    )


def read_metadata(path: PathLike) -> Dict[str, str]:
    if Path(path).suffix.lower() != ".safetensors":
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({err}): {looks_like(path)}") from None


# What the first bytes of a file that is not the weights it claims to be usually mean.
SIGNATURES = [
    (b"version https://git-lfs", "a Git LFS pointer (the weights were never downloaded)"),
    (b"<!DOCTYPE", "an HTML page (a login or error page saved under this name?)"),
    (b"<html", "an HTML page (a login or error page saved under this name?)"),
    (b"PK\x03\x04", "a zip archive, as torch.save writes (a .ckpt renamed?)"),
]


def looks_like(path: Path) -> str:
    """What `path` looks like, in words: its size and how it starts."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        return "the file is empty"
    known = next((what for magic, what in SIGNATURES if head.lstrip().startswith(magic)), None)
    return f"{size:,} bytes, starting {head[:24]!r}" + (f": {known}" if known else "")


# --------------------------------------------------------------------------- recognising


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What kind of weights these are, in words: 'prompt-diffusion-ldm', 'prompt-diffusion-diffusers',
    or a description of something else."""
    keys = list(state_dict)
    has = lambda fragment: any(fragment in k for k in keys)  # noqa: E731
    if has(LDM_QUERY_ENCODER) and has(LDM_PAIR_ENCODER):
        return "prompt-diffusion-ldm"
    if has(DIFFUSERS_QUERY_ENCODER) and has(DIFFUSERS_PAIR_ENCODER):
        return "prompt-diffusion-diffusers"
    if has(LDM_PAIR_ENCODER) or has(DIFFUSERS_PAIR_ENCODER):
        return "a plain ControlNet (one hint encoder, no query encoder)"
    if has("model.diffusion_model.") or has("first_stage_model."):
        return "a Stable Diffusion checkpoint without a control model (no control_model.* keys)"
    if has("down_blocks.") and has("up_blocks."):
        return "a diffusers UNet or VAE"
    if has("text_model.") or has("transformer.text_model."):
        return "a text encoder"
    if has("lora"):
        return "a LoRA"
    return f"an unknown file ({len(keys)} tensors, e.g. {', '.join(keys[:3])})"


def _require_prompt_diffusion(state_dict: Mapping[str, torch.Tensor], source: str) -> str:
    kind = describe_state_dict(state_dict)
    if not kind.startswith("prompt-diffusion"):
        raise CheckpointError(
            f"{source} is not a Prompt Diffusion checkpoint: it looks like {kind}. Expected the example-pair "
            f"and query hint encoders ({LDM_PAIR_ENCODER}*/{LDM_QUERY_ENCODER}* or "
            f"{DIFFUSERS_PAIR_ENCODER}*/{DIFFUSERS_QUERY_ENCODER}*)."
        )
    return kind


def ldm_control_weights(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """The control branch of an LDM checkpoint, without the `control_model.` prefix
    (a full checkpoint's UNet, VAE and text encoder are left out)."""
    if any(k.startswith(LDM_CONTROL_PREFIX) for k in state_dict):
        return {k[len(LDM_CONTROL_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(LDM_CONTROL_PREFIX)}
    return dict(state_dict)


# --------------------------------------------------------------------------- key map


def ldm_to_diffusers_key_map(ldm_keys: Iterable[str], layers_per_block: int) -> Dict[str, str]:
    """`{ldm_key: diffusers_key}` for an LDM control branch (keys without `control_model.`)."""
    ldm_keys = list(ldm_keys)
    # Tag every key with a distinct tensor and run diffusers' converter: it only renames,
    # so identity tells which LDM key became which diffusers key.
    pair_side = {k: torch.empty(0) for k in ldm_keys if not k.startswith(LDM_QUERY_ENCODER)}
    converted = convert_controlnet_checkpoint(pair_side, {"layers_per_block": layers_per_block})
    by_id = {id(t): k for k, t in pair_side.items()}
    key_map: Dict[str, str] = {}
    for diffusers_key, tensor in converted.items():
        if tensor is None:
            continue
        key_map[by_id[id(tensor)]] = diffusers_key
    for ldm_key in ldm_keys:
        if ldm_key.startswith(LDM_QUERY_ENCODER):
            twin = LDM_PAIR_ENCODER + ldm_key[len(LDM_QUERY_ENCODER) :]
            if twin in key_map:
                key_map[ldm_key] = DIFFUSERS_QUERY_ENCODER + key_map[twin][len(DIFFUSERS_PAIR_ENCODER) :]
    unmapped = sorted(set(ldm_keys) - set(key_map))
    if unmapped:
        raise CheckpointError(
            f"unexpected keys in the LDM control model, no diffusers name for: {', '.join(unmapped[:20])}"
        )
    if len(set(key_map.values())) != len(key_map):
        raise CheckpointError("the LDM control model maps two keys to one diffusers name; the file is malformed")
    return key_map


def ldm_to_diffusers(ldm_control: Mapping[str, torch.Tensor], layers_per_block: int) -> StateDict:
    key_map = ldm_to_diffusers_key_map(ldm_control.keys(), layers_per_block)
    return {key_map[k]: v for k, v in ldm_control.items()}


def diffusers_to_ldm(
    state_dict: Mapping[str, torch.Tensor], layers_per_block: int, prefix: str = LDM_CONTROL_PREFIX
) -> StateDict:
    """Inverse of `ldm_to_diffusers`, with the `control_model.` prefix the authors' files carry."""
    inverse = {v: k for k, v in _diffusers_to_ldm_names(state_dict, layers_per_block).items()}
    return {prefix + inverse[k]: v for k, v in state_dict.items()}


def _diffusers_to_ldm_names(state_dict: Mapping[str, torch.Tensor], layers_per_block: int) -> Dict[str, str]:
    # The converter works LDM -> diffusers, so build the LDM names from a model of the same
    # structure: the LDM key set is a pure function of the diffusers one.
    candidates = _ldm_names_for(state_dict, layers_per_block)
    key_map = ldm_to_diffusers_key_map(candidates, layers_per_block)
    missing = sorted(set(state_dict) - set(key_map.values()))
    if missing:
        raise CheckpointError(f"diffusers keys with no LDM name: {', '.join(missing[:20])}")
    return {ldm: diff for ldm, diff in key_map.items() if diff in state_dict}


def _ldm_names_for(state_dict: Mapping[str, torch.Tensor], layers_per_block: int) -> List[str]:
    """LDM key names of a control branch whose diffusers weights are `state_dict`."""
    # Counted once: a hint encoder's conv_out index follows its number of blocks.
    encoders = (DIFFUSERS_PAIR_ENCODER, DIFFUSERS_QUERY_ENCODER)
    hint_blocks = {encoder: _hint_block_count(state_dict, encoder) for encoder in encoders}
    return [_ldm_name(key, layers_per_block, hint_blocks) for key in state_dict]


def _hint_block_count(state_dict: Mapping[str, torch.Tensor], encoder: str) -> int:
    return sum(1 for k in state_dict if k.startswith(encoder + "blocks.") and k.endswith(".weight"))


def _ldm_name(key: str, layers_per_block: int, hint_blocks: Mapping[str, int]) -> str:
    parts = key.split(".")
    if key.startswith(("time_embedding.", "conv_in.", "controlnet_down_blocks.", "controlnet_mid_block.")):
        return _simple_ldm_name(key)
    if key.startswith((DIFFUSERS_PAIR_ENCODER, DIFFUSERS_QUERY_ENCODER)):
        return _hint_encoder_ldm_name(parts, hint_blocks[parts[0] + "."])
    if key.startswith("down_blocks."):
        return _down_block_ldm_name(parts, layers_per_block + 1)
    if key.startswith("mid_block."):
        return _mid_block_ldm_name(parts)
    raise CheckpointError(f"unexpected key in a diffusers Prompt Diffusion ControlNet: {key}")


def _hint_encoder_ldm_name(parts: List[str], block_count: int) -> str:
    # LDM's hint encoder is one nn.Sequential: convs at even indices, activations between them.
    block = LDM_PAIR_ENCODER if parts[0] + "." == DIFFUSERS_PAIR_ENCODER else LDM_QUERY_ENCODER
    if parts[1] == "conv_in":
        index = 0
    elif parts[1] == "conv_out":
        index = 2 * (block_count + 1)
    else:
        index = 2 * (int(parts[2]) + 1)
    return f"{block}{index}.{parts[-1]}"


def _down_block_ldm_name(parts: List[str], per_level: int) -> str:
    level, kind = int(parts[1]), parts[2]
    if kind == "downsamplers":
        return f"input_blocks.{(level + 1) * per_level}.0.op.{parts[-1]}"
    i = level * per_level + int(parts[3]) + 1
    if kind == "resnets":
        return f"input_blocks.{i}.0." + _resnet_ldm_suffix(parts[4:])
    return f"input_blocks.{i}.1." + ".".join(parts[4:])


def _mid_block_ldm_name(parts: List[str]) -> str:
    kind, layer = parts[1], int(parts[2])
    index = 1 if kind == "attentions" else (0 if layer == 0 else 2)
    suffix = _resnet_ldm_suffix(parts[3:]) if kind == "resnets" else ".".join(parts[3:])
    return f"middle_block.{index}.{suffix}"


_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}


def _resnet_ldm_suffix(parts: List[str]) -> str:
    return ".".join([_RESNET_NAMES.get(parts[0], parts[0])] + parts[1:])


def _simple_ldm_name(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "time_embedding":
        return f"time_embed.{0 if parts[1] == 'linear_1' else 2}.{parts[2]}"
    if parts[0] == "conv_in":
        return f"input_blocks.0.0.{parts[1]}"
    if parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{parts[1]}.0.{parts[2]}"
    return f"middle_block_out.0.{parts[1]}"


# --------------------------------------------------------------------------- configs

SD15_HEAD_COUNT = 8  # SD1.5's attention heads; the one hyper-parameter weights cannot tell


def config_from_diffusers_weights(
    state_dict: Mapping[str, torch.Tensor], attention_head_dim: int = SD15_HEAD_COUNT
) -> Dict[str, Any]:
    """A `PromptDiffusionControlNetModel` config read off diffusers-layout weights' shapes.
    `attention_head_dim` (which diffusers uses as the head count for SD1.5) is not in the weights."""
    levels = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")})
    if not levels:
        raise CheckpointError("no down_blocks.* weights: not a ControlNet")
    block_out_channels = tuple(state_dict[f"down_blocks.{lvl}.resnets.0.conv1.weight"].shape[0] for lvl in levels)
    layers_per_block = len({k.split(".")[3] for k in state_dict if k.startswith("down_blocks.0.resnets.")})
    has_attention = [any(k.startswith(f"down_blocks.{lvl}.attentions.") for k in state_dict) for lvl in levels]
    attn_key = next((k for k in state_dict if k.endswith("attn2.to_k.weight")), None)
    if attn_key is None:
        raise CheckpointError("no cross-attention weights (attn2.to_k): not an SD-family ControlNet")
    proj_in = next(k for k in state_dict if k.endswith("proj_in.weight"))
    depth = 1 + max(
        int(k.split(".")[5]) for k in state_dict if k.startswith("down_blocks.") and ".transformer_blocks." in k
    )
    cond_blocks = len(
        [k for k in state_dict if k.startswith(DIFFUSERS_PAIR_ENCODER + "blocks.") and k.endswith(".weight")]
    )
    cond_channels = [state_dict[DIFFUSERS_PAIR_ENCODER + "conv_in.weight"].shape[0]] + [
        state_dict[f"{DIFFUSERS_PAIR_ENCODER}blocks.{2 * i + 1}.weight"].shape[0] for i in range(cond_blocks // 2)
    ]
    norm_groups = 32 if block_out_channels[0] % 32 == 0 else _largest_group_count(block_out_channels)
    return {
        "in_channels": state_dict["conv_in.weight"].shape[1],
        "conditioning_channels": state_dict[DIFFUSERS_PAIR_ENCODER + "conv_in.weight"].shape[1],
        "block_out_channels": block_out_channels,
        "layers_per_block": layers_per_block,
        "down_block_types": tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention),
        "cross_attention_dim": state_dict[attn_key].shape[1],
        "attention_head_dim": attention_head_dim,
        "use_linear_projection": state_dict[proj_in].ndim == 2,
        "transformer_layers_per_block": depth,
        "norm_num_groups": norm_groups,
        "conditioning_embedding_out_channels": tuple(cond_channels),
    }


def _largest_group_count(channels: Tuple[int, ...]) -> int:
    # Group norm needs a count dividing every width; real models use 32, tiny test models less.
    return max(g for g in range(1, 33) if all(c % g == 0 for c in channels))


# --------------------------------------------------------------------------- loading and saving


@dataclass
class ControlCheckpoint:
    """A Prompt Diffusion ControlNet read from disk, in diffusers layout."""

    source: str
    layout: str  # "ldm" or "diffusers"
    state_dict: StateDict
    config: Dict[str, Any]

    def check(self) -> None:
        """Build the model on the meta device (no memory) and compare its shapes with the weights',
        so a config that disagrees with them (a typo, a hostile metadata entry asking for a huge
        model) is refused before anything is allocated."""
        try:
            with torch.device("meta"):
                model = PromptDiffusionControlNetModel(**self.config)
        except (ValueError, TypeError, KeyError, ZeroDivisionError, RuntimeError) as err:
            raise CheckpointError(
                f"{self.source}: its config {self.config} does not describe a ControlNet: {type(err).__name__}: {err}"
            ) from None
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        wrong = [
            f"{k} {tuple(v.shape)} (config: {expected[k]})"
            for k, v in self.state_dict.items()
            if k in expected and tuple(v.shape) != expected[k]
        ]
        if wrong:
            raise CheckpointError(
                f"{self.source}: {len(wrong)} tensor(s) do not have the shapes its config gives: {', '.join(wrong[:5])}"
            )

    def build(self, dtype: Optional[torch.dtype] = None) -> PromptDiffusionControlNetModel:
        self.check()
        model = PromptDiffusionControlNetModel(**self.config)
        missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{self.source} does not fit the Prompt Diffusion ControlNet config {self.config}: "
                f"missing keys {sorted(missing)[:20]}, unexpected keys {sorted(unexpected)[:20]}"
            )
        return model.to(dtype=dtype) if dtype is not None else model


def read_controlnet(path: PathLike, config: Optional[Mapping[str, Any]] = None) -> ControlCheckpoint:
    """Read any supported Prompt Diffusion ControlNet from a local path:
    - a diffusers folder (`config.json` + weights), or a pipeline folder with a `controlnet/` subfolder;
    - a single file in diffusers layout (config from this project's metadata, a `config.json`
      beside it, or the weights' shapes);
    - the authors' LDM checkpoint (full, or its `control_model.*` part).
    `config` overrides what is read or inferred."""
    path = Path(path)
    if path.is_dir():
        folder = path / "controlnet" if (path / "controlnet" / "config.json").is_file() else path
        weights = _weights_in_folder(folder)
        state_dict = read_state_dict(weights)
        config_file = folder / "config.json"
    else:
        weights = path
        state_dict = read_state_dict(path)
        config_file = path.parent / "config.json"
    kind = _require_prompt_diffusion(state_dict, str(weights))
    try:
        if kind == "prompt-diffusion-ldm":
            ldm = ldm_control_weights(state_dict)
            layers_per_block = _ldm_layers_per_block(ldm)
            state_dict = ldm_to_diffusers(ldm, layers_per_block)
            layout = "ldm"
        else:
            layout = "diffusers"
        resolved = config_from_diffusers_weights(state_dict)
    except CheckpointError as err:
        raise CheckpointError(f"{weights}: {err}") from None
    except (KeyError, IndexError, StopIteration, ValueError, ZeroDivisionError) as err:
        # Names and shapes that a Prompt Diffusion ControlNet always has are missing or malformed.
        raise CheckpointError(f"{weights}: malformed Prompt Diffusion weights ({type(err).__name__}: {err})") from None
    metadata = read_metadata(weights)
    if CONFIG_METADATA_KEY in metadata:
        resolved.update(_json_object(metadata[CONFIG_METADATA_KEY], f"{weights} (metadata {CONFIG_METADATA_KEY})"))
    elif layout == "diffusers" and config_file.is_file():
        resolved.update(
            _model_config(_json_object(config_file.read_text(encoding="utf-8", errors="replace"), str(config_file)))
        )
    if config:
        resolved.update(config)
    logger.info("read %s (%s layout)", weights, layout)
    return ControlCheckpoint(str(weights), layout, state_dict, resolved)


def load_controlnet(
    path: PathLike, config: Optional[Mapping[str, Any]] = None, dtype: Optional[torch.dtype] = None
) -> PromptDiffusionControlNetModel:
    """`read_controlnet(path, config).build(dtype)`."""
    return read_controlnet(path, config).build(dtype)


def save_controlnet(
    model: PromptDiffusionControlNetModel, path: PathLike, layout: str = "diffusers", overwrite: bool = False
) -> Path:
    """Write `model` as a diffusers folder (`path` without a weights suffix), a single diffusers-layout
    `.safetensors` with its config in the metadata (what ComfyUI's controlnet folder holds), or the
    authors' LDM layout (`layout="ldm"`, `control_model.*` keys)."""
    path = Path(path)
    check_save_target(path, layout, overwrite)
    config = _model_config(dict(model.config))
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        _write_replacing(path, lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True))
        return path
    if layout == "ldm":
        state_dict = diffusers_to_ldm(state_dict, config["layers_per_block"])
    metadata = {CONFIG_METADATA_KEY: json.dumps(config), "format": "pt"}
    _write_replacing(path, lambda tmp: save_file(state_dict, str(tmp), metadata=metadata))
    return path


def check_save_target(path: Path, layout: str = "diffusers", overwrite: bool = False) -> None:
    """Refuse, before any work, an output `save_controlnet` would not write as asked."""
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if layout not in ("diffusers", "ldm"):
        raise ValueError(f"layout must be 'diffusers' or 'ldm', got {layout!r}")
    suffix = path.suffix.lower()
    if suffix in WEIGHT_SUFFIXES and suffix != ".safetensors":
        raise CheckpointError(f"{path}: this project writes weights as .safetensors only")
    if layout == "ldm" and suffix != ".safetensors":
        raise CheckpointError(f"{path}: the LDM layout is a single file; name it .safetensors (a folder is diffusers)")


def _write_replacing(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` beside `path`, then rename it over `path`: a failed or killed write leaves the
    previous file or folder as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


def _json_object(text: str, where: str) -> Dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{where}: expected a JSON object (a config), got {type(value).__name__}")
    return value


def _model_config(config: Mapping[str, Any]) -> Dict[str, Any]:
    allowed = set(PromptDiffusionControlNetModel.extract_init_dict(dict(config))[0])
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k in allowed}


def _ldm_layers_per_block(ldm: Mapping[str, torch.Tensor]) -> int:
    # Input block 1 + layers_per_block is the first downsampler (`...op.weight`).
    first_down = min(int(k.split(".")[1]) for k in ldm if k.startswith("input_blocks.") and ".op." in k)
    return first_down - 1


def _weights_in_folder(folder: Path) -> Path:
    for name in FOLDER_WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"no weights in {folder}: expected one of {', '.join(FOLDER_WEIGHT_NAMES)} beside config.json"
    )
