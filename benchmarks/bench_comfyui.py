"""Time the pack inside ComfyUI against `pdiff_core.PromptDiffusionPipeline`, side by side in one process.

Both run the same pipeline folder (default: the embedded pdiff-toyworld, 64 px) on the depth -> image
example the workflows ship. ComfyUI 0.3.64 is copied to a temporary folder and imported in-process on
the CPU (tests/comfy_harness.py), and its path is the nodes of the depth_to_image workflow, called as
ComfyUI's executor calls them (under torch.inference_mode): Load Prompt Diffusion Model (pipeline
folder) -> LoadImage x3 -> CLIPTextEncode (prompt, "") -> Apply Prompt Diffusion -> EmptyLatentImage ->
KSampler (ddim, ddim_uniform) -> VAEDecode.

Loading and the conditioning happen once, untimed: ComfyUI caches those nodes' outputs when only the
seed changes, so a batch costs it KSampler + VAEDecode, which is what is timed. Ours is timed per
pipeline call (it encodes the prompt and hint on every call); the one-off cost of ComfyUI's
conditioning is printed beside. Runs alternate A/B after warm-up; medians are reported.

The two paths start from the same noise (KSampler's for the seed) with DDIM ending at sigma 0 (see
tests/test_comfy_nodes.py), so their images agree to float32 rounding: the max pixel difference
checks that both do the same work; the difference to ComfyUI at another seed shows the scale.

    OMP_NUM_THREADS=1 python benchmarks/bench_comfyui.py --repeats 5

Prints one `ratio` line: images/second of ours divided by ComfyUI's (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # pdiff_core, and the ComfyUI harness

from benchmarks.common import (  # noqa: E402
    COMFY_SAMPLER,
    COMFY_SCHEDULER,
    comfy_conditioning,
    comfy_ddim,
    comfy_generate,
    comfy_start_latents,
    cpu_name,
    pixel_difference,
    report,
    time_alternating,
)
from comfy_harness import comfyui_copy, import_comfyui  # noqa: E402
from pdiff_core.defaults import DEFAULT_MODEL, DEFAULT_MODEL_NAME  # noqa: E402

EXAMPLES = ROOT / "pdiff_core" / "assets" / "examples" / "examples.json"
TASK = "inv_depth"  # depth map -> image, as workflows/api/depth_to_image.json
INPUT_PREFIX = "pdiff_"  # how workflows/build.py names the task's images in ComfyUI's input/

Run = Callable[[], torch.Tensor]


@dataclass
class BenchConfig:
    model: Path = DEFAULT_MODEL
    steps: int = 20
    batch: int = 4
    guidance: float = 5.0
    seed: int = 0
    repeats: int = 5
    warmup: int = 1
    threads: int = 1


@dataclass
class Setup:
    runs: Dict[str, Run]  # one batch each, (B, H, W, 3) in [0, 1]
    other_seed: Run  # ComfyUI at seed + 1
    conditioning_s: float  # ComfyUI's CLIPTextEncode x2 + Apply, warm
    dtypes: str


def task_prompt() -> str:
    return next(e["prompt"] for e in json.loads(EXAMPLES.read_text())["examples"] if e["task"] == TASK)


def build(config: BenchConfig, comfyui: Dict[str, ModuleType]) -> Setup:
    import comfy.utils

    from pdiff_core.pipeline import PromptDiffusionPipeline

    nodes = comfyui["nodes"]
    comfy.utils.set_progress_bar_enabled(False)  # ours runs without its progress bar too
    prompt = task_prompt()
    with torch.inference_mode():
        model, clip, vae, control = (
            nodes.NODE_CLASS_MAPPINGS["PDiff_LoadPromptDiffusionModel"].execute(DEFAULT_MODEL_NAME).result
        )
        source, target, query = (
            nodes.LoadImage().load_image(f"{INPUT_PREFIX}{TASK}_{part}.png")[0]
            for part in ("example_source", "example_target", "query")
        )
        height, width = query.shape[1:3]
        latent = nodes.EmptyLatentImage().generate(width, height, config.batch)[0]

    def condition() -> Tuple[list, list]:
        return comfy_conditioning(nodes, clip, control, prompt, source, target, query)[1]

    condition()  # the first call also moves CLIP to its device
    start = time.perf_counter()
    positive, negative = condition()
    conditioning_s = time.perf_counter() - start

    def run_comfyui(seed: int = config.seed) -> torch.Tensor:
        return comfy_generate(nodes, model, vae, (positive, negative), latent, seed, config.steps, config.guidance)

    pipe = PromptDiffusionPipeline.from_pretrained(str(config.model))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = comfy_ddim(pipe.scheduler)
    latents = comfy_start_latents(model, latent, config.seed, config.steps)
    pair, query_pt = (source.movedim(-1, 1), target.movedim(-1, 1)), query.movedim(-1, 1)

    def run_ours() -> torch.Tensor:
        # One prompt, pair and query, a batch of images: EmptyLatentImage's batch_size in ComfyUI.
        return pipe(
            prompt,
            example_pair=pair,
            query=query_pt,
            num_images_per_prompt=config.batch,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            latents=latents,
            output_type="pt",
        ).images.movedim(1, -1)

    dtypes = (
        f"ComfyUI UNet {model.model.get_dtype()}, VAE {vae.vae_dtype}; "
        f"ours UNet {pipe.unet.dtype}, VAE {pipe.vae.dtype}"
    )
    return Setup(
        {"ours": run_ours, "comfyui": run_comfyui}, lambda: run_comfyui(config.seed + 1), conditioning_s, dtypes
    )


def parse_args(argv: Optional[List[str]]) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="a Prompt Diffusion pipeline folder (default: the embedded pdiff-toyworld)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0, help="cfg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed A/B rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    return BenchConfig(**vars(p.parse_args(argv)))


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_comfyui_") as base:
        comfyui = import_comfyui(comfyui_copy(Path(base), config.model))
        torch.set_num_threads(config.threads)  # after ComfyUI's import, which may set its own
        setup = build(config, comfyui)
        times, outputs = time_alternating(setup.runs, config.repeats, config.warmup)
        other = setup.other_seed()
    print(
        f"{config.model.name}: {tuple(outputs['ours'].shape[1:3])} px, batch {config.batch}, {config.steps} steps "
        f"{COMFY_SAMPLER}/{COMFY_SCHEDULER}, cfg {config.guidance}, seed {config.seed}; {setup.dtypes}",
        flush=True,
    )
    print(f"hardware: {cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}", flush=True)
    print(
        f"max pixel difference ours vs comfyui: {pixel_difference(outputs['ours'], outputs['comfyui']):.4f} / 255 "
        f"(comfyui at seed {config.seed + 1} vs seed {config.seed}: "
        f"{pixel_difference(other, outputs['comfyui']):.1f} / 255)",
        flush=True,
    )
    print(
        f"comfyui conditioning (CLIPTextEncode x2 + Apply Prompt Diffusion), once per prompt, not in its batches: "
        f"{setup.conditioning_s:.3f} s",
        flush=True,
    )
    rates = {name: report(name, t, config.batch, width=8) for name, t in times.items()}
    print(f"ratio (images/s, ours / comfyui): {rates['ours'] / rates['comfyui']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
