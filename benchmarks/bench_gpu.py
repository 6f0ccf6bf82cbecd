"""Every GPU measurement of the fast path in one process, written as JSON after each stage.

The models are `bench_pipeline.build_pair`'s (random weights at a preset's size, the diffusers peer
on the same weights and the same hint), built on the device. Stages (`--stages`), in this order, each
skipped with a reason when the deadline (`--deadline-at`) is too near:

1. `batches`, first batch size (`--batches`): first calls timed alone, then alternating rounds of ours
   eager, diffusers' `StableDiffusionControlNetPipeline` (the peer, as published) and diffusers' plain
   `StableDiffusionPipeline` on the same UNet (what the ControlNet costs diffusers); then
   `enable_fast_gpu()`, its first call (graph capture included) and alternating rounds of ours fast
   and the peer; max pixel differences against ours eager;
2. `graph_only`: the fast path without fused projections, first batch size;
3. `batches`, the other batch sizes, as in 1 without the plain pipeline;
4. `compile`: the peer `torch.compile`d (default mode, as `bench_pipeline --compile both`), first
   batch size: its first call (compilation) and alternating rounds against ours fast;
5. `channels_last`: the fast path with fused projections and channels_last weights.

    python benchmarks/bench_gpu.py --json out.json        # sd15, 512 px, cuda, fp16, 20 steps, batches 1 and 4
    python benchmarks/bench_gpu.py --stages compile --batches 1 --json compile.json   # the compiled peer alone
    python benchmarks/bench_gpu.py --preset tiny --device cpu --dtype fp32 --steps 2 --batches 1 \
        --repeats 1 --stages batches,graph_only --json dry.json   # the plumbing, on a CPU

Off CUDA `enable_fast_gpu()` keeps the eager loop (logged, and `fast_enabled` false in the JSON).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_pipeline import DTYPES, PROMPT, BenchConfig, build_pair, make_runs, plain_sd_pipeline, sync  # noqa: E402
from benchmarks.common import device_name, pixel_difference, report, time_alternating  # noqa: E402
from pdiff_core.presets import PRESETS  # noqa: E402

Run = Callable[[], torch.Tensor]
# In the order they run: batch 1 eager and fast, graph only, the other batch sizes, the compiled peer,
# fused projections with channels_last.
STAGES = ("batches", "graph_only", "compile", "channels_last")


@dataclasses.dataclass
class GpuBenchConfig:
    preset: str = "sd15"
    resolution: int = 512
    device: str = "cuda"
    dtype: str = "fp16"
    steps: int = 20
    guidance: float = 7.5
    batches: List[int] = dataclasses.field(default_factory=lambda: [1, 4])
    repeats: int = 3
    warmup: int = 0  # every run's first call is timed alone before its rounds, and warms it
    stages: Tuple[str, ...] = STAGES
    compile_budget_s: float = 50.0  # skip the compile stage with less time than this left
    threads: int = 0
    deadline_at: float = 0.0  # Unix time (the caller's clock, imports included); 0: none
    json: Optional[Path] = None


class Results:
    """The JSON document, rewritten whole (atomically) after every stage so a timeout loses only the stage it hit."""

    def __init__(self, path: Optional[Path], deadline_at: float):
        self.path, self.data = path, {}
        self.start = time.perf_counter()
        self.deadline_at = deadline_at if deadline_at > 0 else None

    def time_left(self) -> float:
        return float("inf") if self.deadline_at is None else self.deadline_at - time.time()

    def save(self) -> None:
        """The JSON, and beside it the headline (NAME.headline.txt), both as they stand now."""
        self.data["elapsed_s"] = round(time.perf_counter() - self.start, 2)
        if self.path is not None:
            text_path = self.path.with_name(self.path.stem + ".headline.txt")
            for path, text in ((self.path, json.dumps(self.data, indent=2)), (text_path, headline(self.data) + "\n")):
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)


def summary(times: List[float], batch: int) -> Dict[str, Any]:
    median = statistics.median(times)
    return {
        "median_s": round(median, 4),
        "images_per_s": round(batch / median, 3),
        "runs_s": [round(t, 4) for t in times],
    }


def first_call(run: Run, device: str) -> Dict[str, float]:
    """One call timed alone (compilation or graph capture included), with its peak memory on a GPU."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    out = {"s": round(time.perf_counter() - start, 3)}
    if cuda:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def timed(runs: Dict[str, Run], config: GpuBenchConfig, batch: int) -> tuple:
    times, outputs = time_alternating(runs, config.repeats, config.warmup, lambda: sync(config.device))
    return (
        {name: summary(t, batch) for name, t in times.items()},
        outputs,
        {n: report(n, t, batch) for n, t in times.items()},
    )


def fast_stage(
    ours,
    peer_run: Run,
    ours_run: Run,
    eager_out: torch.Tensor,
    config: GpuBenchConfig,
    batch: int,
    **fast_options: bool,
) -> Dict[str, Any]:
    """enable_fast_gpu(**fast_options), its first call, then ours fast against the peer."""
    enabled = ours.enable_fast_gpu(**fast_options)
    stage: Dict[str, Any] = {"options": fast_options, "fast_enabled": enabled}
    stage["first_call"] = first_call(ours_run, config.device)
    timings, outputs, rates = timed({"ours_fast": ours_run, "peer": peer_run}, config, batch)
    step = ours.fast_gpu_step
    stage.update(
        timings=timings,
        ratio_fast_vs_peer=round(rates["ours_fast"] / rates["peer"], 3),
        capture_s=round(stage["first_call"]["s"] - timings["ours_fast"]["median_s"], 3) if enabled else None,
        max_pixel_diff_fast_vs_ours_eager=pixel_difference(outputs["ours_fast"], eager_out),
        graph={"captures": step.captures, "replays": step.replays, "fallback_reason": step.fallback_reason}
        if step
        else None,
    )
    print(
        f"  fast {fast_options}: x{stage['ratio_fast_vs_peer']} vs peer, first call {stage['first_call']['s']} s, "
        f"max pixel diff vs ours eager {stage['max_pixel_diff_fast_vs_ours_eager']} / 255, graph {stage['graph']}",
        flush=True,
    )
    return stage


def bench_config(config: GpuBenchConfig, batch: int) -> BenchConfig:
    """bench_pipeline's settings for one batch size (its model building and its runs)."""
    return BenchConfig(
        preset=config.preset,
        resolution=config.resolution,
        device=config.device,
        dtype=config.dtype,
        steps=config.steps,
        batch=batch,
        guidance=config.guidance,
    )


def batch_stage(ours, peer, sd_plain, config: GpuBenchConfig, batch: int) -> Dict[str, Any]:
    runs = make_runs(bench_config(config, batch), ours, peer)
    prompts = [PROMPT] * batch

    def run_sd_plain() -> torch.Tensor:
        return sd_plain(
            prompts,
            height=config.resolution,
            width=config.resolution,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance,
            generator=torch.Generator().manual_seed(0),
            output_type="pt",
        ).images

    eager = {"ours": runs["ours"], "peer": runs["peer"]}
    if batch == config.batches[0]:
        eager["sd_plain"] = run_sd_plain  # the ControlNet's cost to diffusers, once
    stage: Dict[str, Any] = {"first_call": {name: first_call(run, config.device) for name, run in eager.items()}}
    print(f"batch {batch}: eager", flush=True)
    stage["eager"], outputs, rates = timed(eager, config, batch)
    stage["ratio_ours_eager_vs_peer"] = round(rates["ours"] / rates["peer"], 3)
    if "sd_plain" in rates:
        # The ControlNet pipeline's time over the plain SD pipeline's, in diffusers.
        stage["diffusers_controlnet_cost"] = round(rates["sd_plain"] / rates["peer"], 3)
    stage["max_pixel_diff_peer_vs_ours_eager"] = pixel_difference(outputs["peer"], outputs["ours"])
    stage["eager_output"] = outputs["ours"]  # kept in memory for the fast stages; not saved
    return stage


def guarded(stage: Callable[..., Dict[str, Any]], *args: Any, **kwargs: Any) -> Dict[str, Any]:
    """A stage's results, or its error: the GPU run is one shot, and the next stages still have a chance."""
    try:
        return stage(*args, **kwargs)
    except Exception as err:  # noqa: BLE001  recorded in the JSON and the log, then the run goes on
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc(limit=8)}


def skipped(results: Results, needed_s: float) -> Optional[Dict[str, str]]:
    left = results.time_left()
    return {"skipped": f"{left:.0f} s left before the deadline, {needed_s:.0f} s needed"} if left < needed_s else None


def main(argv: Optional[List[str]] = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if config.threads:
        torch.set_num_threads(config.threads)
    results = Results(config.json, config.deadline_at)
    import diffusers
    import transformers

    results.data["env"] = {
        "device": device_name(config.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    results.data["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()}
    print(json.dumps(results.data["env"]), flush=True)
    if config.device.startswith("cuda"):
        # Context, cuBLAS and cuDNN start-up outside every timed first call.
        x = torch.randn(64, 8, 32, 32, device=config.device, dtype=DTYPES[config.dtype])
        torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3, device=x.device, dtype=x.dtype)).sum().item()

    start = time.perf_counter()
    ours, peer = build_pair(bench_config(config, config.batches[0]))
    # The peer keeps diffusers' published attention: its own UNet, since the fast path fuses ours.
    peer.unet = copy.deepcopy(ours.unet)
    sd_plain = plain_sd_pipeline(peer)
    results.data["build_s"] = round(time.perf_counter() - start, 2)
    results.save()

    first = config.batches[0]
    eager_outputs: Dict[int, torch.Tensor] = {}

    def batch_stages(batch: int) -> None:
        results.data[f"batch{batch}"] = skipped(results, 20)
        if results.data[f"batch{batch}"] is not None:
            return
        ours.disable_fast_gpu()
        stage = guarded(batch_stage, ours, peer, sd_plain, config, batch)
        eager = stage.pop("eager_output", None)
        results.data[f"batch{batch}"] = stage
        results.save()
        if eager is not None:
            eager_outputs[batch] = eager
            runs = make_runs(bench_config(config, batch), ours, peer)
            stage["fast"] = guarded(fast_stage, ours, runs["peer"], runs["ours"], eager, config, batch, fuse_qkv=True)
            results.save()

    runs = make_runs(bench_config(config, first), ours, peer)

    def variant(name: str, **options: bool) -> None:
        if name not in config.stages or first not in eager_outputs:
            return
        stage = results.data.setdefault(f"batch{first}_fast_variants", {})
        stage[name] = skipped(results, 10) or guarded(
            fast_stage, ours, runs["peer"], runs["ours"], eager_outputs[first], config, first, **options
        )
        # Against the peer as it is at that point: compiled once the compile stage has run.
        stage[name]["peer"] = "compiled" if "timings" in (results.data.get("peer_compiled") or {}) else "eager"
        results.save()

    if "batches" in config.stages:
        batch_stages(first)
    else:
        ours.disable_fast_gpu()
        eager_outputs[first] = runs["ours"]()  # the reference the later stages compare with
    # Graph alone next: bit-identical to eager, the default to fall back on if fusing moves pixels too far.
    variant("graph_only", fuse_qkv=False)
    if "batches" in config.stages:
        for batch in config.batches[1:]:
            batch_stages(batch)
    if "compile" in config.stages and first in eager_outputs:
        results.data["peer_compiled"] = skipped(results, config.compile_budget_s) or guarded(
            compile_stage, ours, peer, runs, eager_outputs[first], config, first
        )
        results.save()
    variant("channels_last", fuse_qkv=True, channels_last=True)
    ours.disable_fast_gpu()
    results.save()
    print(headline(results.data), flush=True)
    return 0


def headline(data: Dict[str, Any]) -> str:
    """The numbers the issue asks for, one line each."""
    lines = [f"{data['env']['device']}, torch {data['env']['torch']}, diffusers {data['env']['diffusers']}"]
    for key, stage in data.items():
        if key.startswith("batch") and isinstance(stage, dict) and "timings" in stage.get("fast", {}):
            fast = stage["fast"]
            lines.append(
                f"{key}: ours fast {fast['timings']['ours_fast']['images_per_s']} img/s, peer {fast['timings']['peer']['images_per_s']} img/s, "
                f"x{fast['ratio_fast_vs_peer']}; ours eager x{stage['ratio_ours_eager_vs_peer']} vs peer; "
                f"max pixel diff fast vs ours eager {fast['max_pixel_diff_fast_vs_ours_eager']} / 255; "
                f"fast first call {fast['first_call']['s']} s (capture ~{fast['capture_s']} s); graph {fast['graph']}"
            )
            if "diffusers_controlnet_cost" in stage:
                lines.append(
                    f"{key}: diffusers ControlNet pipeline time / plain SD pipeline time: {stage['diffusers_controlnet_cost']}"
                )
        elif key.endswith("_fast_variants"):
            for name, variant in stage.items():
                lines.append(
                    f"{key} {name}: "
                    + (
                        str(variant)
                        if "skipped" in variant
                        else f"x{variant['ratio_fast_vs_peer']} vs peer ({variant['peer']}), max pixel diff vs ours eager "
                        f"{variant['max_pixel_diff_fast_vs_ours_eager']} / 255, graph {variant['graph']}"
                    )
                )
        elif key.startswith("batch"):
            lines.append(f"{key}: {stage}")
    compiled = data.get("peer_compiled")
    if compiled and "timings" in compiled:
        lines.append(
            f"peer compiled: first call {compiled['first_call']['s']} s, ours fast x{compiled['ratio_fast_vs_peer_compiled']} vs it, "
            f"its max pixel diff vs ours eager {compiled['max_pixel_diff_peer_compiled_vs_ours_eager']} / 255"
        )
    elif compiled:
        lines.append(f"peer compiled: {compiled}")
    return "\n".join(lines)


def compile_stage(
    ours, peer, runs: Dict[str, Run], eager_out: torch.Tensor, config: GpuBenchConfig, batch: int
) -> Dict[str, Any]:
    """The peer torch.compile'd (diffusers' idiom, default mode) against ours fast."""
    ours.enable_fast_gpu(fuse_qkv=True)
    peer.unet = torch.compile(peer.unet)
    peer.controlnet = torch.compile(peer.controlnet)
    print("peer compiled: first call (compilation)", flush=True)
    stage: Dict[str, Any] = {
        "first_call": first_call(runs["peer"], config.device),
        "first_call_ours_fast": first_call(runs["ours"], config.device),
    }
    stage["timings"], outputs, rates = timed({"ours_fast": runs["ours"], "peer_compiled": runs["peer"]}, config, batch)
    stage["ratio_fast_vs_peer_compiled"] = round(rates["ours_fast"] / rates["peer_compiled"], 3)
    stage["max_pixel_diff_peer_compiled_vs_ours_eager"] = pixel_difference(outputs["peer_compiled"], eager_out)
    return stage


def parse_args(argv: Optional[List[str]]) -> GpuBenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="sd15")
    p.add_argument("--resolution", type=int, default=None, help="default: the preset's")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=0, help="untimed rounds after the first calls")
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated, run in this order whatever the order given: {', '.join(STAGES)}",
    )
    p.add_argument("--compile-budget-s", type=float, default=50.0, help="skip the compiled peer with less time left")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument(
        "--deadline-at",
        type=float,
        default=0.0,
        help="Unix time after which no stage starts that would not fit (0: none)",
    )
    p.add_argument("--json", type=Path, default=None, help="write the results here")
    args = vars(p.parse_args(argv))
    try:
        batches = [int(b) for b in args.pop("batches").split(",")]
    except ValueError as err:
        raise SystemExit(f"--batches: expected comma-separated integers: {err}")
    if not batches or min(batches) < 1:
        raise SystemExit(f"--batches: expected positive batch sizes, got {batches}")
    stages = tuple(args.pop("stages").split(","))
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"--stages: unknown {unknown}; expected some of {', '.join(STAGES)}")
    args["stages"] = stages
    args["resolution"] = args["resolution"] or PRESETS[args["preset"]].resolution
    return GpuBenchConfig(batches=batches, **args)


if __name__ == "__main__":
    sys.exit(main())
