"""Time PromptDiffusionPipeline against diffusers' StableDiffusionControlNetPipeline, side by side.

Both pipelines share the UNet, VAE, text encoder, tokenizer and scheduler settings (random weights
at a `pdiff_core.presets` preset's size); the peer's ControlNetModel has the same config with one
hint encoder (3 channels), and every weight it shares with ours is copied from ours. Our
example-pair encoder's last conv is zeroed and the peer's hint encoder is our query encoder, so
both see the same hint and their outputs should agree: the max pixel difference checks that the
two are doing the same work. Runs alternate A/B and report medians.

    python benchmarks/bench_pipeline.py                          # small preset, 64 px, CPU
    python benchmarks/bench_pipeline.py --preset sd15 --resolution 512 --device cuda --dtype fp16
    python benchmarks/bench_pipeline.py --explore                # also: cheap wins on our pipeline
    python benchmarks/bench_pipeline.py --compile ours           # ours torch.compile'd vs the plain peer

Prints one `ratio` line: images/second of ours divided by the peer's (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline  # noqa: E402

from benchmarks.common import device_name, report, time_alternating  # noqa: E402
from pdiff_core.defaults import DTYPES  # noqa: E402
from pdiff_core.pipeline import PromptDiffusionPipeline  # noqa: E402
from pdiff_core.presets import PRESETS, build_preset_components  # noqa: E402
from pdiff_core.tokenizer import train_clip_tokenizer  # noqa: E402

PROMPT = "a red sphere and a blue cube on a checkered floor"


@dataclass
class BenchConfig:
    preset: str = "small"
    resolution: int = 64
    device: str = "cpu"
    dtype: str = "fp32"
    steps: int = 20
    batch: int = 4
    guidance: float = 5.0
    repeats: int = 5
    warmup: int = 1
    threads: int = 0  # 0: torch's default
    channels_last: bool = False
    compile: str = "none"  # which pipelines get torch.compile'd UNet and ControlNet: none, ours, both
    explore: bool = False


def build_pair(config: BenchConfig):
    """Our pipeline and the diffusers peer, on the same weights."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = train_clip_tokenizer([PROMPT] * 20, folder, vocab_size=600)
    # Built where they run: at SD1.5 size random initialisation takes seconds on a GPU, a minute on a CPU.
    with torch.device(config.device):
        components = build_preset_components(config.preset, tokenizer, seed=0)
        controlnet = components["controlnet"]
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            # Random weights leave the zero-initialised convs at zero, and the control would do nothing.
            for param in controlnet.parameters():
                if not param.any():
                    param.copy_(torch.randn(param.shape, generator=generator, device="cpu") * 0.3)
            controlnet.controlnet_cond_embedding.conv_out.weight.zero_()
            controlnet.controlnet_cond_embedding.conv_out.bias.zero_()
        peer_config = {k: v for k, v in controlnet.config.items() if not k.startswith("_")}
        peer_controlnet = ControlNetModel(**{**peer_config, "conditioning_channels": 3})
        state = {k: v for k, v in controlnet.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}
        state = {
            k.replace("controlnet_query_cond_embedding.", "controlnet_cond_embedding."): v for k, v in state.items()
        }
        peer_controlnet.load_state_dict(state)
    # Schedulers outside: their tables stay on the CPU, as when loaded from a pipeline folder.
    components["scheduler"] = components["scheduler"].__class__.from_config(components["scheduler"].config)

    ours = PromptDiffusionPipeline(**components)
    peer = StableDiffusionControlNetPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        tokenizer=tokenizer,
        unet=components["unet"],
        controlnet=peer_controlnet,
        scheduler=components["scheduler"].__class__.from_config(components["scheduler"].config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    dtype, device = DTYPES[config.dtype], torch.device(config.device)
    for pipe in (ours, peer):
        pipe.to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
    return ours, peer


def plain_sd_pipeline(peer: StableDiffusionControlNetPipeline) -> StableDiffusionPipeline:
    """diffusers' plain StableDiffusionPipeline on the peer's UNet, VAE and text encoder, with its own
    copy of the scheduler: what the peer is without its ControlNet."""
    plain = StableDiffusionPipeline(
        vae=peer.vae,
        text_encoder=peer.text_encoder,
        tokenizer=peer.tokenizer,
        unet=peer.unet,
        scheduler=peer.scheduler.__class__.from_config(peer.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    plain.set_progress_bar_config(disable=True)
    return plain


def make_runs(
    config: BenchConfig, ours, peer, seed: int = 0, output_type: str = "pt"
) -> Dict[str, Callable[[], torch.Tensor]]:
    """Zero-argument callables that each generate one batch (inputs drawn from `seed`)."""
    g = torch.Generator().manual_seed(seed)
    size = (config.batch, 3, config.resolution, config.resolution)
    source, target, query = (torch.rand(size, generator=g) for _ in range(3))
    common = dict(num_inference_steps=config.steps, guidance_scale=config.guidance, output_type=output_type)
    prompts = [PROMPT] * config.batch

    def run_ours() -> torch.Tensor:
        return ours(
            prompts, example_pair=(source, target), query=query, generator=torch.Generator().manual_seed(0), **common
        ).images

    def run_peer() -> torch.Tensor:
        # Our pipeline feeds hints in [-1, 1] (the published weights' range); the peer's control
        # image processor does not rescale, so it gets the query already in that range.
        return peer(
            prompts,
            image=query * 2 - 1,
            height=config.resolution,
            width=config.resolution,
            generator=torch.Generator().manual_seed(0),
            **common,
        ).images

    return {"ours": run_ours, "peer": run_peer}


@torch.no_grad()
def agreement(config: BenchConfig, ours, peer) -> Dict[str, float]:
    """Max differences of ours vs the peer (latents, and pixels out of 255), and of ours vs a peer
    given another query, which shows how much the control moves the result."""
    runs, other = make_runs(config, ours, peer, output_type="latent"), make_runs(config, ours, peer, 1, "latent")
    mine, theirs, moved = runs["ours"]().float(), runs["peer"]().float(), other["peer"]().float()

    def pixels(latents: torch.Tensor) -> torch.Tensor:
        decoded = ours.vae.decode(latents.to(ours.vae.dtype) / ours.vae.config.scaling_factor).sample
        return (decoded.float() / 2 + 0.5).clamp(0, 1) * 255

    return {
        "latent": (mine - theirs).abs().max().item(),
        "latent_other_query": (mine - moved).abs().max().item(),
        "latent_scale": mine.abs().max().item(),
        "pixel": (pixels(mine) - pixels(theirs)).abs().max().item(),
        "pixel_other_query": (pixels(mine) - pixels(moved)).abs().max().item(),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def apply_options(config: BenchConfig, ours, peer) -> None:
    for pipe in (ours, peer):
        if config.channels_last:
            pipe.unet.to(memory_format=torch.channels_last)
            pipe.controlnet.to(memory_format=torch.channels_last)
    compiled = {"none": (), "ours": (ours,), "both": (ours, peer)}[config.compile]
    for pipe in compiled:
        # diffusers' idiom; the pipeline itself is unchanged. Compilation happens on the first call.
        pipe.unet = torch.compile(pipe.unet)
        pipe.controlnet = torch.compile(pipe.controlnet)


def explore(
    config: BenchConfig, ours, runs: Dict[str, Callable[[], torch.Tensor]]
) -> Dict[str, Callable[[], torch.Tensor]]:
    """Variants of our pipeline that need no change to it, to time against the plain call."""
    base = runs["ours"]

    def inference_mode() -> torch.Tensor:
        with torch.inference_mode():
            return base()

    def channels_last() -> torch.Tensor:
        with memory_format(ours, torch.channels_last):
            return base()

    variants = {"ours": base, "ours+inference_mode": inference_mode, "ours+channels_last": channels_last}
    if config.dtype == "fp32":

        def bf16_autocast() -> torch.Tensor:
            with torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16):
                return base()

        variants["ours+bf16_autocast"] = bf16_autocast
    return variants


@contextlib.contextmanager
def memory_format(pipe, fmt):
    for module in (pipe.unet, pipe.controlnet, pipe.vae):
        module.to(memory_format=fmt)
    try:
        yield
    finally:
        for module in (pipe.unet, pipe.controlnet, pipe.vae):
            module.to(memory_format=torch.contiguous_format)


def parse_args(argv: Optional[List[str]]) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument(
        "--resolution", type=int, default=None, help="default: the preset's (64 for small/tiny, 512 for sd15)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=5, help="timed A/B rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--channels-last", action="store_true", help="both pipelines' UNet and ControlNet in channels_last")
    p.add_argument(
        "--compile",
        choices=("none", "ours", "both"),
        default="none",
        help="torch.compile the UNet and ControlNet of our pipeline, or of both",
    )
    p.add_argument("--explore", action="store_true", help="also time cheap variants of our pipeline")
    args = p.parse_args(argv)
    resolution = args.resolution or PRESETS[args.preset].resolution
    return BenchConfig(**{**vars(args), "resolution": resolution})


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_args(argv)
    if config.threads:
        torch.set_num_threads(config.threads)
    ours, peer = build_pair(config)
    apply_options(config, ours, peer)
    runs = make_runs(config, ours, peer)
    # Each first call timed on its own: with --compile, that is where torch.compile does its work.
    first = {name: t[0] for name, t in time_alternating(runs, 1, 0, lambda: sync(config.device))[0].items()}
    agree = agreement(config, ours, peer)
    hardware = device_name(config.device)
    print(
        f"preset {config.preset}, {config.resolution} px, batch {config.batch}, {config.steps} DDIM steps, "
        f"guidance {config.guidance}, {config.dtype} on {config.device} ({hardware}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}; torch.compile: {config.compile}",
        flush=True,
    )
    print(f"first call (compilation included): ours {first['ours']:.1f} s, peer {first['peer']:.1f} s", flush=True)
    print(
        f"max difference ours vs peer: latents {agree['latent']:.2e} (of max |latent| {agree['latent_scale']:.2f}), "
        f"pixels {agree['pixel']:.3f} / 255; vs a peer given another query: latents {agree['latent_other_query']:.2e}, "
        f"pixels {agree['pixel_other_query']:.3f} / 255",
        flush=True,
    )
    times, _ = time_alternating(runs, config.repeats, config.warmup, lambda: sync(config.device))
    rates = {name: report(name, t, config.batch) for name, t in times.items()}
    print(f"ratio (images/s, ours / peer): {rates['ours'] / rates['peer']:.3f}", flush=True)
    if config.explore:
        variants, _ = time_alternating(
            explore(config, ours, runs), config.repeats, config.warmup, lambda: sync(config.device)
        )
        base = report("ours", variants.pop("ours"), config.batch)
        for name, t in variants.items():
            print(f"  {name}: x{report(name, t, config.batch) / base:.3f} vs plain ours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
