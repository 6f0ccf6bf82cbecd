"""`PromptDiffusionPipeline`: text prompt + example pair + query image -> image(s).

A diffusers pipeline (vae, text_encoder, tokenizer, unet, controlnet, scheduler) that samples
like the authors' code: classifier-free guidance whose unconditional branch drops only the text
(the example pair and query stay), DDIM 50 steps and guidance 9.0 by default. It also takes the
diffusers research port's argument names (`image_pair=[source, target]`, `image=query`).
"""

import functools
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    StableDiffusionMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.controlnet.pipeline_controlnet import retrieve_timesteps
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.schedulers import KarrasDiffusionSchedulers
from packaging import version
from transformers import CLIPTextModel, CLIPTokenizer

from .fast_gpu import (
    CudaGraphs,
    StaticStep,
    fuse_attention_projections,
    model_fingerprint,
    unfuse_attention_projections,
)
from .image_io import to_rgb8
from .model import PromptDiffusionControlNetModel
from .model_folder import check_model_folder
from .shots import DEFAULT_COMBINE, check_combine, combine_shot_batches, normalise_weights, weighted_mean
from .text_encoder import prefix_saved_text_encoder
from .tokenizer import add_clip_vocab_files, special_token_ids

logger = logging.getLogger(__name__)

# What DiffusionPipeline.download takes of from_pretrained's arguments.
_DOWNLOAD_KWARGS = (
    "cache_dir",
    "force_download",
    "proxies",
    "local_files_only",
    "token",
    "revision",
    "variant",
    "use_safetensors",
)

# diffusers reads `dtype` from 0.40 on and warns that `torch_dtype`, the only name before, goes in 1.0.
DTYPE_KEYWORD = "dtype" if version.parse(diffusers.__version__) >= version.parse("0.40") else "torch_dtype"


class ControlNetMismatchError(ValueError):
    """A ControlNet made for another base model than the pipeline's UNet."""


# What the ControlNet's residuals must agree with the UNet on.
CONTROLNET_MUST_MATCH_UNET = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim")

ImageInput = Union[
    PIL.Image.Image, np.ndarray, torch.Tensor, Sequence[Union[PIL.Image.Image, np.ndarray, torch.Tensor]]
]


class PromptDiffusionPipeline(DiffusionPipeline, StableDiffusionMixin):
    model_cpu_offload_seq = "text_encoder->controlnet->unet->vae"
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    # Prompt encoding, latent preparation and scheduler kwargs are Stable Diffusion's own.
    encode_prompt = StableDiffusionPipeline.encode_prompt
    prepare_latents = StableDiffusionPipeline.prepare_latents
    prepare_extra_step_kwargs = StableDiffusionPipeline.prepare_extra_step_kwargs

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: PromptDiffusionControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
    ):
        super().__init__()
        if not isinstance(controlnet, PromptDiffusionControlNetModel):
            raise TypeError(
                f"controlnet must be a PromptDiffusionControlNetModel (two hint encoders), got {type(controlnet).__name__}"
            )
        differ = {
            key: (controlnet.config.get(key), unet.config.get(key))
            for key in CONTROLNET_MUST_MATCH_UNET
            if _as_list(controlnet.config.get(key)) != _as_list(unet.config.get(key))
        }
        if differ:
            raise ControlNetMismatchError(
                "the controlnet does not fit the unet (a ControlNet is made for one base model): "
                + ", ".join(f"{k} {c} vs {u}" for k, (c, u) in differ.items())
            )
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._fast_step: Optional[StaticStep] = None  # enable_fast_gpu()
        self._fast_channels_last = False

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: Union[str, os.PathLike], **kwargs: Any
    ) -> "PromptDiffusionPipeline":
        """diffusers' loader, after `check_model_folder` (a hub id is downloaded first, then checked).
        The dtype may be given as `torch_dtype` or `dtype` whichever diffusers runs, and is float32 when
        not given: transformers 5 would load the text encoder in the dtype it was saved in, diffusers the
        rest in float32."""
        folder = pretrained_model_name_or_path
        if not os.path.isdir(folder):
            download_kwargs = {k: kwargs[k] for k in _DOWNLOAD_KWARGS if k in kwargs}
            folder = cls.download(folder, **download_kwargs)
        check_model_folder(folder)
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        kwargs[DTYPE_KEYWORD] = dtype or torch_dtype or torch.float32
        return super().from_pretrained(folder, **kwargs)

    # ------------------------------------------------------------------ a folder both transformers 4 and 5 read

    def save_pretrained(self, save_directory: Union[str, os.PathLike], **kwargs: Any) -> None:
        """diffusers' save, in a folder both transformers 4 and 5 load: the text encoder's
        special-token ids are the tokenizer's (transformers 5 rejects ids outside the vocabulary), its
        weights carry transformers 4's names, and the tokenizer is in both file formats where
        transformers 5 wrote only tokenizer.json."""
        for name, token_id in special_token_ids(self.tokenizer).items():
            setattr(self.text_encoder.config, name, token_id)
        super().save_pretrained(save_directory, **kwargs)
        prefix_saved_text_encoder(Path(save_directory) / "text_encoder")
        add_clip_vocab_files(Path(save_directory) / "tokenizer")

    # ------------------------------------------------------------------ inputs

    def prepare_hint(
        self, images: ImageInput, name: str, height: Optional[int] = None, width: Optional[int] = None
    ) -> torch.Tensor:
        """One hint input as a (B, 3, H, W) float tensor in [-1, 1], the range the published weights
        were trained on (`2 * x / 255 - 1`). PIL images and uint8 arrays are read as 0..255; float
        arrays and tensors must be in [0, 1] (diffusers' convention). With `height` and `width`
        every image is resized to that size."""
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError(f"{name} is an empty list; expected at least one image")
        tensors = [_to_unit_tensor(item, name) for item in items]
        if height is not None and width is not None:
            tensors = [
                t
                if t.shape[-2:] == (height, width)
                else torch.nn.functional.interpolate(t, size=(height, width), mode="bilinear", antialias=True)
                for t in tensors
            ]
        sizes = sorted({tuple(t.shape[-2:]) for t in tensors})
        if len(sizes) > 1:
            raise ValueError(f"{name}: images of different sizes {sizes}; pass height and width to resize them")
        return torch.cat(tensors) * 2.0 - 1.0

    @staticmethod
    def check_call_arguments(
        num_inference_steps: int = 50,
        timesteps: Optional[List[int]] = None,
        guidance_scale: float = 9.0,
        eta: float = 0.0,
        controlnet_conditioning_scale: float = 1.0,
        height: Optional[int] = None,
        width: Optional[int] = None,
    ) -> None:
        """Refuse the scalar arguments of `__call__` that would fail late or silently give noise or NaN
        (callable before a model is loaded)."""
        if timesteps is None and (not isinstance(num_inference_steps, int) or num_inference_steps < 1):
            raise ValueError(f"num_inference_steps must be a whole number >= 1, got {num_inference_steps!r}")
        for name, value in (
            ("guidance_scale", guidance_scale),
            ("eta", eta),
            ("controlnet_conditioning_scale", controlnet_conditioning_scale),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM-like), got {eta}")
        if (height is None) != (width is None):
            raise ValueError(f"pass height and width together (got height={height}, width={width})")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")

    @staticmethod
    def _batch_size(prompt: Union[str, List[str], None], prompt_embeds: Optional[torch.Tensor]) -> int:
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass a prompt (a string, or a list of strings) or prompt_embeds")
        if isinstance(prompt, str):
            return 1
        if isinstance(prompt, list):
            if not prompt:
                raise ValueError("prompt is an empty list; expected at least one string (use '' for no text)")
            if not all(isinstance(p, str) for p in prompt):
                raise TypeError("prompt must be a string or a list of strings")
            return len(prompt)
        if prompt is not None:
            raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
        return prompt_embeds.shape[0]

    @staticmethod
    def _broadcast(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
        if tensor.shape[0] == batch:
            return tensor
        if tensor.shape[0] == 1:
            return tensor.expand(batch, *tensor.shape[1:])
        raise ValueError(f"{name} has a batch of {tensor.shape[0]} but the batch is {batch}; pass 1 or {batch}")

    @staticmethod
    def _resolve_aliases(
        example_pair, query, image_pair, image, example_pairs=None
    ) -> Tuple[List[Tuple[ImageInput, ImageInput]], ImageInput]:
        """The example pairs as a list of (source, target) and the query."""
        if image_pair is not None:
            if example_pair is not None:
                raise ValueError("pass example_pair or image_pair (the research port's name), not both")
            example_pair = image_pair
        if image is not None:
            if query is not None:
                raise ValueError("pass query or image (the research port's name), not both")
            query = image
        if example_pairs is not None:
            if example_pair is not None:
                raise ValueError("pass example_pair (one pair) or example_pairs (a list of pairs), not both")
            if not isinstance(example_pairs, (list, tuple)) or not example_pairs:
                raise ValueError("example_pairs must be a non-empty list of (source, target) pairs")
            pairs = list(example_pairs)
        elif example_pair is not None:
            pairs = [example_pair]
        else:
            pairs = None
        if pairs is None or query is None:
            raise ValueError(
                "pass example_pair=(source, target) and query (or image_pair=[source, target], image=query)"
            )
        for k, pair in enumerate(pairs):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                name = "example_pair" if example_pairs is None else f"example_pairs[{k}]"
                raise ValueError(f"{name} must be a (source, target) pair of images")
        return [(source, target) for source, target in pairs], query

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        example_pair: Optional[Tuple[ImageInput, ImageInput]] = None,
        query: Optional[ImageInput] = None,
        *,
        example_pairs: Optional[Sequence[Tuple[ImageInput, ImageInput]]] = None,
        shot_weights: Optional[Sequence[float]] = None,
        shot_combine: str = DEFAULT_COMBINE,
        image_pair: Optional[Sequence[ImageInput]] = None,
        image: Optional[ImageInput] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        timesteps: Optional[List[int]] = None,
        guidance_scale: float = 9.0,
        negative_prompt: Union[str, List[str], None] = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Union[torch.Generator, List[torch.Generator], None] = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        controlnet_conditioning_scale: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        callback_on_step_end: Optional[Callable[[Any, int, torch.Tensor, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ):
        """Apply the task shown by `example_pair=(source, target)` to `query`.

        Images: PIL, numpy (HxWx3, uint8 0..255 or float 0..1) or tensors (3xHxW / Bx3xHxW in 0..1),
        or lists of them; every size a multiple of 8. A single prompt, pair or query is broadcast
        over the batch of the others. `output_type`: "pil", "np", "pt" or "latent".

        Few-shot: `example_pairs=[(s1, t1), (s2, t2), ...]` instead of `example_pair` shows K pairs of
        one task for every query, combined as `shot_combine` says ("residuals": one control pass per
        pair, residuals averaged; "embedding": hint embeddings averaged, one pass; see
        `pdiff_core.shots`), weighted by `shot_weights` (K non-negative numbers, normalised to sum
        to 1; default equal).
        """
        # Stages and loop adapted from diffusers 0.35 pipelines/controlnet/pipeline_controlnet.py
        # StableDiffusionControlNetPipeline.__call__: two hints, K example pairs, text-only guidance.

        # 1. Check inputs (every argument, before any model runs)
        pairs, query, weights, batch = self.check_inputs(
            prompt,
            example_pair,
            query,
            example_pairs,
            shot_weights,
            shot_combine,
            image_pair,
            image,
            height,
            width,
            num_inference_steps,
            timesteps,
            guidance_scale,
            eta,
            controlnet_conditioning_scale,
            num_images_per_prompt,
            prompt_embeds,
            callback_on_step_end_tensor_inputs,
        )

        # 2. Prepare the example pairs and the query: one size, one batch (the largest of prompts, pairs, query)
        shots, query_t = self.prepare_example_hints(pairs, query, height, width)
        height, width = query_t.shape[-2:]
        batch = max(batch, query_t.shape[0], *(t.shape[0] for shot in shots for t in shot))
        prompt, negative_prompt = _prompts_for_batch(prompt, negative_prompt, batch)
        pair, query_t = self._batch_hints(shots, query_t, batch)

        # 3. Encode the prompt
        device = self._execution_device
        do_cfg = guidance_scale > 1.0
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            do_cfg,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        total = batch * num_images_per_prompt
        if prompt_embeds.shape[0] != total:
            raise ValueError(f"prompt_embeds has a batch of {prompt_embeds.shape[0]}, expected {total}")
        # One batched pass; the unconditional half keeps the example pair and query.
        text = torch.cat([negative_prompt_embeds, prompt_embeds]) if do_cfg else prompt_embeds

        # 4. Encode the hints (once: the hint encoders do not see the timestep)
        residual_shots = len(shots) if shot_combine == "residuals" else 1
        hint = self.encode_example_hints(
            pair, query_t, len(shots), batch, num_images_per_prompt, weights, residual_shots, do_cfg, device
        )

        # 5. Prepare timesteps, latents and the step function
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)
        latents = self.prepare_latents(
            total, self.unet.config.in_channels, height, width, text.dtype, device, generator, latents
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        predict = self._noise_predictor(
            device,
            guidance_scale if do_cfg else None,
            controlnet_conditioning_scale,
            cross_attention_kwargs,
            tuple(weights) if residual_shots > 1 else None,
        )

        # 6. Denoising loop
        with self.progress_bar(total=num_inference_steps) as progress:
            for i, t in enumerate(timesteps):
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise = predict(model_input, t, text, hint)
                latents = self.scheduler.step(noise, t, latents, **extra_step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    local = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    outputs = callback_on_step_end(
                        self, i, t, {k: local[k] for k in callback_on_step_end_tensor_inputs}
                    )
                    latents = outputs.pop("latents", latents)
                progress.update()

        # 7. Decode
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)

    # ------------------------------------------------------------------ the stages of __call__

    def check_inputs(
        self,
        prompt: Union[str, List[str], None],
        example_pair: Optional[Tuple[ImageInput, ImageInput]],
        query: Optional[ImageInput],
        example_pairs: Optional[Sequence[Tuple[ImageInput, ImageInput]]] = None,
        shot_weights: Optional[Sequence[float]] = None,
        shot_combine: str = DEFAULT_COMBINE,
        image_pair: Optional[Sequence[ImageInput]] = None,
        image: Optional[ImageInput] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 50,
        timesteps: Optional[List[int]] = None,
        guidance_scale: float = 9.0,
        eta: float = 0.0,
        controlnet_conditioning_scale: float = 1.0,
        num_images_per_prompt: int = 1,
        prompt_embeds: Optional[torch.Tensor] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Tuple[List[Tuple[ImageInput, ImageInput]], ImageInput, List[float], int]:
        """Refuse `__call__`'s bad arguments before any model runs (the images themselves are checked
        as they are read, in `prepare_hint`). Returns the example pairs and the query with the research
        port's aliases resolved, the shot weights normalised, and the prompts' batch."""
        self.check_call_arguments(
            num_inference_steps, timesteps, guidance_scale, eta, controlnet_conditioning_scale, height, width
        )
        pairs, query = self._resolve_aliases(example_pair, query, image_pair, image, example_pairs)
        weights = normalise_weights(shot_weights, len(pairs))
        check_combine(shot_combine)
        batch = self._batch_size(prompt, prompt_embeds)
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be at least 1, got {num_images_per_prompt}")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} not in {self._callback_tensor_inputs}")
        return pairs, query, weights, batch

    def prepare_example_hints(
        self,
        pairs: Sequence[Tuple[ImageInput, ImageInput]],
        query: ImageInput,
        height: Optional[int],
        width: Optional[int],
    ) -> Tuple[List[Tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Each example pair's (source, target) and the query as hint tensors (`prepare_hint`), all of
        one size, a multiple of the VAE's scale factor."""
        shots = []
        for k, (source, target) in enumerate(pairs):
            name = "example" if len(pairs) == 1 else f"example pair {k}:"
            shots.append(
                (
                    self.prepare_hint(source, f"{name} source", height, width),
                    self.prepare_hint(target, f"{name} target", height, width),
                )
            )
        query_t = self.prepare_hint(query, "query", height, width)
        sizes = {tuple(t.shape[-2:]) for shot in shots for t in shot} | {tuple(query_t.shape[-2:])}
        if len(sizes) > 1:
            raise ValueError(
                f"the example pairs and the query must have one size, got {sorted(sizes)}; pass height and width to resize"
            )
        height, width = query_t.shape[-2:]
        multiple = self.vae_scale_factor
        if height % multiple or width % multiple:
            raise ValueError(f"image size {width}x{height} is not a multiple of {multiple}")
        return shots, query_t

    def _batch_hints(
        self, shots: List[Tuple[torch.Tensor, torch.Tensor]], query: torch.Tensor, batch: int
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """The pairs as one (K * batch, 6, H, W) tensor, shot-major (shot k's pairs at
        [k * batch, (k + 1) * batch)), and the query, each broadcast over the batch."""
        pair = torch.cat(
            [
                torch.cat(
                    [
                        self._broadcast(source, batch, "example source"),
                        self._broadcast(target, batch, "example target"),
                    ],
                    dim=1,
                )
                for source, target in shots
            ]
        )
        return pair, self._broadcast(query, batch, "query")

    def encode_example_hints(
        self,
        pair: torch.Tensor,
        query: torch.Tensor,
        shot_count: int,
        batch: int,
        num_images_per_prompt: int,
        weights: List[float],
        residual_shots: int,
        do_cfg: bool,
        device: torch.device,
    ) -> torch.Tensor:
        """The hint embedding every step reuses: one per image; with K > 1 pairs either their weighted
        mean (`residual_shots` 1) or all K, shot-major (`residual_shots` K, combined later as residuals);
        doubled for the unconditional half under classifier-free guidance."""
        cn_dtype = self.controlnet.dtype
        hint = self.controlnet.encode_hints(
            pair.to(device, cn_dtype), query.repeat(shot_count, 1, 1, 1).to(device, cn_dtype)
        )
        hint = hint.unflatten(0, (shot_count, batch)).repeat_interleave(num_images_per_prompt, dim=1)
        if shot_count == 1:
            hint = hint[0]
        elif residual_shots == 1:
            hint = weighted_mean(hint, weights)
        if do_cfg:
            hint = torch.cat([hint, hint], dim=-4)
        if residual_shots > 1:
            hint = hint.flatten(0, 1)  # shot-major, as _predict_noise repeats the latents
        return hint

    def _noise_predictor(
        self,
        device: torch.device,
        guidance_scale: Optional[float],
        conditioning_scale: float,
        cross_attention_kwargs: Optional[Dict[str, Any]],
        shot_weights: Optional[Tuple[float, ...]],
    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """`(sample, t, text, hint) -> noise` for this call: `_predict_noise` with the call's constants,
        replayed from a CUDA graph when `enable_fast_gpu` is on and applies."""
        predict = functools.partial(
            self._predict_noise,
            guidance_scale=guidance_scale,
            conditioning_scale=conditioning_scale,
            cross_attention_kwargs=cross_attention_kwargs,
            shot_weights=shot_weights,
        )
        fast = self._fast_step_for(device, cross_attention_kwargs)
        if fast is None:
            return predict
        # Everything the graph bakes in besides its tensor inputs (see fast_gpu.StaticStep).
        key = (guidance_scale, conditioning_scale, model_fingerprint(self.unet, self.controlnet), shot_weights)
        return lambda sample, t, text, hint: fast(
            predict, key, sample=sample, t=torch.as_tensor(t, device=device), text=text, hint=hint
        )

    def _predict_noise(
        self,
        sample: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        hint: torch.Tensor,
        *,
        guidance_scale: Optional[float],
        conditioning_scale: float,
        cross_attention_kwargs: Optional[Dict[str, Any]],
        shot_weights: Optional[Tuple[float, ...]] = None,
    ) -> torch.Tensor:
        """One model evaluation: the ControlNet's residuals into the UNet, then classifier-free guidance
        (`guidance_scale` None: no unconditional half in the batch). The fast GPU path captures exactly
        this function, so per-call tensors come in as arguments only. `shot_weights` (K > 1 example
        pairs combined as residuals): `hint` holds K shot-major batches; one control call runs them all
        and their residuals are averaged with these weights."""
        shots = 1 if shot_weights is None else len(shot_weights)
        down, mid = self.controlnet(
            sample.repeat(shots, 1, 1, 1) if shots > 1 else sample,
            t,
            encoder_hidden_states=text.repeat(shots, 1, 1) if shots > 1 else text,
            hint_embedding=hint,
            conditioning_scale=conditioning_scale,
            return_dict=False,
        )
        if shots > 1:
            *down, mid = combine_shot_batches([*down, mid], shot_weights)
        noise = self.unet(
            sample,
            t,
            encoder_hidden_states=text,
            cross_attention_kwargs=cross_attention_kwargs,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        if guidance_scale is not None:
            uncond, cond = noise.chunk(2)
            noise = uncond + guidance_scale * (cond - uncond)
        return noise

    # ------------------------------------------------------------------ fast GPU path

    def enable_fast_gpu(self, fuse_qkv: bool = True, channels_last: bool = False) -> bool:
        """Replay each denoising step (ControlNet + UNet + guidance) from a CUDA graph, captured on the
        first call for a given batch, size and guidance (`fast_gpu.StaticStep`; a few steps' time);
        optionally fuse the attention projections and use channels_last weights. Call it after moving
        the pipeline to CUDA and loading weights. Not on CUDA, it logs why and changes nothing; returns
        whether it is enabled. Outputs stay equal to the eager loop's (bit-identical without fusing)."""
        device = self._execution_device
        if not (device.type == "cuda" and torch.cuda.is_available()):
            logger.warning(
                "enable_fast_gpu: the pipeline is on %s, not CUDA; keeping the eager loop "
                "(move it with pipe.to('cuda') first)",
                device,
            )
            return False
        if any(hasattr(model, "_hf_hook") for model in (self.unet, self.controlnet)):
            # Offloading moves weights inside each call, which a graph cannot replay.
            logger.warning("enable_fast_gpu: model CPU offload is on; keeping the eager loop")
            return False
        self.disable_fast_gpu()
        if fuse_qkv:
            for model in (self.unet, self.controlnet):
                if not fuse_attention_projections(model):
                    logger.info(
                        "enable_fast_gpu: %s has custom attention processors; left unfused", type(model).__name__
                    )
        if channels_last:
            for model in (self.unet, self.controlnet):
                model.to(memory_format=torch.channels_last)
        self._fast_step = StaticStep(CudaGraphs())
        self._fast_channels_last = channels_last
        return True

    def disable_fast_gpu(self) -> None:
        """Back to the eager loop: graphs dropped, projections unfused, weights contiguous again."""
        if self._fast_step is None:
            return
        self._fast_step.reset()
        self._fast_step = None
        for model in (self.unet, self.controlnet):
            unfuse_attention_projections(model)
            if self._fast_channels_last:
                model.to(memory_format=torch.contiguous_format)

    @property
    def fast_gpu_step(self) -> Optional[StaticStep]:
        """The graph runner when `enable_fast_gpu` is on: its `captures`, `replays` and `fallback_reason`."""
        return self._fast_step

    def _fast_step_for(
        self, device: torch.device, cross_attention_kwargs: Optional[Dict[str, Any]]
    ) -> Optional[StaticStep]:
        fast = self.fast_gpu_step
        if fast is None:
            return None
        if not fast.backend.supports(device):
            logger.warning("fast GPU path enabled but the pipeline runs on %s; using the eager loop", device)
            return None
        if cross_attention_kwargs is not None:
            # Its values would be baked into the graph with nothing to say when they change.
            logger.warning("fast GPU path: cross_attention_kwargs given; using the eager loop")
            return None
        return fast


def _prompts_for_batch(
    prompt: Union[str, List[str], None], negative_prompt: Union[str, List[str], None], batch: int
) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    """The prompt and negative prompt as one string per image (a single one repeated)."""
    if isinstance(prompt, str):
        prompt = [prompt] * batch
    elif isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt * batch
    elif isinstance(prompt, list) and len(prompt) != batch:
        raise ValueError(f"{len(prompt)} prompts for a batch of {batch} images; pass 1 or {batch}")
    if isinstance(negative_prompt, str):
        negative_prompt = [negative_prompt] * batch
    elif isinstance(negative_prompt, list) and len(negative_prompt) == 1:
        negative_prompt = negative_prompt * batch
    return prompt, negative_prompt


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _to_unit_tensor(item: Any, name: str) -> torch.Tensor:
    """(B, 3, H, W) float32 in [0, 1] from a PIL image, numpy array or tensor."""
    if isinstance(item, PIL.Image.Image):
        item = to_rgb8(item)
    if isinstance(item, np.ndarray):
        array = item.astype(np.float32) / 255.0 if item.dtype == np.uint8 else item.astype(np.float32)
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"{name}: a numpy image must be HxWx3 or BxHxWx3 (RGB), got shape {item.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)
    elif isinstance(item, torch.Tensor):
        tensor = item[None] if item.ndim == 3 else item
        if tensor.ndim != 4 or tensor.shape[1] != 3:
            raise ValueError(f"{name}: a tensor image must be 3xHxW or Bx3xHxW (RGB), got shape {tuple(item.shape)}")
        tensor = tensor.float()
    else:
        raise TypeError(f"{name}: expected PIL images, numpy arrays or torch tensors, got {type(item).__name__}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: the image holds NaN or infinite values")
    low, high = float(tensor.min()), float(tensor.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"{name}: float images must be in [0, 1], got values in [{low:.3f}, {high:.3f}]")
    return tensor.clamp(0, 1)
