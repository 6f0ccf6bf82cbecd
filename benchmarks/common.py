"""What the benchmark scripts share: the hardware they name, the interleaved A/B timing loop, the
pixel difference they check agreement with, how a diffusers pipeline starts where ComfyUI's
KSampler does (same noise, same DDIM), and the ComfyUI nodes the in-process benchmarks call."""

from __future__ import annotations

import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() is empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else cpu_name()


def time_alternating(
    runs: Dict[str, Callable[[], Any]], repeats: int, warmup: int, sync: Callable[[], None] = lambda: None
) -> Tuple[Dict[str, List[float]], Dict[str, Any]]:
    """Seconds per call of each run, interleaved so machine noise hits all of them alike, and each
    run's last output. `sync` waits for an accelerator before the clock is read."""
    for _ in range(warmup):
        for run in runs.values():
            run()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    outputs: Dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            outputs[name] = run()
            sync()
            times[name].append(time.perf_counter() - start)
    return times, outputs


def pixel_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max |a - b| out of 255, of images in [0, 1] (the pipelines' "pt" output, ComfyUI's IMAGE)."""
    return round(float((a.float().cpu() - b.float().cpu()).abs().max()) * 255, 4)


COMFY_SAMPLER, COMFY_SCHEDULER = "ddim", "ddim_uniform"


def comfy_ddim(scheduler: Any) -> Any:
    """diffusers' DDIM as ComfyUI's "ddim" runs it under COMFY_SCHEDULER: ddim_uniform's steps (diffusers'
    "leading" spacing), to sigma 0 at the end, which diffusers does with set_alpha_to_one."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(scheduler.config, set_alpha_to_one=True, timestep_spacing="leading")


def comfy_start_latents(model: Any, latent: Dict[str, torch.Tensor], seed: int, steps: int) -> torch.Tensor:
    """KSampler's noise for `seed` on ComfyUI's `latent` (as EmptyLatentImage makes it), scaled into the
    diffusers pipelines' variance-preserving space, to pass as their `latents`. Needs ComfyUI imported."""
    import comfy.sample
    import comfy.samplers

    sigma0 = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), COMFY_SCHEDULER, steps)[0]
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    return comfy.sample.prepare_noise(samples, seed) * sigma0 / torch.sqrt(1 + sigma0**2)


def comfy_conditioning(
    nodes: Any, clip: Any, control: Any, prompt: str, source: torch.Tensor, target: torch.Tensor, query: torch.Tensor
) -> Tuple[Tuple[list, list], Tuple[list, list]]:
    """(positive, negative) from CLIPTextEncode (prompt, ""), without and with Apply Prompt Diffusion
    (strength 1, the whole schedule), as ComfyUI's executor calls the nodes."""
    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, prompt)[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        controlled = (
            nodes.NODE_CLASS_MAPPINGS["PDiff_ApplyPromptDiffusion"]
            .execute(positive, negative, control, source, target, query, 1.0, 0.0, 1.0)
            .result
        )
    return (positive, negative), controlled


def comfy_generate(
    nodes: Any,
    model: Any,
    vae: Any,
    conditioning: Tuple[list, list],
    latent: Dict[str, torch.Tensor],
    seed: int,
    steps: int,
    guidance: float,
) -> torch.Tensor:
    """KSampler (ddim / ddim_uniform) + VAEDecode: ComfyUI's images, (B, H, W, 3) in [0, 1]."""
    with torch.inference_mode():
        samples = nodes.KSampler().sample(
            model, seed, steps, guidance, COMFY_SAMPLER, COMFY_SCHEDULER, *conditioning, latent
        )[0]
        return nodes.VAEDecode().decode(vae, samples)[0]


def report(name: str, times: List[float], batch: int, width: int = 24) -> float:
    """Print a run's median and its individual times; return its images per second."""
    median = statistics.median(times)
    print(
        f"{name:{width}s} median {median:.3f} s/batch  {batch / median:8.2f} images/s  "
        f"(runs: {', '.join(f'{t:.3f}' for t in times)})",
        flush=True,
    )
    return batch / median
