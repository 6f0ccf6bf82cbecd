"""Train with the whole dataset in accelerator memory: the fast path for datasets that fit there.

    python -m training.inmemory --config training/configs/embedded_toyworld.yaml [--override k=v ...]

`training.train` decodes PNGs, resizes and VAE-encodes every batch in loader workers; for a small
model on a GPU that, not the model, bounds the speed (3 it/s at batch 64 on an H200). Here every
image and map of every item is decoded once into one uint8 tensor on the device, the frozen VAE
encodes all of them once (both flips), and a training batch is a few index operations: draw a
group, two different items of it, a task and the flips, gather the example pair, the query and the
target's cached latents. The draws follow `training.dataset` (example pair from one item, query
and target from another item of the same group; the authors' classifier-free dropout).

One process, one device; `train.stage: vae` trains the AutoencoderKL on every image and map kind,
`diffusion` the text encoder, UNet and control branch (a preset's, or an exported pipeline's with
`model.pretrained`, so that runs on lent GPUs add up) on the VAE of `model.vae`. The VAE stage starts
from `model.vae`, else `model.pretrained`'s VAE, else the preset's random one.
`data.toyworld_groups > 0` renders that many toy-world groups in memory instead of reading
`data.root`. `train.time_budget_minutes` sets `max_steps` from the measured step time, so that a run
fits a lent GPU's minutes; the step count it chose is logged and written to `train_report.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from diffusers.training_utils import EMAModel
from torch.optim.lr_scheduler import LambdaLR
from tqdm.auto import tqdm

from pdiff_core import presets
from pdiff_core.data import DatasetFormatError, DatasetIndex, load_rgb, map_prompt, parse_task
from pdiff_core.image_io import gray_to_rgb
from pdiff_core.model_info import write_model_info
from pdiff_core.pipeline import PromptDiffusionPipeline
from pdiff_core.tokenizer import train_clip_tokenizer
from pdiff_core.toyworld import ALL_MAPS, iter_groups

from .components import apply_model_overrides, load_pretrained_components
from .config import Config, ConfigError, load_config
from .train import DiffusionModel, apply_dropout, diffusion_target, set_trainable, vae_trainable_parameters

logger = logging.getLogger(__name__)

REPORT_FILE = "train_report.json"
IMAGE_KIND = "image"


# --------------------------------------------------------------------------- data


@dataclass
class GroupTensors:
    """Every item of a dataset as one tensor. `pixels[i, k]` is item i's kind k (0 the image, k the
    map `kinds[k]`), 3 x H x W uint8; the items of group g are `group_start[g] + 0 .. group_size[g] - 1`."""

    pixels: torch.Tensor
    group_start: torch.Tensor
    group_size: torch.Tensor
    captions: List[str]
    kinds: List[str]

    def to(self, device: torch.device) -> "GroupTensors":
        return GroupTensors(
            self.pixels.to(device), self.group_start.to(device), self.group_size.to(device), self.captions, self.kinds
        )

    def for_tasks(self, tasks: Optional[Sequence[str]]) -> "GroupTensors":
        """Only the image and the maps that `tasks` use (all of them for None): the VAE then
        encodes, and the device holds, no map that no draw can ask for."""
        if tasks is None:
            return self
        maps = {parse_task(task, self.kinds[1:]).map for task in tasks}
        index = [0] + [k for k, kind in enumerate(self.kinds) if kind in maps]
        return GroupTensors(
            self.pixels[:, index].contiguous(),
            self.group_start,
            self.group_size,
            self.captions,
            [self.kinds[k] for k in index],
        )

    @classmethod
    def from_groups(cls, groups: Sequence[Tuple[str, List[np.ndarray]]], kinds: Sequence[str]) -> "GroupTensors":
        """`groups`: (caption, [items]) with each item a (kinds, H, W, 3) uint8 array."""
        sizes = [len(items) for _, items in groups]
        if min(sizes) < 2:
            raise DatasetFormatError("every group needs at least 2 items (an example and a query)")
        pixels = torch.from_numpy(np.stack([item for _, items in groups for item in items])).permute(0, 1, 4, 2, 3)
        sizes_t = torch.tensor(sizes)
        return cls(
            pixels.contiguous(), torch.cumsum(sizes_t, 0) - sizes_t, sizes_t, [c for c, _ in groups], list(kinds)
        )


def _resize(image: np.ndarray, resolution: int) -> np.ndarray:
    if image.shape[:2] == (resolution, resolution):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.Resampling.LANCZOS))


def load_folder(root: str, resolution: int, workers: int = 8) -> GroupTensors:
    """A pdiff-groups dataset folder, every image and map decoded (and resized to `resolution`)."""
    index = DatasetIndex.load(root)
    kinds = [IMAGE_KIND, *index.maps]

    def load_group(group) -> Tuple[str, List[np.ndarray]]:
        items = [np.stack([_resize(load_rgb(item.path(k)), resolution) for k in kinds]) for item in group.items]
        return group.caption, items

    with ThreadPoolExecutor(workers) as pool:
        groups = list(tqdm(pool.map(load_group, index.groups), total=len(index.groups), desc="loading", unit="group"))
    return GroupTensors.from_groups(groups, kinds)


def render_toyworld(
    n_groups: int, seed: int, resolution: int, workers: Optional[int] = None, items_per_group: int = 4
) -> GroupTensors:
    """`n_groups` toy-world groups with every map, rendered in memory (the pixels
    `python -m training.toyworld --groups N --seed S` would write)."""
    groups = []
    for caption, items in tqdm(
        iter_groups(n_groups, seed=seed, items_per_group=items_per_group, resolution=resolution, workers=workers),
        total=n_groups,
        desc="toyworld",
        unit="group",
    ):
        groups.append(
            (caption, [np.stack([image] + [gray_to_rgb(maps[m]) for m in ALL_MAPS]) for image, maps in items])
        )
    return GroupTensors.from_groups(groups, [IMAGE_KIND, *ALL_MAPS])


def load_data(config: Config) -> GroupTensors:
    d = config.data
    if d.toyworld_groups > 0:
        return render_toyworld(d.toyworld_groups, d.toyworld_seed, d.resolution)
    return load_folder(d.root, d.resolution)


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1] (`2 * x / 255 - 1`, as the authors)."""
    return pixels.float() / 127.5 - 1.0


def flip_where(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror the samples of `images` (B x C x H x W) where `flip` (B bools) is set."""
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class TaskDraws:
    """Draws training samples on the data's device: a group, two different items of it, a task
    (source kind -> target kind) and a flip for the example and for the query."""

    def __init__(self, data: GroupTensors, tasks: Sequence[str], flip_prob: float, generator: torch.Generator) -> None:
        maps = data.kinds[1:]
        self.tasks = []
        for name in tasks:
            try:
                self.tasks.append(parse_task(name, maps))
            except DatasetFormatError as err:
                raise DatasetFormatError(f"data.tasks: {err}") from None
        device = data.pixels.device
        self.source_kind = torch.tensor([data.kinds.index(t.source) for t in self.tasks], device=device)
        self.target_kind = torch.tensor([data.kinds.index(t.target) for t in self.tasks], device=device)
        self.inverse = torch.tensor([t.inverse for t in self.tasks], device=device)
        self.map_index = torch.tensor([maps.index(t.map) for t in self.tasks], device=device)
        self.data = data
        self.flip_prob = flip_prob
        self.generator = generator

    def _uniform(self, n: int) -> torch.Tensor:
        return torch.rand(n, device=self.data.pixels.device, generator=self.generator)

    def draw(self, n: int) -> Dict[str, torch.Tensor]:
        """Indices of `n` samples: group, example and query item, task, and the two flips."""
        d = self.data
        group = (self._uniform(n) * len(d.captions)).long()
        size = d.group_size[group]
        first = (self._uniform(n) * size).long()
        other = (first + 1 + (self._uniform(n) * (size - 1)).long()) % size
        return dict(
            group=group,
            example=d.group_start[group] + first,
            query=d.group_start[group] + other,
            task=(self._uniform(n) * len(self.tasks)).long(),
            example_flip=self._uniform(n) < self.flip_prob,
            query_flip=self._uniform(n) < self.flip_prob,
        )

    def images(self, draw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Example pair (B x 6 x H x W), query and target (B x 3 x H x W), float in [-1, 1]."""
        p = self.data.pixels
        source, target = self.source_kind[draw["task"]], self.target_kind[draw["task"]]
        pair = torch.cat([p[draw["example"], source], p[draw["example"], target]], dim=1)
        return dict(
            example_pair=flip_where(to_unit_range(pair), draw["example_flip"]),
            query=flip_where(to_unit_range(p[draw["query"], source]), draw["query_flip"]),
            target=flip_where(to_unit_range(p[draw["query"], target]), draw["query_flip"]),
        )


# --------------------------------------------------------------------------- prompts


class PromptTable:
    """Token ids of every prompt a draw can get: the group captions, the map names and "".

    `data.forward_prompt`: "map_name" (the authors': forward tasks are prompted "depth map",
    inverse ones with the caption), "caption" (always the caption), or "mixed": forward tasks get
    the map's name, the caption or nothing, inverse tasks the caption or nothing, each equally
    likely, so that on many draws only the example pair says which task is asked."""

    def __init__(
        self, tokenizer, captions: Sequence[str], maps: Sequence[str], mode: str, device: torch.device
    ) -> None:
        def ids(texts: Sequence[str]) -> torch.Tensor:
            return tokenizer(
                list(texts),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)

        self.caption_ids = ids(captions)
        self.map_ids = ids([map_prompt(m) for m in maps])
        self.empty_ids = ids([""])
        self.mode = mode

    def ids(self, draw: Dict[str, torch.Tensor], draws: TaskDraws, uniform: torch.Tensor) -> torch.Tensor:
        """Token ids per sample; `uniform` (B values in [0, 1)) picks among the mode's choices."""
        caption = self.caption_ids[draw["group"]]
        named = self.map_ids[draws.map_index[draw["task"]]]
        inverse = draws.inverse[draw["task"]][:, None]
        if self.mode == "caption":
            return caption
        if self.mode == "map_name":
            return torch.where(inverse, caption, named)
        empty = self.empty_ids.expand_as(caption)
        forward_choice = torch.where(
            (uniform < 1 / 3)[:, None], named, torch.where((uniform < 2 / 3)[:, None], caption, empty)
        )
        inverse_choice = torch.where((uniform < 1 / 2)[:, None], caption, empty)
        return torch.where(inverse, inverse_choice, forward_choice)


# --------------------------------------------------------------------------- schedule and loop helpers


class CosineWithWarmup:
    """Linear warm-up then cosine decay to 0 over `total` steps; `total` may be changed while the
    run is still in warm-up (see `train.time_budget_minutes`)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def _autocast(device: torch.device, mixed_precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _optimizer(params: List[torch.nn.Parameter], config: Config, device: torch.device) -> torch.optim.Optimizer:
    o = config.optim
    return torch.optim.AdamW(
        params,
        lr=o.learning_rate,
        betas=(o.adam_beta1, o.adam_beta2),
        weight_decay=o.weight_decay,
        eps=o.adam_epsilon,
        fused=device.type == "cuda",
    )


class StepLoop:
    """max_steps optimizer steps of `loss_fn` with clipping, warm-up + cosine and optional EMA; with a
    time budget, max_steps is cut after 60 steps to what the budget allows."""

    def __init__(self, config: Config, params: List[torch.nn.Parameter], device: torch.device, desc: str) -> None:
        self.config, self.params, self.device, self.desc = config, params, device, desc
        self.optimizer = _optimizer(params, config, device)
        self.schedule = CosineWithWarmup(max(1, config.optim.lr_warmup_steps), config.train.max_steps)
        self.lr = LambdaLR(self.optimizer, self.schedule)
        self.ema = EMAModel(params, decay=config.train.ema_decay, foreach=True) if config.train.ema else None
        self.max_steps = config.train.max_steps
        self.losses: List[Tuple[int, float]] = []

    def _fit_budget(self, step: int, elapsed: float, step_time: float) -> None:
        """Set max_steps so that the steps left, at `step_time` each, end within the budget, never
        past the configured max_steps: a later fit may give back steps an earlier one cut."""
        budget = self.config.train.time_budget_minutes * 60
        fitted = min(self.config.train.max_steps, max(step + 1, step + int((budget - elapsed) / step_time)))
        if fitted != self.max_steps:
            logger.info(
                "%s: %.1f ms/step; the %.1f-minute budget allows %d steps (of %d)",
                self.desc,
                1000 * step_time,
                budget / 60,
                fitted,
                self.config.train.max_steps,
            )
            self.max_steps = fitted
            self.schedule.total = fitted

    def run(self, loss_fn) -> int:
        t = self.config.train
        # The step time is measured after the first steps (kernel selection, allocator growth), which
        # on a GPU cost several times a steady step: counting them cut a budgeted run to a third. It is
        # measured again every `refit` steps, since on a shared machine the speed changes as others run.
        warm, calibration, refit = 10, 60, 250
        progress = tqdm(total=self.max_steps, desc=self.desc, unit="step")
        started, step, running = time.perf_counter(), 0, None
        measured_at, measured_step = None, 0  # the start of the window the step time is measured over
        while step < self.max_steps:
            with _autocast(self.device, t.mixed_precision):
                loss = loss_fn()
            loss.backward()
            if self.config.optim.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.max_grad_norm)
            self.optimizer.step()
            self.lr.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.step(self.params)
            step += 1
            running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
            if t.time_budget_minutes > 0 and (
                step in (warm, calibration) or (step > calibration and step % refit == 0)
            ):
                if self.device.type == "cuda":
                    torch.cuda.synchronize()
                now = time.perf_counter()
                if measured_at is not None:
                    self._fit_budget(step, now - started, (now - measured_at) / (step - measured_step))
                    progress.total = self.max_steps
                measured_at, measured_step = now, step
            if step % t.log_every == 0 or step == self.max_steps:
                value = float(running)
                self.losses.append((step, value))
                progress.set_postfix(loss=f"{value:.4f}")
                logger.debug("%s step %d loss %.4f lr %.2e", self.desc, step, value, self.lr.get_last_lr()[0])
            progress.update()
            if t.time_budget_minutes > 0 and time.perf_counter() - started > t.time_budget_minutes * 60:
                # Slower steps than calibrated (a shared machine): stop at the budget, not past it.
                logger.warning(
                    "%s: the %.1f-minute budget is spent at step %d of %d; stopping",
                    self.desc,
                    t.time_budget_minutes,
                    step,
                    self.max_steps,
                )
                break
        progress.close()
        self.seconds = time.perf_counter() - started
        if self.ema is not None:
            self.ema.copy_to(self.params)  # the EMA weights are the result
        return step


# --------------------------------------------------------------------------- stage: vae


def vae_psnr(vae: AutoencoderKL, pixels: torch.Tensor, batch: int = 256) -> float:
    """Mean PSNR (dB, images in [0, 255]) of `vae`'s reconstructions (posterior mode) of `pixels`
    (N x 3 x H x W uint8)."""
    scores = []
    with torch.no_grad():
        for start in range(0, len(pixels), batch):
            x = to_unit_range(pixels[start : start + batch])
            y = vae.decode(vae.encode(x).latent_dist.mode()).sample
            mse = (((y.float().clamp(-1, 1) - x) * 127.5) ** 2).mean(dim=(1, 2, 3))
            scores.append(10 * torch.log10(255.0**2 / mse.clamp_min(1e-10)))
    return float(torch.cat(scores).mean())


def train_vae(config: Config, data: GroupTensors, vae: AutoencoderKL, device: torch.device) -> Dict[str, float]:
    """Train `vae` on every image and map kind (random kind, item and flip per sample); sets its
    scaling factor to 1 / std of the latents. Returns the loop's report."""
    t, v = config.train, config.vae
    generator = torch.Generator(device=device).manual_seed(t.seed)
    vae.to(device).train()
    params = vae_trainable_parameters(vae, v.decoder_only)
    n_items, n_kinds = data.pixels.shape[:2]
    distance = F.l1_loss if v.reconstruction_loss == "l1" else F.mse_loss

    def loss_fn() -> torch.Tensor:
        item = torch.randint(0, n_items, (t.batch_size,), device=device, generator=generator)
        kind = torch.randint(0, n_kinds, (t.batch_size,), device=device, generator=generator)
        flip = torch.rand(t.batch_size, device=device, generator=generator) < config.data.flip_prob
        x = flip_where(to_unit_range(data.pixels[item, kind]), flip)
        if v.decoder_only:
            # The frozen encoder's posterior mode is what the diffusion model is trained on and
            # generates; its posterior noise (std about an eighth of the latents' spread in the
            # shipped VAE) would only teach the decoder to blur.
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.mode()
            return distance(vae.decode(latents).sample.float(), x)
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        return distance(reconstruction.float(), x) + v.kl_weight * posterior.kl().mean()

    loop = StepLoop(config, params, device, "vae")
    steps = loop.run(loss_fn)
    vae.eval().requires_grad_(False)
    if v.fit_scaling_factor:
        vae.register_to_config(scaling_factor=fit_scaling_factor(vae, data, device))
    return {
        "steps": steps,
        "seconds": loop.seconds,
        "final_loss": loop.losses[-1][1],
        "scaling_factor": vae.config.scaling_factor,
    }


def fit_scaling_factor(vae: AutoencoderKL, data: GroupTensors, device: torch.device, samples: int = 2048) -> float:
    """1 / std of the latents of `samples` random images of every kind, as SD's 0.18215 was chosen."""
    generator = torch.Generator(device=device).manual_seed(1234)
    n_items, n_kinds = data.pixels.shape[:2]
    item = torch.randint(0, n_items, (samples,), device=device, generator=generator)
    kind = torch.randint(0, n_kinds, (samples,), device=device, generator=generator)
    with torch.no_grad():
        latents = torch.cat(
            [
                vae.encode(to_unit_range(data.pixels[item[s : s + 256], kind[s : s + 256]])).latent_dist.mode()
                for s in range(0, samples, 256)
            ]
        )
    return float(1.0 / latents.float().std())


# --------------------------------------------------------------------------- stage: diffusion


def encode_all(vae: AutoencoderKL, data: GroupTensors, batch: int = 512) -> torch.Tensor:
    """Scaled latents (posterior mode) of every item and kind, unflipped and flipped:
    (items, kinds, 2, C, h, w), so the loop never runs the frozen VAE."""
    n_items, n_kinds = data.pixels.shape[:2]
    flat = data.pixels.flatten(0, 1)
    chunks = []
    with torch.no_grad():
        for start in tqdm(range(0, len(flat), batch), desc="encoding", unit="batch"):
            x = to_unit_range(flat[start : start + batch])
            pair = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)
            chunks.append(vae.encode(pair).latent_dist.mode() * vae.config.scaling_factor)
    latents = torch.cat(chunks)
    return latents.view(n_items, n_kinds, 2, *latents.shape[1:])


class DiffusionBatches:
    """Training batches on the device: images gathered from `data`, target latents from the cache."""

    def __init__(
        self, config: Config, data: GroupTensors, latents: torch.Tensor, tokenizer, device: torch.device
    ) -> None:
        self.generator = torch.Generator(device=device).manual_seed(config.train.seed)
        self.draws = TaskDraws(data, config.data.tasks, config.data.flip_prob, self.generator)
        self.prompts = PromptTable(tokenizer, data.captions, data.kinds[1:], config.data.forward_prompt, device)
        self.latents = latents
        self.config = config
        self.device = device

    def __call__(self, n: int) -> Dict[str, torch.Tensor]:
        draw = self.draws.draw(n)
        batch = self.draws.images(draw)
        kinds = self.draws.target_kind[draw["task"]]
        batch["latents"] = self.latents[draw["query"], kinds, draw["query_flip"].long()].float()
        batch["input_ids"] = self.prompts.ids(
            draw, self.draws, torch.rand(n, device=self.device, generator=self.generator)
        )
        batch["draw"] = draw
        return batch


def diffusion_loss(
    model: DiffusionModel,
    scheduler: DDPMScheduler,
    batch: Dict[str, torch.Tensor],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    example_pair: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-sample MSE of the model's prediction (noise or velocity); `example_pair` replaces the batch's."""
    latents = batch["latents"]
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    pair = batch["example_pair"] if example_pair is None else example_pair
    prediction = model(noisy, timesteps, batch["input_ids"], pair, batch["query"])
    return F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))


@torch.no_grad()
def pair_effect(
    model: DiffusionModel,
    scheduler: DDPMScheduler,
    batches: DiffusionBatches,
    device: torch.device,
    samples: int = 1024,
    mixed_precision: str = "no",
) -> Dict[str, float]:
    """How much the example pair moves the loss, on fixed draws, noise and timesteps: the loss with
    the true pair, with the pair of another task drawn from the same two images, and with none; and,
    to compare, with the query of another draw of the same task (what reading the query is worth)."""
    generator = torch.Generator(device=device).manual_seed(4321)
    saved = batches.generator.get_state()
    batches.generator.manual_seed(4321)
    batch = batches(samples)
    batches.generator.set_state(saved)
    draws, draw = batches.draws, batch["draw"]
    shift = torch.randint(1, max(2, len(draws.tasks)), (samples,), device=device, generator=generator)
    other_task = (draw["task"] + shift) % len(draws.tasks)
    other_pair = draws.images(dict(draw, task=other_task))["example_pair"]
    noise = torch.randn(batch["latents"].shape, device=device, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (samples,), device=device, generator=generator)
    model.eval()
    result = {}
    with _autocast(device, mixed_precision):
        true_pair = diffusion_loss(model, scheduler, batch, noise, timesteps)
        wrong_pair = diffusion_loss(model, scheduler, batch, noise, timesteps, other_pair)
        no_pair = diffusion_loss(model, scheduler, batch, noise, timesteps, torch.zeros_like(batch["example_pair"]))
        other_query = dict(batch, query=batch["query"][_next_of_same_value(draw["task"])])
        wrong_query = diffusion_loss(model, scheduler, other_query, noise, timesteps)
    model.train()
    result["loss_true_pair"] = float(true_pair.mean())
    result["loss_other_task_pair"] = float(wrong_pair.mean())
    result["loss_no_pair"] = float(no_pair.mean())
    result["loss_other_query"] = float(wrong_query.mean())
    return result


def _next_of_same_value(values: torch.Tensor) -> torch.Tensor:
    """Indices that send every position to the next one holding the same value (cyclically)."""
    index = torch.arange(len(values), device=values.device)
    for value in values.unique():
        members = index[values == value]
        index[members] = members.roll(-1)
    return index


def build_diffusion_components(config: Config, data: GroupTensors, out_dir: Path) -> Dict[str, object]:
    """The components to train: `model.pretrained`'s (a pipeline folder, so that runs add up), or
    the preset's with a tokenizer trained on every prompt the run can draw; then `model.vae`,
    `model.controlnet` and the configured prediction type in their place."""
    m = config.model
    if m.pretrained is not None:
        components = load_pretrained_components(Path(m.pretrained), controlnet=m.controlnet is None)
    else:
        prompts = list(data.captions) + [map_prompt(k) for k in data.kinds[1:]]
        tokenizer = train_clip_tokenizer(prompts, out_dir / "tokenizer", vocab_size=m.tokenizer_vocab_size)
        components = presets.build_preset_components(m.preset, tokenizer, seed=m.seed)
    return apply_model_overrides(components, m)


def train_diffusion(
    config: Config, data: GroupTensors, components: Dict[str, object], device: torch.device
) -> Dict[str, object]:
    """Train the preset's text encoder, UNet and control branch in place; returns the report."""
    t = config.train
    vae = components["vae"].to(device).eval().requires_grad_(False)
    latents = encode_all(vae, data)
    model = DiffusionModel(components["text_encoder"], components["controlnet"], components["unet"]).to(device)
    params = set_trainable(model, t.train_modules)
    model.train()
    scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    batches = DiffusionBatches(config, data, latents, components["tokenizer"], device)
    noise_generator = torch.Generator(device=device).manual_seed(t.seed + 1)
    empty_ids = batches.prompts.empty_ids

    def loss_fn() -> torch.Tensor:
        batch = batches(t.batch_size)
        noise = torch.randn(batch["latents"].shape, device=device, generator=noise_generator)
        timesteps = torch.randint(
            0, scheduler.config.num_train_timesteps, (t.batch_size,), device=device, generator=noise_generator
        )
        r = torch.rand(t.batch_size, device=device, generator=noise_generator)
        batch["input_ids"], batch["example_pair"] = apply_dropout(
            batch["input_ids"], empty_ids, batch["example_pair"], r, t.drop_rate
        )
        return diffusion_loss(model, scheduler, batch, noise, timesteps).mean()

    probe = min(1024, 16 * t.batch_size)
    before = pair_effect(model, scheduler, batches, device, samples=probe, mixed_precision=t.mixed_precision)
    loop = StepLoop(config, params, device, "diffusion")
    steps = loop.run(loss_fn)
    after = pair_effect(model, scheduler, batches, device, samples=probe, mixed_precision=t.mixed_precision)
    logger.info("pair effect before: %s; after: %s", before, after)
    return {
        "steps": steps,
        "seconds": loop.seconds,
        "samples": steps * t.batch_size,
        "losses": loop.losses,
        "pair_effect_before": before,
        "pair_effect_after": after,
    }


def save_pipeline(components: Dict[str, object], out: Path, tasks: Sequence[str], guidance_scale: float) -> None:
    """The trained pipeline in fp32 plus `prompt_diffusion.json` (its trained tasks and guidance)."""
    pipe = PromptDiffusionPipeline(**components)
    pipe.to(torch.device("cpu"), torch.float32)
    pipe.save_pretrained(str(out))
    write_model_info(out, tasks, guidance_scale)


# --------------------------------------------------------------------------- entry point


def run(config: Config, data: Optional[GroupTensors] = None) -> Path:
    """Run the configured stage; returns the written `vae/` or `pipeline/` folder. `data`: already
    loaded data (e.g. shared by a VAE and a diffusion run); default: load what the config names."""
    t = config.train
    device = torch.device("cuda" if torch.cuda.is_available() and not t.cpu else "cpu")
    out_dir = Path(t.output_dir)
    out = out_dir / ("vae" if t.stage == "vae" else "pipeline")
    if out.exists():
        raise ConfigError(f"train.output_dir: {out} already exists; choose another train.output_dir or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(t.seed)
    started = time.perf_counter()
    data = (load_data(config) if data is None else data).to(device)
    logger.info(
        "data: %d groups, %d items, kinds %s, on %s (%.1f s)",
        len(data.captions),
        len(data.pixels),
        ",".join(data.kinds),
        device,
        time.perf_counter() - started,
    )
    if t.stage == "vae":
        if config.model.vae:
            vae = AutoencoderKL.from_pretrained(config.model.vae)
        elif config.model.pretrained:
            vae = AutoencoderKL.from_pretrained(Path(config.model.pretrained) / "vae")
        else:
            vae = AutoencoderKL(**presets.get_preset(config.model.preset or "small").vae_config())
        report = train_vae(config, data, vae, device)
        vae.to("cpu", torch.float32).save_pretrained(str(out))
    else:
        components = build_diffusion_components(config, data, out_dir)
        report = train_diffusion(config, data.for_tasks(config.data.tasks), components, device)
        save_pipeline(components, out, config.data.tasks, config.validation.guidance_scale)
    report.update(
        stage=t.stage, device=str(device), config=config.to_dict(), wall_seconds=time.perf_counter() - started
    )
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s (%s)", out, out_dir / REPORT_FILE)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.inmemory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML or JSON config, as for training.train")
    parser.add_argument("--override", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(load_config(args.config, args.override))
    except (ConfigError, DatasetFormatError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
