"""What the control adds to plain SD sampling: the pack in ComfyUI against diffusers' ControlNet, one run.

Four rows on the same weights (`bench_pipeline.build_pair`: random weights at a preset's size; our
pipeline saved as a folder and loaded into ComfyUI 0.3.64, in-process, by the pack's loader):

- `comfyui_plain`: stock KSampler (ddim / ddim_uniform) + VAEDecode, conditioning from CLIPTextEncode;
- `comfyui_control`: the same with that conditioning through Apply Prompt Diffusion;
- `diffusers_plain`: diffusers' `StableDiffusionPipeline`;
- `diffusers_controlnet`: diffusers' `StableDiffusionControlNetPipeline` with a standard ControlNet of
  our ControlNet's size (its hint encoder is our query encoder).

Each row is one batch: sampling and VAE decoding. The prompts are encoded once, untimed, on both
sides (ComfyUI caches its conditioning when only the seed changes; the diffusers pipelines get
`prompt_embeds`), so each side's ratio, time with control / time without, compares the same work.
Rows alternate after warm-up; medians, and the median of the rounds' own ratios; on a CPU also
each row's process CPU time, which other processes' load stretches far less. All four start from
KSampler's noise for the seed, with DDIM ending at sigma 0 on both sides, and build_pair zeroes our
example-pair encoder's last conv, so
`comfyui_control` computes what `diffusers_controlnet` does and `comfyui_plain` what
`diffusers_plain` does: the max pixel differences check it, and control vs plain shows the control
is applied. `--breakdown` adds a few more generations per row with its UNet, ControlNet, hint
encoders and VAE decoder timed by forward hooks (synchronised on a GPU, so slower there): a control
row's `other` less its plain row's is the control's glue.

    OMP_NUM_THREADS=1 python benchmarks/bench_control_cost.py --threads 1 --repeats 15 --breakdown   # small, 64 px, CPU
    python benchmarks/bench_control_cost.py --preset sd15 --resolution 512 --device cuda --dtype fp16 \\
        --batch 1 --json out.json                                                                  # the GPU run

Needs ComfyUI at COMFYUI_PATH (default: ../shared/comfyui) and, on a GPU image, its wheels (torchsde,
trampoline, av; ../shared/REFERENCE.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # pdiff_core, and the ComfyUI harness

from benchmarks.bench_pipeline import DTYPES, PROMPT, BenchConfig, build_pair, plain_sd_pipeline, sync  # noqa: E402
from benchmarks.common import (  # noqa: E402
    COMFY_SAMPLER,
    COMFY_SCHEDULER,
    comfy_conditioning,
    comfy_ddim,
    comfy_generate,
    comfy_start_latents,
    device_name,
    pixel_difference,
    report,
    time_alternating,
)
from comfy_harness import comfyui_copy, import_comfyui, pack_module  # noqa: E402
from pdiff_core.presets import PRESETS  # noqa: E402

Run = Callable[[], torch.Tensor]
SIDES = {"comfyui": ("comfyui_control", "comfyui_plain"), "diffusers": ("diffusers_controlnet", "diffusers_plain")}


@dataclasses.dataclass
class CostConfig:
    preset: str = "small"
    resolution: int = 64
    device: str = "cpu"
    dtype: str = "fp32"
    steps: int = 20
    batch: int = 4
    guidance: float = 5.0
    seed: int = 0
    repeats: int = 5
    warmup: int = 1
    threads: int = 0
    breakdown: bool = False
    json: Optional[Path] = None


@dataclasses.dataclass
class Setup:
    runs: Dict[str, Run]  # one batch each, (B, H, W, 3) in [0, 1] on the CPU, in ROWS' order
    modules: Dict[str, Dict[str, Any]]  # per row, the modules (or lists of them) --breakdown times
    dtypes: str


def build(config: CostConfig, base: Path) -> Setup:
    ours, peer = build_pair(
        BenchConfig(
            preset=config.preset,
            resolution=config.resolution,
            device=config.device,
            dtype=config.dtype,
            batch=config.batch,
        )
    )
    folder = base / "pipeline"
    ours.save_pretrained(str(folder))  # ComfyUI reads the weights from here, through the pack's loader
    del ours  # its UNet, VAE and text encoder are the peer's; its ControlNet is in the folder
    plain = plain_sd_pipeline(peer)
    peer.scheduler, plain.scheduler = comfy_ddim(peer.scheduler), comfy_ddim(plain.scheduler)

    comfyui = import_comfyui(comfyui_copy(base, None), cpu=config.device == "cpu")
    nodes = comfyui["nodes"]
    import comfy.utils  # importable once ComfyUI is

    comfy.utils.set_progress_bar_enabled(False)  # the diffusers pipelines run without theirs too
    size = (1, config.resolution, config.resolution, 3)
    g = torch.Generator().manual_seed(config.seed)
    source, target, query = (torch.rand(size, generator=g) for _ in range(3))
    with torch.inference_mode():  # as ComfyUI's executor runs nodes
        model, clip, vae, control = pack_module(nodes, "pipeline_folder").load_pipeline_folder(folder)
        latent = nodes.EmptyLatentImage().generate(config.resolution, config.resolution, config.batch)[0]
    plain_conditioning, controlled = comfy_conditioning(nodes, clip, control, PROMPT, source, target, query)

    def comfyui_run(conditioning) -> Run:
        return lambda: comfy_generate(
            nodes, model, vae, conditioning, latent, config.seed, config.steps, config.guidance
        )

    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    latents = comfy_start_latents(model, latent, config.seed, config.steps).to(device, dtype)
    with torch.no_grad():
        prompt_embeds, negative_embeds = peer.encode_prompt(PROMPT, device, config.batch, True, "")
    common = dict(
        prompt_embeds=prompt_embeds,
        negative_prompt_embeds=negative_embeds,
        latents=latents,
        num_inference_steps=config.steps,
        guidance_scale=config.guidance,
        output_type="pt",
    )
    # The query in [-1, 1], as Apply Prompt Diffusion feeds it; the peer's image processor does not rescale.
    hint = (query.movedim(-1, 1) * 2 - 1).to(device, dtype)

    def diffusers_plain() -> torch.Tensor:
        return plain(height=config.resolution, width=config.resolution, **common).images.movedim(1, -1).cpu()

    def diffusers_controlnet() -> torch.Tensor:
        return peer(image=hint, height=config.resolution, width=config.resolution, **common).images.movedim(1, -1).cpu()

    control_model = control.control_model
    comfyui_parts = {
        "unet": model.model.diffusion_model,
        "controlnet": [],
        "hint_encoders": [],
        "vae_decoder": vae.first_stage_model.decoder,
    }
    diffusers_parts = {"unet": peer.unet, "controlnet": [], "hint_encoders": [], "vae_decoder": peer.vae.decoder}
    modules = {
        "comfyui_plain": comfyui_parts,
        "comfyui_control": {
            **comfyui_parts,
            "controlnet": control_model,
            "hint_encoders": [control_model.input_hint_block, control_model.input_cond_block],
        },
        "diffusers_plain": diffusers_parts,
        "diffusers_controlnet": {
            **diffusers_parts,
            "controlnet": peer.controlnet,
            "hint_encoders": [peer.controlnet.controlnet_cond_embedding],
        },
    }
    dtypes = (
        f"ComfyUI UNet {model.model.get_dtype()}, ControlNet {control_model.dtype}, VAE {vae.vae_dtype}; "
        f"diffusers UNet {peer.unet.dtype}, ControlNet {peer.controlnet.dtype}, VAE {peer.vae.dtype}"
    )
    runs = {
        "comfyui_plain": comfyui_run(plain_conditioning),
        "comfyui_control": comfyui_run(controlled),
        "diffusers_plain": diffusers_plain,
        "diffusers_controlnet": diffusers_controlnet,
    }
    return Setup(runs, modules, dtypes)


@contextlib.contextmanager
def module_seconds(modules: Dict[str, Any], device: str) -> Iterator[Dict[str, float]]:
    """Seconds spent in each named module's forward (a name may stand for a list of modules), summed over calls."""
    spent = {name: 0.0 for name in modules}
    handles = []
    for name, group in modules.items():
        for module in group if isinstance(group, list) else [group]:
            started: List[float] = []

            def pre(_module, _args, started=started) -> None:
                sync(device)
                started.append(time.perf_counter())

            def post(_module, _args, _output, started=started, name=name) -> None:
                sync(device)
                spent[name] += time.perf_counter() - started.pop()

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        yield spent
    finally:
        for handle in handles:
            handle.remove()


def timed_parts(setup: Setup, row: str, device: str) -> Dict[str, float]:
    """One generation of a row, with seconds in its UNet, ControlNet (hint encoders included; 0 in a
    plain row), hint encoders and VAE decoder, and `other`: the rest (sampler, guidance, the control's glue)."""
    modules = setup.modules[row]
    with module_seconds(modules, device) as spent:
        sync(device)
        start = time.perf_counter()
        setup.runs[row]()
        sync(device)
        total = time.perf_counter() - start
    return {"total_s": total, **spent, "other": total - spent["unet"] - spent["controlnet"] - spent["vae_decoder"]}


def breakdown(setup: Setup, device: str, rounds: int) -> Dict[str, Dict[str, float]]:
    """Each row's parts, median of `rounds` generations (the rows alternate)."""
    samples: Dict[str, List[Dict[str, float]]] = {row: [] for row in setup.modules}
    for _ in range(rounds):
        for row in setup.modules:
            samples[row].append(timed_parts(setup, row, device))
    out = {}
    for row, runs in samples.items():
        parts = {name: round(statistics.median(run[name] for run in runs), 4) for name in runs[0]}
        out[row] = parts
        print(
            f"breakdown {row} (median of {rounds}): total {parts['total_s']:.3f} s; UNet {parts['unet']:.3f}, "
            f"ControlNet {parts['controlnet']:.3f} (hint encoders {parts['hint_encoders']:.3f}), "
            f"VAE decoder {parts['vae_decoder']:.3f}, other {parts['other']:.3f}",
            flush=True,
        )
    return out


def summary(times: List[float], batch: int) -> Dict[str, Any]:
    median = statistics.median(times)
    # Microseconds: the tiny model's runs take tens of milliseconds, and the ratios are recomputed from these.
    return {
        "median_s": round(median, 6),
        "images_per_s": round(batch / median, 3),
        "runs_s": [round(t, 6) for t in times],
    }


def control_cost(rows: Dict[str, Dict[str, Any]], side: str) -> float:
    """Median time with the control over median time without, of one side's rows."""
    with_control, without = SIDES[side]
    return round(rows[with_control]["median_s"] / rows[without]["median_s"], 3)


def paired_control_cost(times: Dict[str, List[float]], side: str) -> float:
    """The median over rounds of each round's time with the control over its time without: on a shared
    machine, load that changes between rounds hits both runs of a round alike."""
    with_control, without = SIDES[side]
    return round(statistics.median(w / o for w, o in zip(times[with_control], times[without])), 3)


def verdict(ratios: Dict[str, float], others: Dict[str, Dict[str, float]]) -> str:
    """Whether the ComfyUI ratio is at most diffusers', and which other measures of the same rounds disagree."""
    comfyui, diffusers = ratios["comfyui"], ratios["diffusers"]
    relation = "no more than" if comfyui <= diffusers else "MORE than"
    line = (
        f"verdict: the pack's control adds {relation} diffusers' ControlNet adds "
        f"(ComfyUI x{comfyui:.3f} over plain KSampler, diffusers x{diffusers:.3f} over plain SD)"
    )
    opposite = [
        name for name, other in others.items() if (other["comfyui"] <= other["diffusers"]) != (comfyui <= diffusers)
    ]
    if opposite:
        line += f"; {' and '.join(opposite)} say the opposite: the difference is within this run's noise"
    return line


def cpu_timed(runs: Dict[str, Run]) -> Tuple[Dict[str, Run], Dict[str, List[float]]]:
    """The runs, each also recording the process CPU seconds it took: with one torch thread on a shared
    CPU, other processes' load stretches wall time far more than this process's own CPU time."""
    spent: Dict[str, List[float]] = {name: [] for name in runs}

    def recording(name: str, run: Run) -> Run:
        def wrapped() -> torch.Tensor:
            start = time.process_time()
            out = run()
            spent[name].append(time.process_time() - start)
            return out

        return wrapped

    return {name: recording(name, run) for name, run in runs.items()}, spent


def save(path: Optional[Path], data: Dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(data, indent=2))


def parse_args(argv: Optional[List[str]]) -> CostConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="small")
    p.add_argument(
        "--resolution", type=int, default=None, help="default: the preset's (64 for small/tiny, 512 for sd15)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--guidance", type=float, default=5.0, help="cfg")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the four rows (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument(
        "--breakdown",
        action="store_true",
        help="also time each row's parts (min(repeats, 5) more generations each, medians)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    return CostConfig(**{**vars(args), "resolution": args.resolution or PRESETS[args.preset].resolution})


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_args(argv)
    data: Dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    }
    with tempfile.TemporaryDirectory(prefix="bench_control_cost_") as base:
        start = time.perf_counter()
        setup = build(config, Path(base))
        if config.threads:
            torch.set_num_threads(config.threads)  # after ComfyUI's import, which may set its own
        import diffusers

        data["env"] = {
            "device": device_name(config.device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
            "python": platform.python_version(),
            "dtypes": setup.dtypes,
        }
        data["build_s"] = round(time.perf_counter() - start, 2)
        print(
            f"preset {config.preset}, {config.resolution} px, batch {config.batch}, {config.steps} steps "
            f"{COMFY_SAMPLER}/{COMFY_SCHEDULER}, cfg {config.guidance}, {config.dtype} on {config.device}; {setup.dtypes}",
            flush=True,
        )
        print(
            f"hardware: {data['env']['device']}, {data['env']['threads']} torch threads, torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}; built in {data['build_s']} s",
            flush=True,
        )
        save(config.json, data)
        runs, cpu_times = cpu_timed(setup.runs)
        times, outputs = time_alternating(runs, config.repeats, config.warmup, lambda: sync(config.device))
        rows = {name: summary(t, config.batch) for name, t in times.items()}
        for name, t in times.items():
            report(name, t, config.batch)
        data["rows"] = rows
        data["control_cost"] = {side: control_cost(rows, side) for side in SIDES}
        others = {"the per-round ratios": {side: paired_control_cost(times, side) for side in SIDES}}
        data["control_cost_paired"] = others["the per-round ratios"]
        if config.device == "cpu":  # on a GPU the process's CPU time is launch work, not the cost
            cpu_rows = {name: summary(t[config.warmup :], config.batch) for name, t in cpu_times.items()}
            data["rows_cpu_time"] = cpu_rows
            others["the CPU times"] = data["control_cost_cpu_time"] = {
                side: control_cost(cpu_rows, side) for side in SIDES
            }
        data["comfyui_adds_no_more"] = data["control_cost"]["comfyui"] <= data["control_cost"]["diffusers"]
        data["max_pixel_diff"] = {
            "comfyui_plain_vs_diffusers_plain": pixel_difference(outputs["comfyui_plain"], outputs["diffusers_plain"]),
            "comfyui_control_vs_diffusers_controlnet": pixel_difference(
                outputs["comfyui_control"], outputs["diffusers_controlnet"]
            ),
            "comfyui_control_vs_plain": pixel_difference(outputs["comfyui_control"], outputs["comfyui_plain"]),
            "diffusers_controlnet_vs_plain": pixel_difference(
                outputs["diffusers_controlnet"], outputs["diffusers_plain"]
            ),
        }
        save(config.json, data)
        print(
            "max pixel difference (/ 255): " + ", ".join(f"{k} {v}" for k, v in data["max_pixel_diff"].items()),
            flush=True,
        )
        print(
            f"control cost (median time with control / without): comfyui {data['control_cost']['comfyui']:.3f}, "
            f"diffusers {data['control_cost']['diffusers']:.3f}",
            flush=True,
        )
        print(
            f"control cost, median of the rounds' own ratios: comfyui {data['control_cost_paired']['comfyui']:.3f}, "
            f"diffusers {data['control_cost_paired']['diffusers']:.3f}",
            flush=True,
        )
        if "control_cost_cpu_time" in data:
            print(
                f"control cost, median process CPU time with control / without: comfyui "
                f"{data['control_cost_cpu_time']['comfyui']:.3f}, diffusers {data['control_cost_cpu_time']['diffusers']:.3f}",
                flush=True,
            )
        print(verdict(data["control_cost"], others), flush=True)
        if config.breakdown:
            data["breakdown"] = breakdown(setup, config.device, min(config.repeats, 5))
            save(config.json, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
