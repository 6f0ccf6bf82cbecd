"""The README's main job: run a model on the bundled examples and draw one grid.

Each row is one task: example source -> example target | query -> result, beside the exact
answer. The examples (held-out toy-world scenes, never seen in training) include tasks the
embedded model was trained on and tasks it never saw.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List

import torch
from PIL import Image, ImageDraw

from .image_io import read_image

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
COLUMNS = ("example source", "example target", "query", "result", "exact answer")


@dataclass
class Example:
    task: str
    prompt: str
    seen: bool  # trained on, or an unseen task
    example_source: Image.Image
    example_target: Image.Image
    query: Image.Image
    truth: Image.Image


IMAGE_KEYS = ("example_source", "example_target", "query", "truth")


def load_examples(folder: Path = EXAMPLES_DIR) -> List[Example]:
    index = folder / "examples.json"
    if not index.is_file():
        raise FileNotFoundError(f"no examples index at {index}")
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))["examples"]
        fields = [(e["task"], e["prompt"], e["seen"], {k: e[k] for k in IMAGE_KEYS}) for e in entries]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f'{index}: not an examples index (expected {{"examples": [{{task, prompt, seen, '
            f"{', '.join(IMAGE_KEYS)}}}, ...]}}): {type(err).__name__}: {err}"
        ) from None
    examples = []
    for task, prompt, seen, files in fields:
        images = {}
        for key, name in files.items():
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{index}: {key} of task {task!r} is missing: {path}")
            images[key] = read_image(path, f"{index}: {key} of task {task!r}")
        examples.append(Example(task, prompt, seen, **images))
    return examples


def run_examples(
    pipe, examples: List[Example], steps: int = 20, guidance: float = 5.0, seed: int = 0
) -> List[Image.Image]:
    """All examples in one batched call."""
    return pipe(
        [e.prompt for e in examples],
        example_pair=([e.example_source for e in examples], [e.example_target for e in examples]),
        query=[e.query for e in examples],
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
    ).images


def draw_grid(examples: List[Example], results: List[Image.Image], tile: int = 128) -> Image.Image:
    label_w, header_h, pad = 150, 24, 4
    grid = Image.new("RGB", (label_w + len(COLUMNS) * (tile + pad), header_h + len(examples) * (tile + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(COLUMNS):
        draw.text((label_w + c * (tile + pad) + 4, 6), name, fill="black")
    for r, (example, result) in enumerate(zip(examples, results)):
        y = header_h + r * (tile + pad)
        draw.text((6, y + tile // 2 - 14), example.task, fill="black")
        draw.text(
            (6, y + tile // 2 + 2),
            "trained task" if example.seen else "UNSEEN task",
            fill="black" if example.seen else "red",
        )
        tiles = (example.example_source, example.example_target, example.query, result, example.truth)
        for c, image in enumerate(tiles):
            grid.paste(image.resize((tile, tile), Image.BICUBIC), (label_w + c * (tile + pad), y))
    return grid
