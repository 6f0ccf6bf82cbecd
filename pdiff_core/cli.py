"""`pdiff`: generate with a Prompt Diffusion model, convert and inspect checkpoints."""

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from .arguments import finite_float, positive_int, seed
from .checkpoints import (
    CheckpointError,
    check_save_target,
    describe_state_dict,
    read_controlnet,
    read_state_dict,
    save_controlnet,
)
from .defaults import DEFAULT_MODEL, DTYPES, default_device
from .loading import SCHEDULERS, check_model_argument, load_pipeline
from .model_info import read_model_info

logger = logging.getLogger("pdiff")

LARGE_FACTOR = 2  # sides beyond this many times the trained one need --allow-large


def trained_side(model: Path) -> Optional[int]:
    """The image side a local pipeline folder was trained at (UNet sample size x VAE downscale),
    from its configs; None where they do not say."""
    try:
        unet = json.loads((Path(model) / "unet" / "config.json").read_text())
        vae = json.loads((Path(model) / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_size(model: Path, sizes: Dict[str, Tuple[int, int]], allow_large: bool) -> None:
    """Refuse a size far past the model's (memory grows with the square of the side, and the
    output is poor): over LARGE_FACTOR times its trained side, unless --allow-large."""
    side = trained_side(model)
    if side is None or allow_large:
        return
    for what, (width, height) in sizes.items():
        if max(width, height) > LARGE_FACTOR * side:
            raise ValueError(
                f"{what}: {width}x{height} is over {LARGE_FACTOR}x the {side}x{side} this model was "
                f"trained at; pass --height/--width to resize, or --allow-large to run it anyway"
            )


def _refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def generation_size(size: Tuple[int, int], multiple: int) -> Tuple[int, int]:
    """(height, width) of an image of `size` (width, height) rounded to the nearest multiple, as ComfyUI does."""
    width, height = size
    return tuple(max(multiple, round(v / multiple) * multiple) for v in (height, width))


def _guidance(args: argparse.Namespace) -> float:
    """--guidance, else the model's own (prompt_diffusion.json), else the authors' 9.0."""
    return args.guidance if args.guidance is not None else read_model_info(args.model).guidance_scale


def cmd_generate(args: argparse.Namespace) -> None:
    from .image_io import check_output_path, image_size, read_image, save_image_atomic

    # Everything that can be refused is refused before the model loads.
    out = check_output_path(args.out)
    _refuse_overwrite(out, args.overwrite)
    check_model_argument(args.model)
    if (args.height is None) != (args.width is None):
        raise ValueError(f"--height and --width go together (got --height {args.height}, --width {args.width})")
    flags = {name: f"--{name.replace('_', '-')}" for name in ("example_source", "example_target", "query")}
    sizes = {flag: image_size(getattr(args, name), flag) for name, flag in flags.items()}
    if args.height is not None:
        sizes = {"--width x --height": (args.width, args.height)}
    _check_size(args.model, sizes, args.allow_large)
    images = {name: read_image(getattr(args, name), flag) for name, flag in flags.items()}
    pipe = load_pipeline(args.model, args.controlnet, DTYPES[args.dtype], args.device, args.scheduler)
    if args.fast:
        pipe.enable_fast_gpu()  # logs and keeps the eager loop when not on CUDA
    height, width = args.height, args.width
    if height is None:
        height, width = generation_size(images["query"].size, pipe.vae_scale_factor)
        if {im.size for im in images.values()} != {(width, height)}:
            logger.info(
                "generating at %dx%d: the query's %dx%d to the nearest multiple of %d, every input resized to it "
                "(--height/--width choose another size)",
                width,
                height,
                *images["query"].size,
                pipe.vae_scale_factor,
            )
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    result = pipe(
        args.prompt,
        example_pair=(images["example_source"], images["example_target"]),
        query=images["query"],
        height=height,
        width=width,
        num_inference_steps=args.steps,
        guidance_scale=_guidance(args),
        negative_prompt=args.negative_prompt,
        generator=generator,
    ).images[0]
    save_image_atomic(result, out)
    logger.info("wrote %s", out)


def cmd_convert(args: argparse.Namespace) -> None:
    check_save_target(args.output, args.to, args.overwrite)
    config = {"attention_head_dim": args.attention_head_dim} if args.attention_head_dim else None
    checkpoint = read_controlnet(args.input, config)
    model = checkpoint.build()
    out = save_controlnet(model, args.output, layout=args.to, overwrite=args.overwrite)
    logger.info("converted %s (%s layout) to %s (%s layout)", checkpoint.source, checkpoint.layout, out, args.to)


def cmd_info(args: argparse.Namespace) -> None:
    path = Path(args.checkpoint)
    if path.is_dir() and (path / "model_index.json").is_file() and not (path / "controlnet").is_dir():
        raise CheckpointError(f"{path} is a pipeline folder without a controlnet/ subfolder")
    try:
        checkpoint = read_controlnet(path)
        checkpoint.check()
    except CheckpointError as err:
        if path.is_file():
            print(
                json.dumps(
                    {
                        "path": str(path),
                        "kind": describe_state_dict(read_state_dict(path)),
                        "usable": False,
                        "error": str(err),
                    },
                    indent=2,
                )
            )
            return
        raise
    params = sum(v.numel() for v in checkpoint.state_dict.values())
    print(
        json.dumps(
            {
                "path": checkpoint.source,
                "kind": "prompt-diffusion-controlnet",
                "layout": checkpoint.layout,
                "parameters": params,
                "config": checkpoint.config,
            },
            indent=2,
            default=list,
        )
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import draw_grid, load_examples, run_examples
    from .image_io import check_output_path, save_image_atomic

    out = check_output_path(args.out)
    _refuse_overwrite(out, args.overwrite)
    examples = load_examples(args.examples) if args.examples else load_examples()
    pipe = load_pipeline(args.model, device=args.device)
    results = run_examples(pipe, examples, steps=args.steps, guidance=_guidance(args), seed=args.seed)
    save_image_atomic(draw_grid(examples, results), out)
    logger.info("wrote %s: %d tasks (example source -> target | query -> result | exact answer)", out, len(examples))


def cmd_data_check(args: argparse.Namespace) -> int:
    from .data.check import check

    report = check(args.folder, args.tasks, args.layout)
    sys.stdout.write(report.text())
    return 1 if report.problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pdiff", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="apply the task shown by an example pair to a query image")
    gen.add_argument("--example-source", required=True, help="example input image (e.g. a photo)")
    gen.add_argument("--example-target", required=True, help="what was done to it (e.g. its depth map)")
    gen.add_argument("--query", required=True, help="the image to apply the same task to")
    gen.add_argument("--prompt", default="", help="text prompt (the caption of the wanted output)")
    gen.add_argument("--negative-prompt", default=None)
    gen.add_argument("--out", required=True, help="output PNG path")
    gen.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="pipeline folder (default: the embedded pdiff-toyworld)"
    )
    gen.add_argument(
        "--controlnet",
        type=Path,
        default=None,
        help="another Prompt Diffusion ControlNet (LDM .ckpt/.safetensors or diffusers)",
    )
    gen.add_argument("--steps", type=positive_int, default=50)
    gen.add_argument(
        "--guidance",
        type=finite_float,
        default=None,
        help="guidance scale (default: the model's prompt_diffusion.json, else the authors' 9.0)",
    )
    gen.add_argument("--seed", type=seed, default=0)
    gen.add_argument(
        "--height",
        type=positive_int,
        default=None,
        help="resize the inputs to this height (with --width; default: the query's, to the nearest multiple of 8)",
    )
    gen.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="resize the inputs to this width (with --height; default: the query's, to the nearest multiple of 8)",
    )
    gen.add_argument(
        "--allow-large",
        action="store_true",
        help=f"run sizes over {LARGE_FACTOR}x the model's trained side (slow, memory-hungry, poor output)",
    )
    gen.add_argument("--scheduler", choices=sorted(SCHEDULERS), default=None, help="default: the model's (DDIM)")
    gen.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    gen.add_argument("--device", default=default_device())
    gen.add_argument(
        "--fast",
        action="store_true",
        help="on CUDA: replay each denoising step from a CUDA graph, fused attention projections",
    )
    gen.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="run a model on the bundled examples and write a grid picture")
    demo.add_argument("--out", default="demo.png")
    demo.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="pipeline folder (default: the embedded pdiff-toyworld)"
    )
    demo.add_argument("--examples", type=Path, default=None, help="examples folder (default: the bundled ones)")
    demo.add_argument("--steps", type=positive_int, default=20)
    demo.add_argument(
        "--guidance",
        type=finite_float,
        default=None,
        help="guidance scale (default: the model's prompt_diffusion.json, else the authors' 9.0)",
    )
    demo.add_argument("--seed", type=seed, default=0)
    demo.add_argument("--device", default=default_device())
    demo.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    demo.set_defaults(func=cmd_demo)

    conv = sub.add_parser("convert", help="convert a Prompt Diffusion ControlNet between LDM and diffusers layouts")
    conv.add_argument("input", type=Path, help="LDM checkpoint (.ckpt/.safetensors), diffusers folder or file")
    conv.add_argument("output", type=Path, help="a folder (diffusers) or a .safetensors file")
    conv.add_argument("--to", choices=["diffusers", "ldm"], default="diffusers")
    conv.add_argument(
        "--attention-head-dim", type=int, default=None, help="head count, if not SD1.5's 8 (not in the weights)"
    )
    conv.add_argument("--overwrite", action="store_true")
    conv.set_defaults(func=cmd_convert)

    from .evaluation.cli import add_subcommands as add_evaluation_subcommands

    add_evaluation_subcommands(sub)

    data = sub.add_parser("data", help="datasets: check what training (or annotation) will see").add_subparsers(
        dest="data_command", required=True
    )
    data_check = data.add_parser("check", help="groups, maps, tasks and skipped images of a dataset or a photo folder")
    data_check.add_argument("folder", type=Path, help="a pdiff-groups dataset, or a folder of photos to annotate")
    data_check.add_argument(
        "--tasks",
        type=lambda text: [t for t in text.split(",") if t],
        default=None,
        help="the training config's data.tasks, comma-separated (default: every task of the maps)",
    )
    data_check.add_argument("--layout", choices=("folder", "ip2p"), default="folder", help="a photo folder's layout")
    data_check.set_defaults(func=cmd_data_check)

    info = sub.add_parser("info", help="what kind of file a checkpoint is, and its config")
    info.add_argument("checkpoint", type=Path)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args) or 0
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        if args.verbose:
            logger.debug("pdiff %s failed", args.command, exc_info=True)
        parser.exit(2, f"pdiff {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
