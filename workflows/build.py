"""Generates the shared ComfyUI workflows from one description, so that the formats cannot drift:

- `example_workflows/<Title>.json`: UI format, the pack's templates (ComfyUI serves this folder; the
  templates dialog shows the file name as the title and `<Title>.jpg` beside it as the thumbnail,
  made by `python workflows/thumbnails.py`);
- `workflows/api/<name>.json`: API format (what `POST /prompt` and scripts/run_workflow.py take);
- `workflows/inputs/*.png`: the images their LoadImage nodes name (the pack copies them into ComfyUI's
  input/ when it loads, never over an existing file).

Run `python workflows/build.py` after changing it; tests/test_comfy_workflows.py checks the files are
up to date. The text-guided edit example is rendered with pdiff_core.toyworld; the others come from the
bundled held-out examples in pdiff_core/assets/examples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "pdiff_core" / "assets" / "examples"
TEMPLATES_DIR = "example_workflows"  # the folder name ComfyUI prefers for a pack's templates
MODEL = "pdiff-toyworld"
SIZE = 64  # the embedded model's resolution
# The embedded model's sampler settings, in one place: DDIM as the authors, fewer steps for CPUs, the
# guidance that scored best on its validation world (pdiff-toyworld's model card), not the authors' 9,
# and "simple" steps (diffusers' "trailing" spacing, the model's scheduler config: the first step at
# t = 999), which scored better there than "ddim_uniform" (SD1.5's "leading": the first step at t = 951).
STEPS, CFG, SEED, SCHEDULER = 20, 1.5, 1234, "simple"
# The published full-size model with the authors' settings: DDIM, 50 steps, guidance 9, 512 px.
SD15_CHECKPOINT, SD15_CONTROLNET = "v1-5-pruned-emaonly.safetensors", "network-step=04999.ckpt"
SD15_SIZE, SD15_STEPS, SD15_CFG, SD15_SCHEDULER = 512, 50, 9.0, "ddim_uniform"

# What the generator needs to know of each node type: widget names in the UI's order (None for a
# widget value the API does not take, e.g. KSampler's "control after generate", LoadImage's upload
# button), link inputs, outputs, and the size the frontend draws it at (so the layout does not overlap).
# tests/test_comfy_workflows.py checks this against ComfyUI's schemas; the browser test the sizes.
NODE_TYPES: Dict[str, Dict[str, Any]] = {
    "Note": {"widgets": ["text"], "links": {}, "outputs": [], "size": (380, 300)},  # frontend only: not run
    "PDiff_LoadPromptDiffusionModel": {
        "widgets": ["model_name"],
        "links": {},
        "size": (380, 150),
        "outputs": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("CONTROL_NET", "CONTROL_NET")],
    },
    "CheckpointLoaderSimple": {
        "widgets": ["ckpt_name"],
        "links": {},
        "size": (380, 110),
        "outputs": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    },
    "PDiff_LoadPromptDiffusionControlNet": {
        "widgets": ["control_net_name"],
        "links": {},
        "size": (380, 70),
        "outputs": [("CONTROL_NET", "CONTROL_NET")],
    },
    "LoadImage": {
        "widgets": ["image", None],
        "links": {},
        "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")],
        "size": (320, 330),
    },
    "CLIPTextEncode": {
        "widgets": ["text"],
        "links": {"clip": "CLIP"},
        "outputs": [("CONDITIONING", "CONDITIONING")],
        "size": (380, 140),
    },
    "PDiff_ApplyPromptDiffusion": {
        "widgets": ["strength", "start_percent", "end_percent"],
        "links": {
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "control_net": "CONTROL_NET",
            "example_source": "IMAGE",
            "example_target": "IMAGE",
            "query": "IMAGE",
        },
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
        "size": (380, 260),
    },
    "PDiff_ApplyPromptDiffusionFewShot": {
        "widgets": ["combine", "shot_weights", "strength", "start_percent", "end_percent"],
        "links": {
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "control_net": "CONTROL_NET",
            "example_sources": "IMAGE",
            "example_targets": "IMAGE",
            "query": "IMAGE",
        },
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")],
        "size": (380, 320),
    },
    "ImageBatch": {
        "widgets": [],
        "links": {"image1": "IMAGE", "image2": "IMAGE"},
        "outputs": [("IMAGE", "IMAGE")],
        "size": (380, 50),
    },
    "EmptyLatentImage": {
        "widgets": ["width", "height", "batch_size"],
        "links": {},
        "outputs": [("LATENT", "LATENT")],
        "size": (380, 110),
    },
    "KSampler": {
        "widgets": ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        "links": {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
        "outputs": [("LATENT", "LATENT")],
        "size": (320, 270),
    },
    "VAEDecode": {
        "widgets": [],
        "links": {"samples": "LATENT", "vae": "VAE"},
        "outputs": [("IMAGE", "IMAGE")],
        "size": (320, 50),
    },
    "SaveImage": {"widgets": ["filename_prefix"], "links": {"images": "IMAGE"}, "outputs": [], "size": (340, 360)},
    "PDiff_PromptDiffusionPreview": {
        "widgets": [],
        "links": {"example_source": "IMAGE", "example_target": "IMAGE", "query": "IMAGE", "result": "IMAGE"},
        "outputs": [("IMAGE", "IMAGE")],
        "size": (520, 260),
    },
}
VIRTUAL_NODE_TYPES = {"Note"}  # drawn by the frontend, never sent to the server
# UI-only widget values the API does not take, by node type and position.
UI_ONLY_VALUES = {"LoadImage": {1: "image"}, "KSampler": {1: "fixed"}}
MARGIN, COLUMN_GAP, ROW_GAP, TITLE_HEIGHT = 40, 60, 70, 30
ZOOM = 0.75  # the graph's initial zoom: below 0.6 the frontend stops drawing text


@dataclass(frozen=True)
class Example:
    name: str  # file name of the API workflow and of the rendered images
    title: str  # file name of the template: the templates dialog shows it as the card's title
    prompt: str
    source: str
    target: str
    query: str
    about: str  # what the template shows, first paragraph of its Note
    full_size: bool = False  # SD1.5 from the user's files instead of the embedded model
    more_pairs: Tuple[Tuple[str, str], ...] = ()  # few-shot: (source, target) of the further example pairs


EMBEDDED_NOTE = (
    "Uses pdiff-toyworld, the small model embedded in the pack (64 px, a procedural toy world): it runs on a "
    "CPU in seconds and shows the machinery, not the paper's quality. For the published model, open the "
    'template "SD1.5 full size, depth map to image".\n\n'
    "To try your own task: load your own example source and example target (the pair that shows what to do) "
    "and query (what to do it to); describe the result in the positive prompt; Queue.\n"
    f"cfg is {CFG}: the embedded model's best guidance. Apply Prompt Diffusion's strength and start/end percent "
    "work as Apply ControlNet's."
)
SD15_NOTE = (
    "The published Prompt Diffusion model at the authors' settings (512 px, DDIM, 50 steps, cfg 9). Needs two "
    "files that the pack cannot ship:\n"
    f"- models/checkpoints/{SD15_CHECKPOINT}: Stable Diffusion 1.5 (any SD1.5 checkpoint);\n"
    f"- models/controlnet/{SD15_CONTROLNET}: the authors' checkpoint (github Zhendong-Wang/Prompt-Diffusion); "
    "the pack's loader takes its control_model.* weights.\n"
    "Pick your file names in the two loaders if yours differ.\n\n"
    "Load your own example pair and query; describe the result in the positive prompt."
)


def examples_from_assets() -> List[Example]:
    index = {e["task"]: e for e in json.loads((EXAMPLES / "examples.json").read_text())["examples"]}
    chosen = [
        (
            "depth_to_image",
            "Depth map to image",
            "inv_depth",
            "The example pair turns a depth map into a picture; the model does the same to the query depth map.",
        ),
        (
            "image_to_depth",
            "Image to depth map",
            "depth",
            "The example pair turns a picture into its depth map; the model estimates the query's depth the same way.",
        ),
        (
            "softedge_to_image",
            "Soft edges to image",
            "inv_hed",
            "The example pair turns a soft-edge (HED) map into a picture; the model fills the query's edges the same way.",
        ),
        (
            "unseen_task_image_to_normal",
            "Unseen task, image to normal map",
            "normal",
            "A task the model never trained on: the example pair maps a picture to its surface normals. In-context "
            "learning is the point of Prompt Diffusion; the small embedded model does this poorly.",
        ),
    ]
    return [
        Example(
            name,
            title,
            index[task]["prompt"],
            *(f"{task}_{part}.png" for part in ("example_source", "example_target", "query")),
            about,
        )
        for name, title, task, about in chosen
    ]


def full_size_example(depth_to_image: Example) -> Example:
    return replace(
        depth_to_image,
        name="sd15_depth_to_image",
        title="SD1.5 full size, depth map to image",
        about="Depth map to image with the published full-size model.",
        full_size=True,
    )


INPUT_PREFIX = "pdiff_"  # the images share ComfyUI's input/ folder with the user's


def render_edit_example(inputs: Path) -> Example:
    """A text-guided edit: the example shows a scene whose floor changes; the query is another view."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image

    from pdiff_core.toyworld.render import render
    from pdiff_core.toyworld.scene import make_caption, sample_group, sample_item

    rng = np.random.default_rng(7)
    group = sample_group(rng, max_objects=2)
    edited_ground = replace(
        group.ground, pattern="checkered" if group.ground.pattern != "checkered" else "striped", color_name=""
    )
    example_scene, query_scene = sample_item(rng, group), sample_item(rng, group)
    images = {
        "edit_example_source.png": example_scene,
        "edit_example_target.png": replace(example_scene, ground=edited_ground),
        "edit_query.png": query_scene,
    }
    for name, scene in images.items():
        Image.fromarray(render(scene, resolution=SIZE).image).save(inputs / (INPUT_PREFIX + name))
    return Example(
        "text_guided_edit",
        "Edit by example, change the floor",
        make_caption(group.objects, edited_ground),
        "edit_example_source.png",
        "edit_example_target.png",
        "edit_query.png",
        "The example pair shows an edit (the floor changes); the model makes the same edit to the query.",
    )


# A workflow graph: (id, type, title, widget values by name, links {input: (node id, output slot)}, column).
# Nodes stack top to bottom in their column, in this order; data flows left to right.
Node = Tuple[int, str, str, Dict[str, Any], Dict[str, Tuple[int, int]], int]
Graph = List[Node]


def graph(example: Example) -> Graph:
    note = f"{example.title}\n\n{example.about}\n\n{SD15_NOTE if example.full_size else EMBEDDED_NOTE}"
    if example.full_size:
        loaders: Graph = [
            (1, "CheckpointLoaderSimple", "SD1.5 checkpoint", {"ckpt_name": SD15_CHECKPOINT}, {}, 1),
            (
                13,
                "PDiff_LoadPromptDiffusionControlNet",
                "Prompt Diffusion ControlNet",
                {"control_net_name": SD15_CONTROLNET},
                {},
                1,
            ),
        ]
        model, clip, vae, control = (1, 0), (1, 1), (1, 2), (13, 0)
        size, steps, cfg, scheduler = SD15_SIZE, SD15_STEPS, SD15_CFG, SD15_SCHEDULER
    else:
        loaders = [(1, "PDiff_LoadPromptDiffusionModel", "Prompt Diffusion model", {"model_name": MODEL}, {}, 1)]
        model, clip, vae, control = (1, 0), (1, 1), (1, 2), (1, 3)
        size, steps, cfg, scheduler = SIZE, STEPS, CFG, SCHEDULER
    images = {"example_source": (2, 0), "example_target": (3, 0), "query": (4, 0)}
    return [
        (14, "Note", "About this workflow", {"text": note}, {}, 0),
        *loaders,
        (2, "LoadImage", "example source", {"image": INPUT_PREFIX + example.source}, {}, 1),
        (3, "LoadImage", "example target", {"image": INPUT_PREFIX + example.target}, {}, 1),
        (4, "LoadImage", "query", {"image": INPUT_PREFIX + example.query}, {}, 1),
        (5, "CLIPTextEncode", "positive prompt", {"text": example.prompt}, {"clip": clip}, 2),
        (6, "CLIPTextEncode", "negative prompt", {"text": ""}, {"clip": clip}, 2),
        (
            7,
            "PDiff_ApplyPromptDiffusion",
            "Apply Prompt Diffusion",
            {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
            {"positive": (5, 0), "negative": (6, 0), "control_net": control, **images},
            3,
        ),
        (8, "EmptyLatentImage", "empty latent", {"width": size, "height": size, "batch_size": 1}, {}, 3),
        (
            9,
            "KSampler",
            "sampler",
            {
                "seed": SEED,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "ddim",
                "scheduler": scheduler,
                "denoise": 1.0,
            },
            {"model": model, "positive": (7, 0), "negative": (7, 1), "latent_image": (8, 0)},
            4,
        ),
        (10, "VAEDecode", "decode", {}, {"samples": (9, 0), "vae": vae}, 5),
        (11, "SaveImage", "result", {"filename_prefix": f"pdiff/{example.name}"}, {"images": (10, 0)}, 6),
        (12, "PDiff_PromptDiffusionPreview", "side by side", {}, {**images, "result": (10, 0)}, 6),
    ]


FEW_SHOT = 3


def render_few_shot_example(inputs: Path) -> Example:
    """Three example pairs of the unseen image -> normal map task, each on another scene, and a query."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image

    from pdiff_core.data import map_prompt
    from pdiff_core.toyworld.render import render
    from pdiff_core.toyworld.scene import sample_group, sample_item

    rng = np.random.default_rng(11)
    for k in range(1, FEW_SHOT + 1):
        rendered = render(sample_item(rng, sample_group(rng)), resolution=SIZE)
        Image.fromarray(rendered.image).save(inputs / f"{INPUT_PREFIX}few_shot_normal_source_{k}.png")
        Image.fromarray(rendered.maps(("normal",))["normal"]).save(
            inputs / f"{INPUT_PREFIX}few_shot_normal_target_{k}.png"
        )
    Image.fromarray(render(sample_item(rng, sample_group(rng)), resolution=SIZE).image).save(
        inputs / f"{INPUT_PREFIX}few_shot_normal_query.png"
    )
    pairs = [(f"few_shot_normal_source_{k}.png", f"few_shot_normal_target_{k}.png") for k in range(1, FEW_SHOT + 1)]
    return Example(
        "few_shot_image_to_normal",
        "Three example pairs, image to normal map",
        map_prompt("normal"),
        *pairs[0],
        "few_shot_normal_query.png",
        f"Few-shot: {FEW_SHOT} example pairs of one task (here the unseen image -> normal map), each on "
        "another scene, batched with Image Batch into Apply Prompt Diffusion (Few-Shot), which shows all of "
        "them to the model for the query. Add pairs by batching more images; shot_weights weighs them.",
        more_pairs=tuple(pairs[1:]),
    )


def few_shot_graph(example: Example) -> Graph:
    """`graph` with K example pairs: K LoadImage nodes per side, batched by ImageBatch, into the few-shot apply."""
    nodes = graph(example)
    shots = 1 + len(example.more_pairs)
    next_id, batched, extra = 15, {}, []
    for index, (side, first) in enumerate((("source", 2), ("target", 3))):
        batch = first
        for k, pair in enumerate(example.more_pairs, start=2):
            extra.append((next_id, "LoadImage", f"example {side} {k}", {"image": INPUT_PREFIX + pair[index]}, {}, 1))
            # a column each, between the inputs' (1) and the apply's (3): links only go rightwards
            extra.append(
                (
                    next_id + 1,
                    "ImageBatch",
                    f"example {side}s 1..{k}",
                    {},
                    {"image1": (batch, 0), "image2": (next_id, 0)},
                    1 + (k - 1) / (shots - 1),
                )
            )
            batch, next_id = next_id + 1, next_id + 2
        batched[side] = (batch, 0)
    images = {"example_source": batched["source"], "example_target": batched["target"]}
    out = []
    for node_id, node_type, title, widgets, links, column in nodes:
        if node_id == 7:
            node_type, title = "PDiff_ApplyPromptDiffusionFewShot", f"Apply Prompt Diffusion (Few-Shot, {shots} pairs)"
            widgets = {"combine": "residuals", "shot_weights": "", **widgets}
            links = {**links, "example_sources": images["example_source"], "example_targets": images["example_target"]}
            del links["example_source"], links["example_target"]
        elif node_id == 12:
            links = {**links, **images}
        out.append((node_id, node_type, title, widgets, links, column))
        if node_id == 4:  # the further LoadImages below the query, in the inputs' column
            out += [node for node in extra if node[1] == "LoadImage"]
    return out + [node for node in extra if node[1] == "ImageBatch"]


def api_format(nodes: Graph) -> Dict[str, Any]:
    prompt = {}
    for node_id, node_type, title, widgets, links, _ in sorted(nodes):
        if node_type in VIRTUAL_NODE_TYPES:
            continue
        inputs: Dict[str, Any] = dict(widgets)
        inputs.update({name: [str(src), slot] for name, (src, slot) in links.items()})
        prompt[str(node_id)] = {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}
    return prompt


def layout(nodes: Graph) -> Dict[int, Tuple[List[int], List[int]]]:
    """(pos, size) of each node: columns left to right, as wide as their widest node, nodes stacked in
    each column with room for their title bars."""
    columns = sorted({column for *_, column in nodes})
    widths = {c: max(NODE_TYPES[t]["size"][0] for _, t, *_, col in nodes if col == c) for c in columns}
    placed: Dict[int, Tuple[List[int], List[int]]] = {}
    x = MARGIN
    for column in columns:
        y = MARGIN + TITLE_HEIGHT
        for node_id, node_type, *_, col in nodes:
            if col == column:
                height = NODE_TYPES[node_type]["size"][1]
                placed[node_id] = ([x, y], [widths[column], height])
                y += height + TITLE_HEIGHT + ROW_GAP
        x += widths[column] + COLUMN_GAP
    return placed


def ui_format(nodes: Graph) -> Dict[str, Any]:
    links: List[List[Any]] = []
    out_links: Dict[Tuple[int, int], List[int]] = {}
    for node_id, node_type, _, _, node_links, _ in nodes:
        for slot, name in enumerate(NODE_TYPES[node_type]["links"]):
            if name in node_links:
                src, src_slot = node_links[name]
                link_id = len(links) + 1
                links.append([link_id, src, src_slot, node_id, slot, NODE_TYPES[node_type]["links"][name]])
                out_links.setdefault((src, src_slot), []).append(link_id)
    link_of = {(link[3], link[4]): link[0] for link in links}
    boxes = layout(nodes)
    ui_nodes = []
    for order, (node_id, node_type, title, widgets, node_links, _) in enumerate(nodes):
        spec = NODE_TYPES[node_type]
        values = [
            widgets[name] if name is not None else UI_ONLY_VALUES[node_type][index]
            for index, name in enumerate(spec["widgets"])
        ]
        pos, size = boxes[node_id]
        ui_nodes.append(
            {
                "id": node_id,
                "type": node_type,
                "title": title,
                "pos": pos,
                "size": size,
                "flags": {},
                "order": order,
                "mode": 0,
                "inputs": [
                    {"name": name, "type": kind, "link": link_of.get((node_id, slot))}
                    for slot, (name, kind) in enumerate(spec["links"].items())
                    if name in node_links
                ],
                "outputs": [
                    {"name": name, "type": kind, "links": out_links.get((node_id, slot), []), "slot_index": slot}
                    for slot, (name, kind) in enumerate(spec["outputs"])
                ],
                "properties": {"Node name for S&R": node_type},
                "widgets_values": values,
            }
        )
    return {
        "last_node_id": max(n[0] for n in nodes),
        "last_link_id": len(links),
        "nodes": ui_nodes,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": ZOOM, "offset": [0, 0]}},
        "version": 0.4,
    }


def examples(inputs: Optional[Path] = None) -> List[Example]:
    """Every shipped workflow's description, in the order a newcomer should try them. With `inputs`,
    their input images are written there."""
    embedded = examples_from_assets()
    if inputs is not None:
        for example in embedded:
            for name in (example.source, example.target, example.query):
                shutil.copyfile(EXAMPLES / name, inputs / (INPUT_PREFIX + name))
    edit = render_edit_example(inputs) if inputs is not None else _description(render_edit_example)
    few_shot = render_few_shot_example(inputs) if inputs is not None else _description(render_few_shot_example)
    return [*embedded[:3], edit, embedded[3], few_shot, full_size_example(embedded[0])]


def _description(render_example: Callable[[Path], Example]) -> Example:
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        return render_example(Path(scratch))


def build(root: Path) -> List[Path]:
    """Write every workflow and input image under `root` (a checkout: workflows/, example_workflows/);
    returns the files."""
    inputs, api, templates = root / "workflows" / "inputs", root / "workflows" / "api", root / TEMPLATES_DIR
    for folder in (inputs, api, templates):
        folder.mkdir(parents=True, exist_ok=True)
    chosen = examples(inputs)
    written = sorted(inputs.glob("*.png"))
    for example in chosen:
        nodes = few_shot_graph(example) if example.more_pairs else graph(example)
        for path, content in (
            (templates / f"{example.title}.json", ui_format(nodes)),
            (api / f"{example.name}.json", api_format(nodes)),
        ):
            path.write_text(json.dumps(content, indent=2) + "\n")
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to write into (default: this one)")
    for path in build(parser.parse_args().root):
        print(path)


if __name__ == "__main__":
    main()
