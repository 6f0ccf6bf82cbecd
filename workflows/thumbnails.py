"""Renders the templates' thumbnails (`example_workflows/<Title>.jpg`) from real runs of the workflows.

    python workflows/thumbnails.py --comfyui ../shared/comfyui [--cpu]

Each embedded-model workflow (workflows/api/) runs as shipped, in one in-process ComfyUI (the checkout
is only read), and its thumbnail shows example source -> example target over query -> result. The
full-size SD1.5 workflow needs files the pack cannot ship: unless both are found in the ComfyUI
checkout's model folders, its thumbnail is a card that names them. Rerun after changing the embedded
model or workflows/build.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PANEL, GAP, ARROW = 240, 16, 40
SIZE = 2 * PANEL + ARROW + 2 * GAP


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _arrow(draw: ImageDraw.ImageDraw, x: int, y: int) -> None:
    draw.line([(x + 6, y), (x + ARROW - 10, y)], fill="black", width=4)
    draw.polygon([(x + ARROW - 4, y), (x + ARROW - 14, y - 9), (x + ARROW - 14, y + 9)], fill="black")


def compose(source: Image.Image, target: Image.Image, query: Image.Image, result: Image.Image) -> Image.Image:
    """Example source -> example target over query -> result, on white."""
    canvas = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(canvas)
    for row, (left, right) in enumerate(((source, target), (query, result))):
        y = GAP + row * (PANEL + (SIZE - 2 * GAP - 2 * PANEL))
        canvas.paste(left.convert("RGB").resize((PANEL, PANEL), Image.Resampling.BICUBIC), (GAP, y))
        canvas.paste(right.convert("RGB").resize((PANEL, PANEL), Image.Resampling.BICUBIC), (GAP + PANEL + ARROW, y))
        _arrow(draw, GAP + PANEL, y + PANEL // 2)
    return canvas


def card(lines: List[str]) -> Image.Image:
    """A thumbnail for a workflow that cannot run here: what it needs."""
    canvas = Image.new("RGB", (SIZE, SIZE), (236, 238, 242))
    draw = ImageDraw.Draw(canvas)
    y = 40
    for line in lines:
        draw.text((32, y), line, fill="black", font_size=26 if y == 40 else 20)
        y += 44 if y == 40 else 32
    return canvas


def render(comfy_dir: Path, cpu: bool, templates: Path) -> List[Path]:
    build = _load("pdiff_workflows_build", HERE / "build.py")
    runner = _load("pdiff_run_workflow", ROOT / "scripts" / "run_workflow.py")
    written = []
    with tempfile.TemporaryDirectory(prefix="pdiff_thumbnails_") as scratch:
        output, inputs = Path(scratch) / "output", Path(scratch) / "input"
        output.mkdir()
        inputs.mkdir()
        comfy = runner.boot_comfyui(comfy_dir, cpu, output, inputs)
        folder_paths = comfy["folder_paths"]
        for example in build.examples():
            path = templates / f"{example.title}.jpg"
            prompt: Dict[str, Any] = json.loads((HERE / "api" / f"{example.name}.json").read_text())
            missing = [
                f"models/{kind}/{name}"
                for kind, name in (("checkpoints", build.SD15_CHECKPOINT), ("controlnet", build.SD15_CONTROLNET))
                if folder_paths.get_full_path(kind, name) is None
            ]
            if example.full_size and missing:
                card(
                    [example.title, "", "Needs two files:", *missing, "", "See the workflow's note and the README."]
                ).save(path, quality=90)
            else:
                runner.stage_images(prompt, inputs, comfy_dir / "input")
                history = runner.run(prompt, comfy)
                saved = history["outputs"]["11"]["images"][0]
                result = Image.open(output / saved["subfolder"] / saved["filename"])
                pictures = [
                    Image.open(HERE / "inputs" / (build.INPUT_PREFIX + name))
                    for name in (example.source, example.target, example.query)
                ]
                compose(*pictures, result).save(path, quality=90)
            written.append(path)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (default: $COMFYUI_PATH)"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (ComfyUI's --cpu)")
    parser.add_argument("--out", type=Path, default=ROOT / "example_workflows", help="templates folder")
    args = parser.parse_args(argv)
    if args.comfyui is None:
        parser.error("no ComfyUI checkout: pass --comfyui PATH or set COMFYUI_PATH")
    for path in render(args.comfyui.resolve(), args.cpu, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
