"""Train a Prompt Diffusion ControlNet (or the VAE of a model without a pretrained one) with accelerate.

    python -m training.train --config training/configs/X.yaml [--override section.key=value ...] [--resume latest|PATH]
    accelerate launch --config_file training/configs/accelerate/<setup>.yaml -m training.train --config ...

The recipe is the authors' (`cldm.py`, `train.py`): epsilon prediction on SD1.5's DDPM schedule,
AdamW, the control branch initialised from the UNet, only the control branch trained by default,
and per-sample classifier-free dropout exactly as `ControlLDM.get_input` draws it.

Outputs in `train.output_dir`: `checkpoints/checkpoint-NNNNNN/` (accelerate state + step, for
`--resume`), `metrics.jsonl`, TensorBoard logs in `logs/`, validation grids in `validation/`, and
at the end `pipeline/` (PromptDiffusionPipeline.save_pretrained) + `controlnet.safetensors`,
or `vae/` for `train.stage: vae`.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from pdiff_core import presets
from pdiff_core.checkpoints import save_controlnet
from pdiff_core.data import DatasetFormatError
from pdiff_core.model import PromptDiffusionControlNetModel
from pdiff_core.pipeline import PromptDiffusionPipeline
from pdiff_core.tokenizer import load_clip_tokenizer, train_clip_tokenizer

from .components import apply_model_overrides, load_pretrained_components
from .config import Config, ConfigError, add_override_argument, load_config, missing_inputs
from .dataset import PromptDiffusionDataset, ResumableSampler, collate
from .ema_state import EMAStateError, accelerate_view, load_ema, save_ema
from .run_folder import (
    CHECKPOINT_DIR,
    CHECKPOINT_PREFIX,
    METRICS_FILE,
    TRAINER_STATE,
    CheckpointRestoreError,
    find_checkpoint,
    prepare_output_dir,
    read_metrics,
    read_trainer_state,
    write_atomic,
)

logger = get_logger(__name__)


# --------------------------------------------------------------------------- the recipe


def dropout_masks(r: torch.Tensor, drop_rate: float = 0.05) -> Tuple[torch.Tensor, torch.Tensor]:
    """`ControlLDM.get_input`'s classifier-free dropout for per-sample draws r ~ U(0, 1):
    the text is dropped where r < 2p and the example pair zeroed where p <= r < 3p, so text only,
    both, and pair only are each dropped with probability p. Returns (text_dropped, pair_dropped)."""
    text = r < 2 * drop_rate
    pair = (r >= drop_rate) & (r < 3 * drop_rate)
    return text, pair


def apply_dropout(
    input_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    example_pair: torch.Tensor,
    r: torch.Tensor,
    drop_rate: float = 0.05,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Token ids with dropped texts replaced by the empty prompt's (so the encoder yields the
    empty-prompt embedding, trained or not) and the example pair zeroed where dropped."""
    text, pair = dropout_masks(r, drop_rate)
    ids = torch.where(text[:, None], empty_ids, input_ids)
    return ids, example_pair * (~pair).to(example_pair.dtype)[:, None, None, None]


def diffusion_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet learns to output: the noise, or the velocity for v-prediction."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights per timestep: min(SNR, gamma) / SNR for an epsilon-prediction loss,
    min(SNR, gamma) / (SNR + 1) for v-prediction, i.e. a loss on the clean latents weighted
    min(SNR, gamma), so that the many easy low-noise steps stop dominating."""
    snr = compute_snr(scheduler, timesteps)
    v_prediction = scheduler.config.prediction_type == "v_prediction"
    return torch.clamp(snr, max=gamma) / (snr + 1 if v_prediction else snr)


class DiffusionModel(nn.Module):
    """Text encoder, control branch and UNet as one module, so DDP/DeepSpeed/FSDP wrap a single
    forward whatever subset of them trains. Returns the UNet's prediction (noise or velocity)."""

    def __init__(
        self, text_encoder: CLIPTextModel, controlnet: PromptDiffusionControlNetModel, unet: UNet2DConditionModel
    ) -> None:
        super().__init__()
        self.text_encoder = text_encoder
        self.controlnet = controlnet
        self.unet = unet

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        input_ids: torch.Tensor,
        example_pair: torch.Tensor,
        query: torch.Tensor,
    ) -> torch.Tensor:
        text = self.text_encoder(input_ids)[0]
        down, mid = self.controlnet(
            noisy, timesteps, text, controlnet_cond=example_pair, controlnet_query_cond=query, return_dict=False
        )
        return self.unet(
            noisy,
            timesteps,
            text,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]


class VAEModel(nn.Module):
    """The AutoencoderKL behind one forward (for DDP): returns (reconstruction, per-sample KL).
    `decode_mode`: decode the posterior mode, not a sample (for a decoder trained under a frozen
    encoder, whose mode is what a diffusion model works on)."""

    def __init__(self, vae: AutoencoderKL, decode_mode: bool = False) -> None:
        super().__init__()
        self.vae = vae
        self.decode_mode = decode_mode

    def forward(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.mode() if self.decode_mode else posterior.sample()
        return self.vae.decode(latents).sample, posterior.kl()


def vae_trainable_parameters(vae: AutoencoderKL, decoder_only: bool) -> List[nn.Parameter]:
    """Unfreeze what a VAE run trains and return it: everything, or with `decoder_only` the decoder
    and post_quant_conv (the encoder, hence the latent space a diffusion model works in, stays)."""
    vae.requires_grad_(not decoder_only)
    if decoder_only:
        for part in (vae.post_quant_conv, vae.decoder):
            part.requires_grad_(True)
    return [p for p in vae.parameters() if p.requires_grad]


def set_trainable(model: DiffusionModel, modules: Sequence[str]) -> List[nn.Parameter]:
    """Freeze everything but `modules` (see TrainConfig.train_modules); returns the trained parameters."""
    model.requires_grad_(False)
    parts = {
        "controlnet": [model.controlnet],
        "unet": [model.unet],
        "unet_decoder": [model.unet.up_blocks, model.unet.conv_norm_out, model.unet.conv_out],
        "text_encoder": [model.text_encoder],
    }
    for name in modules:
        for part in parts[name]:
            part.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- building


def build_training_components(
    config: Config, dataset: PromptDiffusionDataset, accelerator: Accelerator
) -> Dict[str, Any]:
    """unet, vae, text_encoder, tokenizer, controlnet, scheduler (the sampling scheduler) from a
    local pretrained SD folder or a preset; `model.vae` and `model.controlnet` replace theirs."""
    m = config.model
    if m.pretrained is not None:
        components = load_pretrained_components(Path(m.pretrained), controlnet=m.controlnet is None)
    else:
        try:
            presets.get_preset(m.preset)
        except ValueError as err:
            raise ConfigError(f"model.preset: {err}") from None
        components = presets.build_preset_components(m.preset, _tokenizer(config, dataset, accelerator), seed=m.seed)
    components = apply_model_overrides(components, m)
    _check_resolution(config, components)
    return components


def _tokenizer(config: Config, dataset: PromptDiffusionDataset, accelerator: Accelerator) -> PreTrainedTokenizerBase:
    if config.model.tokenizer is not None:
        return load_clip_tokenizer(config.model.tokenizer)
    # Trained once on the dataset's texts by the main process; the others read its files.
    folder = Path(config.train.output_dir) / "tokenizer"
    with accelerator.main_process_first():
        if (folder / "vocab.json").is_file():
            return load_clip_tokenizer(folder)
        logger.info("training a %d-token tokenizer on the captions into %s", config.model.tokenizer_vocab_size, folder)
        return train_clip_tokenizer(dataset.captions() + [""], folder, config.model.tokenizer_vocab_size)


def _check_resolution(config: Config, components: Dict[str, Any]) -> None:
    vae_scale = 2 ** (len(components["vae"].config.block_out_channels) - 1)
    unet_scale = 2 ** (len(components["unet"].config.block_out_channels) - 1)
    if config.data.resolution % (vae_scale * unet_scale):
        raise ConfigError(
            f"data.resolution: {config.data.resolution} must be a multiple of {vae_scale * unet_scale} "
            f"(VAE downscale {vae_scale} x UNet downscale {unet_scale})"
        )


def _dataset(config: Config) -> PromptDiffusionDataset:
    d = config.data
    return PromptDiffusionDataset(
        d.root, d.tasks, d.resolution, d.flip_prob, d.min_crop_scale, d.forward_prompt, seed=config.train.seed
    )


def check_inputs(config: Config) -> None:
    """Raise one ConfigError naming every local file or folder the config needs and lacks."""
    missing = missing_inputs(config)
    if missing:
        raise ConfigError("missing local files (nothing is downloaded):\n  " + "\n  ".join(missing))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    accelerator: Accelerator, config: Config, step: int, samples: int, ema: Optional[EMAModel] = None
) -> None:
    folder = Path(config.train.output_dir) / CHECKPOINT_DIR / f"{CHECKPOINT_PREFIX}{step:06d}"
    accelerator.save_state(str(folder))  # model, optimizer, LR scheduler, RNG of every process
    if accelerator.is_main_process:
        if ema is not None:
            save_ema(ema, folder)
        state = {"step": step, "samples": samples, "stage": config.train.stage, "config": config.to_dict()}
        write_atomic(folder / TRAINER_STATE, json.dumps(state, indent=2))  # last: it marks the checkpoint complete
        older = sorted((folder.parent).glob(CHECKPOINT_PREFIX + "*"))[: -config.train.checkpoints_keep]
        for old in older:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    logger.info("saved %s", folder)


# --------------------------------------------------------------------------- images


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def save_grid(rows: List[List[torch.Tensor]], path: Path, accelerator: Accelerator, tag: str, step: int) -> None:
    """One PNG row per sample, tiles side by side; also logged to TensorBoard."""
    grid = np.concatenate([np.concatenate([_to_uint8(t[None])[0] for t in row], axis=1) for row in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    accelerator.get_tracker("tensorboard").writer.add_image(tag, grid, step, dataformats="HWC")


# --------------------------------------------------------------------------- the run


class Trainer:
    """One training run; `run()` trains from scratch or from `resume` and writes the outputs."""

    def __init__(self, config: Config, resume: Optional[str] = None, overwrite: bool = False) -> None:
        self.config = config
        t = config.train
        check_inputs(config)  # before anything is written
        self.output_dir = Path(t.output_dir)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=t.gradient_accumulation_steps,
            mixed_precision=t.mixed_precision,
            log_with="tensorboard",
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
            cpu=t.cpu,
        )
        acc = self.accelerator
        logger.info(
            "%d process(es), %s, device %s, mixed precision %s",
            acc.num_processes,
            acc.distributed_type.value,
            acc.device,
            acc.mixed_precision,
        )
        prepare_output_dir(self.output_dir, overwrite, resume is not None, remove=acc.is_main_process)
        acc.wait_for_everyone()
        self.resume_from = find_checkpoint(self.output_dir, resume, acc.process_index) if resume else None
        self.dataset = _dataset(config)
        with acc.main_process_first():
            if acc.is_main_process:
                logger.info("checked the %d dataset files the run reads", self.dataset.verify_files())
        set_seed(t.seed)  # identical weights on every process
        self.components = build_training_components(config, self.dataset, self.accelerator)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
            self.accelerator.mixed_precision, torch.float32
        )
        # DeepSpeed runs the module in half precision without autocast: inputs must match it.
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        self.input_dtype = self.weight_dtype if deepspeed else torch.float32

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build the trained module, its frozen helpers and `self.params` for the configured stage."""
        if self.config.train.stage == "diffusion":
            self._setup_diffusion()
        else:
            self._setup_vae()

    def loss(self, batch: Dict[str, Any]) -> torch.Tensor:
        """The training loss of one batch (diffusion: epsilon MSE; vae: reconstruction + KL)."""
        return self._diffusion_loss(batch) if self.config.train.stage == "diffusion" else self._vae_loss(batch)

    def _setup_diffusion(self) -> None:
        c, t = self.components, self.config.train
        self.model = DiffusionModel(c["text_encoder"], c["controlnet"], c["unet"])
        self.params = set_trainable(self.model, t.train_modules)
        # Frozen modules run in the mixed-precision dtype, as in diffusers' ControlNet example;
        # DeepSpeed casts the whole module itself and FSDP needs one dtype per flattened unit.
        if self.accelerator.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            for module in (self.model.text_encoder, self.model.unet, self.model.controlnet):
                if not any(p.requires_grad for p in module.parameters()):
                    module.to(self.weight_dtype)
        if t.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
            self.model.controlnet.enable_gradient_checkpointing()
            if "text_encoder" in t.train_modules:
                self.model.text_encoder.gradient_checkpointing_enable()
        self.vae = c["vae"].requires_grad_(False).to(self.accelerator.device, self.weight_dtype)
        self.tokenizer = c["tokenizer"]
        self.noise_scheduler = DDPMScheduler.from_config(c["scheduler"].config)
        self.empty_ids = self._tokenize([""])

    def _setup_vae(self) -> None:
        decoder_only = self.config.vae.decoder_only
        self.model = VAEModel(self.components["vae"], decode_mode=decoder_only)
        self.params = vae_trainable_parameters(self.model.vae, decoder_only)
        if self.config.train.gradient_checkpointing:
            self.model.vae.enable_gradient_checkpointing()

    def _tokenize(self, captions: List[str]) -> torch.Tensor:
        return self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.accelerator.device)

    # ------------------------------------------------------------------ losses

    def _diffusion_loss(self, batch: Dict[str, Any]) -> torch.Tensor:
        target = batch["target"].to(self.weight_dtype)
        with torch.no_grad():
            latents = self.vae.encode(target).latent_dist.sample() * self.vae.config.scaling_factor
        noise = torch.randn_like(latents)
        timesteps = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        target = diffusion_target(self.noise_scheduler, latents, noise, timesteps)
        r = torch.rand(latents.shape[0], device=latents.device)
        input_ids, pair = apply_dropout(
            self._tokenize(batch["caption"]), self.empty_ids, batch["example_pair"], r, self.config.train.drop_rate
        )
        dtype = self.input_dtype
        prediction = self.model(noisy.to(dtype), timesteps, input_ids, pair.to(dtype), batch["query"].to(dtype))
        if self.config.train.snr_gamma is None:
            return F.mse_loss(prediction.float(), target.float())
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return (per_sample * min_snr_weights(self.noise_scheduler, timesteps, self.config.train.snr_gamma)).mean()

    def _vae_loss(self, batch: Dict[str, Any]) -> torch.Tensor:
        images = batch["target"]
        reconstruction, kl = self.model(images.to(self.input_dtype))
        distance = F.l1_loss if self.config.vae.reconstruction_loss == "l1" else F.mse_loss
        return distance(reconstruction.float(), images.float()) + self.config.vae.kl_weight * kl.mean()

    # ------------------------------------------------------------------ loop

    def run(self) -> Path:
        """Train from step 0 (or from the checkpoint given as `resume`) to train.max_steps, then validate
        and export; returns the exported folder (the pipeline, or the VAE)."""
        self.setup()
        optimizer, lr_scheduler = self._prepare_optimization()
        step, samples = self._resume() if self.resume_from is not None else self._start()
        if self.accelerator.is_main_process:
            self.accelerator.init_trackers("train", config={k: str(v) for k, v in _flat(self.config.to_dict()).items()})
        batches = self._batches(step, samples)
        step = self._train_steps(optimizer, lr_scheduler, batches, step, samples)
        self._with_ema(self._validate, step)
        out = self._with_ema(self._export, step)
        self.accelerator.end_training()
        return out

    @property
    def samples_per_step(self) -> int:
        """Samples one optimizer step sees, over accumulation and processes."""
        t = self.config.train
        return t.batch_size * t.gradient_accumulation_steps * self.accelerator.num_processes

    def _prepare_optimization(self) -> Tuple[torch.optim.Optimizer, Any]:
        """The optimizer, its learning-rate schedule and the EMA; model, optimizer and schedule prepared by accelerate."""
        t, o, acc = self.config.train, self.config.optim, self.accelerator
        optimizer = torch.optim.AdamW(
            self.params,
            lr=o.learning_rate,
            betas=(o.adam_beta1, o.adam_beta2),
            weight_decay=o.weight_decay,
            eps=o.adam_epsilon,
        )
        # The prepared scheduler steps once per process per optimizer step.
        lr_scheduler = get_scheduler(
            o.lr_scheduler,
            optimizer,
            num_warmup_steps=o.lr_warmup_steps * acc.num_processes,
            num_training_steps=t.max_steps * acc.num_processes,
        )
        self.ema = EMAModel(self.params, decay=t.ema_decay) if t.ema else None
        if self.ema is not None:
            if acc.distributed_type == DistributedType.FSDP:
                raise ConfigError("train.ema: EMA is not supported with FSDP (parameters are sharded)")
            self.ema.to(acc.device)  # checkpointed by save_checkpoint as safetensors, not by accelerate's pickle
        if acc.distributed_type == DistributedType.DEEPSPEED:
            # The loader is prepared after load_state, so DeepSpeed cannot read the batch size off it.
            acc.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = t.batch_size
        self.model, optimizer, lr_scheduler = acc.prepare(self.model, optimizer, lr_scheduler)
        return optimizer, lr_scheduler

    def _start(self) -> Tuple[int, int]:
        """A fresh run: step 0, no samples seen."""
        set_seed(self.config.train.seed, device_specific=True)  # different noise on every process
        return 0, 0

    def _resume(self) -> Tuple[int, int]:
        """Load `resume_from` (model, optimizer, schedule, RNG, EMA) after checking it fits this config;
        returns its step and samples seen."""
        t, acc = self.config.train, self.accelerator
        state = read_trainer_state(self.resume_from)
        if state["stage"] != t.stage:
            raise ConfigError(
                f"--resume {self.resume_from}: a {state['stage']!r} checkpoint, but train.stage is {t.stage!r}"
            )
        saved_modules = state.get("config", {}).get("train", {}).get("train_modules")
        if saved_modules is not None and list(saved_modules) != list(t.train_modules):
            raise ConfigError(
                f"train.train_modules: {list(t.train_modules)}, but checkpoint {self.resume_from} "
                f"trained {list(saved_modules)}; resume with the same modules"
            )
        with accelerate_view(self.resume_from) as folder:
            acc.load_state(str(folder))
        if self.ema is not None:
            load_ema(self.ema, self.resume_from)
        step, samples = state["step"], state["samples"]
        self._warn_schedule_change(state.get("config", {}))
        self._truncate_metrics(step)
        logger.info("resumed from %s at step %d", self.resume_from, step)
        return step, samples

    def _batches(self, step: int, samples: int) -> Iterator[Dict[str, Any]]:
        """The batches of the steps left, the sampler going on after the `samples` already seen."""
        t = self.config.train
        loader = DataLoader(
            self.dataset,
            batch_size=t.batch_size,
            sampler=ResumableSampler(len(self.dataset), t.seed, samples, (t.max_steps - step) * self.samples_per_step),
            collate_fn=collate,
            num_workers=self.config.data.num_workers,
            drop_last=True,
            # The loader's own generator keeps its seed draw off the global RNG that resume restores.
            generator=torch.Generator().manual_seed(t.seed),
        )
        return iter(self.accelerator.prepare(loader))

    def _train_steps(
        self,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any,
        batches: Iterator[Dict[str, Any]],
        step: int,
        samples: int,
    ) -> int:
        """Optimizer steps from `step` to train.max_steps, each logged, and checkpointed and validated
        when due; returns the last step."""
        config, t, acc = self.config, self.config.train, self.accelerator
        self.model.train()
        progress = tqdm(total=t.max_steps, initial=step, desc=t.stage, disable=not acc.is_local_main_process)
        started = time.perf_counter()
        first_step = step
        while step < t.max_steps:
            mean_loss = self._optimizer_step(optimizer, lr_scheduler, batches)
            step += 1
            samples += self.samples_per_step
            progress.update()
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            self._log_step(step, mean_loss, lr_scheduler, started, first_step)
            if step % t.checkpoint_every == 0 or step == t.max_steps:
                save_checkpoint(acc, config, step, samples, self.ema)
            if config.validation.every and step % config.validation.every == 0 and step != t.max_steps:
                self._with_ema(self._validate, step)
        progress.close()
        return step

    def _optimizer_step(
        self, optimizer: torch.optim.Optimizer, lr_scheduler: Any, batches: Iterator[Dict[str, Any]]
    ) -> float:
        """One optimizer step over train.gradient_accumulation_steps batches, then the EMA; returns the
        step's loss averaged over batches and processes."""
        t, o, acc = self.config.train, self.config.optim, self.accelerator
        total = torch.zeros((), device=acc.device)
        for _ in range(t.gradient_accumulation_steps):
            batch = next(batches)
            with acc.accumulate(self.model):
                loss = self.loss(batch)
                acc.backward(loss)
                if acc.sync_gradients and o.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.params, o.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            total += loss.detach() / t.gradient_accumulation_steps
        if self.ema is not None:
            self.ema.step(self.params)
        return acc.gather(total[None]).mean().item()

    def _log_step(self, step: int, mean_loss: float, lr_scheduler: Any, started: float, first_step: int) -> None:
        """The step's loss in the metrics file; every train.log_every steps and at the last, also the
        learning rate and the mean step time since `first_step`, to the trackers too."""
        t = self.config.train
        if step % t.log_every == 0 or step == t.max_steps:
            step_time = (time.perf_counter() - started) / (step - first_step)
            metrics = {"loss": mean_loss, "lr": lr_scheduler.get_last_lr()[0], "step_time": step_time}
            self.accelerator.log(metrics, step=step)
            self._append_metrics(step, metrics)
        else:
            self._append_metrics(step, {"loss": mean_loss})

    def _validate(self, step: int) -> None:
        """Validation images for the configured stage."""
        if self.config.train.stage == "diffusion":
            self._validate_diffusion(step)
        else:
            self._validate_vae(step)

    def _export(self, step: int) -> Path:
        """The trained model written for use (the pipeline and controlnet, or the VAE); returns its folder."""
        return self._save_outputs(step) if self.config.train.stage == "diffusion" else self._save_vae(step)

    def _warn_schedule_change(self, saved: Dict[str, Any]) -> None:
        """A learning-rate schedule shaped by max_steps (cosine, linear...) bends differently once
        max_steps changes: the resumed run follows neither the old run nor a fresh longer one."""
        o, t = self.config.optim, self.config.train
        old_steps = saved.get("train", {}).get("max_steps")
        if (
            old_steps is not None
            and old_steps != t.max_steps
            and o.lr_scheduler not in ("constant", "constant_with_warmup")
        ):
            logger.warning(
                "train.max_steps changed from %s to %d on resume: the %r learning-rate schedule depends on max_steps, "
                "so from here the rate follows a %d-step schedule from where the %s-step one stopped; the run does not "
                "repeat an uninterrupted %d-step run",
                old_steps,
                t.max_steps,
                o.lr_scheduler,
                t.max_steps,
                old_steps,
                t.max_steps,
            )

    def _append_metrics(self, step: int, metrics: Dict[str, float]) -> None:
        if self.accelerator.is_main_process:
            with (self.output_dir / METRICS_FILE).open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop the records of steps after `step` that a resumed run will redo."""
        path = self.output_dir / METRICS_FILE
        if self.accelerator.is_main_process and path.is_file():
            kept = [record for record in read_metrics(path) if record["step"] <= step]
            write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))

    def _with_ema(self, fn, step: int) -> Any:
        """Run `fn(step)` on the EMA weights when EMA is on (then restore the trained ones)."""
        if self.ema is None:
            return fn(step)
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            return fn(step)
        finally:
            self.ema.restore(self.params)

    def _unwrapped(self) -> nn.Module:
        acc = self.accelerator
        if acc.distributed_type != DistributedType.FSDP:
            return acc.unwrap_model(self.model)
        # FSDP shards the weights: gather them into a fresh copy of the original modules.
        state = acc.get_state_dict(self.model)
        fresh = build_training_components(self.config, self.dataset, acc)
        model = (
            DiffusionModel(fresh["text_encoder"], fresh["controlnet"], fresh["unet"])
            if self.config.train.stage == "diffusion"
            else VAEModel(fresh["vae"])
        )
        if acc.is_main_process:
            model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ validation and outputs

    def _validation_samples(self) -> Dict[str, Any]:
        dataset = copy.copy(self.dataset)
        dataset.seed = self.config.validation.seed  # fixed draws, apart from the training stream
        dataset.flip_prob = 0.0
        return collate([dataset[k] for k in range(self.config.validation.samples)])

    @torch.no_grad()
    def _pipeline(self, model: DiffusionModel) -> PromptDiffusionPipeline:
        return PromptDiffusionPipeline(
            vae=self.vae,
            text_encoder=model.text_encoder,
            tokenizer=self.tokenizer,
            unet=model.unet,
            controlnet=model.controlnet,
            scheduler=self.components["scheduler"],
        )

    @torch.no_grad()
    def _validate_diffusion(self, step: int) -> None:
        acc = self.accelerator
        model = self._unwrapped()
        if acc.is_main_process and self.config.validation.samples > 0:
            v = self.config.validation
            batch = self._validation_samples()
            pipe = self._pipeline(model)
            pipe.set_progress_bar_config(disable=True)
            generator = torch.Generator(device=acc.device).manual_seed(v.seed)
            was_training = model.training
            model.eval()
            with acc.autocast():
                images = pipe(
                    batch["caption"],
                    example_pair=((batch["example_pair"][:, :3] + 1) / 2, (batch["example_pair"][:, 3:] + 1) / 2),
                    query=(batch["query"] + 1) / 2,
                    num_inference_steps=v.inference_steps,
                    guidance_scale=v.guidance_scale,
                    generator=generator,
                    output_type="pt",
                ).images
            model.train(was_training)
            rows = [
                [
                    batch["example_pair"][i, :3],
                    batch["example_pair"][i, 3:],
                    batch["query"][i],
                    images[i].cpu() * 2 - 1,
                    batch["target"][i],
                ]
                for i in range(len(batch["caption"]))
            ]
            path = self.output_dir / "validation" / f"step-{step:06d}.png"
            save_grid(rows, path, acc, "validation/example_src|example_tgt|query|generated|target", step)
            logger.info("validation grid %s (tasks %s)", path, ", ".join(batch["task"]))
        acc.wait_for_everyone()

    @torch.no_grad()
    def _validate_vae(self, step: int) -> None:
        acc = self.accelerator
        model = self._unwrapped()
        if acc.is_main_process and self.config.validation.samples > 0:
            images = self._validation_samples()["target"].to(acc.device)
            with acc.autocast():
                reconstruction = model.vae.decode(model.vae.encode(images).latent_dist.mode()).sample
            rows = [[images[i], reconstruction[i]] for i in range(images.shape[0])]
            path = self.output_dir / "validation" / f"step-{step:06d}.png"
            save_grid(rows, path, acc, "validation/input|reconstruction", step)
            logger.info("validation grid %s", path)
        acc.wait_for_everyone()

    def _write_checksum(self, state: Dict[str, torch.Tensor]) -> str:
        """sha256 of the trained weights, one file per process, so a run can show its ranks agree."""
        digest = hashlib.sha256()
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().float().cpu().contiguous().numpy().tobytes())
        folder = self.output_dir / "checksums"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank-{self.accelerator.process_index}.txt").write_text(digest.hexdigest() + "\n")
        return digest.hexdigest()

    def _save_outputs(self, step: int) -> Path:
        acc = self.accelerator
        model = self._unwrapped()
        if acc.distributed_type != DistributedType.FSDP:
            self._write_checksum({k: v for k, v in model.state_dict().items()})
        if acc.is_main_process:
            model = model.to(torch.float32)
            self.vae.to(torch.float32)  # frozen copies ran in the mixed-precision dtype; save full precision
            pipeline_dir = self.output_dir / "pipeline"
            self._pipeline(model).save_pretrained(str(pipeline_dir))
            save_controlnet(model.controlnet, self.output_dir / "controlnet.safetensors", overwrite=True)
            logger.info("step %d: wrote %s and %s", step, pipeline_dir, self.output_dir / "controlnet.safetensors")
        acc.wait_for_everyone()
        return self.output_dir / "pipeline"

    @torch.no_grad()
    def _save_vae(self, step: int) -> Path:
        acc = self.accelerator
        model = self._unwrapped()
        if acc.distributed_type != DistributedType.FSDP:
            self._write_checksum(model.state_dict())
        out = self.output_dir / "vae"
        if acc.is_main_process:
            vae = model.vae.to(torch.float32)
            if self.config.vae.fit_scaling_factor:
                vae.register_to_config(scaling_factor=self._fit_scaling_factor(vae))
            vae.save_pretrained(str(out))
            logger.info("step %d: wrote %s (scaling_factor %.5f)", step, out, vae.config.scaling_factor)
        acc.wait_for_everyone()
        return out

    def _fit_scaling_factor(self, vae: AutoencoderKL) -> float:
        """1 / std of the latents of a few batches, so the diffusion model sees unit-variance latents."""
        generator = torch.Generator().manual_seed(self.config.validation.seed)
        n = self.config.train.batch_size * self.config.vae.scaling_batches
        keys = torch.randint(0, 1 << 30, (n,), generator=generator).tolist()
        latents = []
        for start in range(0, n, self.config.train.batch_size):
            images = collate([self.dataset[k] for k in keys[start : start + self.config.train.batch_size]])["target"]
            latents.append(vae.encode(images.to(self.accelerator.device)).latent_dist.sample().float().cpu())
        return float(1.0 / torch.cat(latents).std())


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, help="YAML or JSON config (sections data, model, optim, train, validation, vae)"
    )
    add_override_argument(parser, "set a config value, e.g. train.max_steps=100 data.root=/data/toy")
    parser.add_argument("--resume", metavar="latest|PATH", help="continue from the latest or a given checkpoint folder")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in train.output_dir (its checkpoints, metrics and outputs)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the config, its local files and the dataset, print what training would see, write nothing",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # accelerate logs every file of every checkpoint at INFO; our one "saved" line says it.
    for name in ("accelerate.checkpointing", "accelerate.accelerator"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        config = load_config(args.config, args.override)
        if args.check:
            return check_config(config)
        with logging_redirect_tqdm():  # log lines above the progress bar, not onto it
            Trainer(config, args.resume, args.overwrite).run()
    except (ConfigError, DatasetFormatError, EMAStateError, CheckpointRestoreError, FileNotFoundError) as err:
        logging.getLogger("training.train").error("%s", err)
        return 2
    return 0


def check_config(config: Config) -> int:
    """`--check`: the config's missing local files and the dataset report (pdiff data check); 0 if all is there."""
    from pdiff_core.data.check import check_dataset

    missing = missing_inputs(config)
    for line in missing:
        print(f"missing: {line}")
    if (Path(config.data.root) / "dataset.json").is_file():
        report = check_dataset(Path(config.data.root), config.data.tasks)
        print(report.text(), end="")
        missing += report.problems
    print("ready to train" if not missing else "not ready: see above")
    return 0 if not missing else 2


if __name__ == "__main__":
    sys.exit(main())
