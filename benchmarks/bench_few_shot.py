"""Time few-shot generation: K example pairs per query, K = 1, 2, 4, both ways of combining them.

"residuals" runs the control branch once per pair (K control passes per step, batched into one call
of K times the batch); "embedding" averages the pairs' hint embeddings and runs it once. Every run is
the same prompt, queries, seed and steps on one pipeline (default: the embedded pdiff-toyworld);
runs alternate and report medians, then one `ratio` line per run against K = 1.

    python benchmarks/bench_few_shot.py                                  # embedded model, CPU
    python benchmarks/bench_few_shot.py --model PIPELINE_FOLDER --device cuda --dtype fp16 --resolution 512
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_name, report, time_alternating  # noqa: E402
from pdiff_core.cli import DEFAULT_MODEL, DTYPES, load_pipeline  # noqa: E402

PROMPT = "a red sphere and a blue cube on a checkered floor"


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="pipeline folder (default: the embedded model)")
    p.add_argument("--shots", type=lambda s: [int(k) for k in s.split(",")], default=[1, 2, 4])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4, help="queries per call")
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (medians reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    return p.parse_args(argv)


def make_runs(args: argparse.Namespace, pipe) -> Dict[str, Callable[[], torch.Tensor]]:
    rng = np.random.default_rng(0)
    size = args.resolution

    def images(n: int) -> List[np.ndarray]:
        return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]

    queries = images(args.batch)
    pairs = [(images(1)[0], images(1)[0]) for _ in range(max(args.shots))]

    def run(k: int, combine: str) -> Callable[[], torch.Tensor]:
        def call() -> torch.Tensor:
            return pipe(
                PROMPT,
                example_pairs=pairs[:k],
                shot_combine=combine,
                query=queries,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator(args.device).manual_seed(0),
                output_type="pt",
            ).images

        return call

    runs = {}
    for k in args.shots:
        for combine in ["residuals"] if k == 1 else ["residuals", "embedding"]:
            runs[f"K={k}" if k == 1 else f"K={k} {combine}"] = run(k, combine)
    return runs


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, dtype=DTYPES[args.dtype], device=args.device)
    pipe.set_progress_bar_config(disable=True)
    runs = make_runs(args, pipe)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(
        f"model {args.model.name}, {args.resolution} px, batch {args.batch}, {args.steps} DDIM steps, guidance "
        f"{args.guidance}, {args.dtype} on {args.device} ({device_name(args.device)}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}",
        flush=True,
    )
    times, _ = time_alternating(runs, args.repeats, args.warmup, sync)
    rates = {name: report(name, t, args.batch) for name, t in times.items()}
    base = next(iter(rates))
    for name, rate in rates.items():
        print(f"ratio (images/s, {name} / {base}): {rate / rates[base]:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
