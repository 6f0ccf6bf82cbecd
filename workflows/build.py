"""Generates the shared ComfyUI workflows from one description, so that the formats cannot drift:

- `workflows/<name>.json`: UI format (what ComfyUI's "Load" and template browser read);
- `workflows/api/<name>.json`: API format (what `POST /prompt` and scripts/run_workflow.py take);
- `workflows/inputs/*.png`: the images their LoadImage nodes name (copy them into ComfyUI's input/).

Run `python workflows/build.py` after changing it; tests/test_comfy_workflows.py checks the files are
up to date. The text-guided edit example is rendered with training.toyworld; the others come from the
bundled held-out examples in pdiff_core/assets/examples.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXAMPLES = ROOT / "pdiff_core" / "assets" / "examples"
MODEL = "pdiff-toyworld"
SIZE = 64  # the embedded model's resolution
STEPS, CFG, SEED = 20, 9.0, 1234  # DDIM and guidance 9 as the authors; fewer steps for CPUs

# What the generator needs to know of each node type: widget names in the UI's order (None for a
# widget value the API does not take, e.g. KSampler's "control after generate", LoadImage's upload
# button), link inputs, and outputs. tests/test_comfy_workflows.py checks this against ComfyUI's schemas.
NODE_TYPES: Dict[str, Dict[str, Any]] = {
    "PDiff_LoadPromptDiffusionModel": {"widgets": ["model_name"], "links": {},
                                       "outputs": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE"), ("CONTROL_NET", "CONTROL_NET")]},
    "LoadImage": {"widgets": ["image", None], "links": {}, "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "CLIPTextEncode": {"widgets": ["text"], "links": {"clip": "CLIP"}, "outputs": [("CONDITIONING", "CONDITIONING")]},
    "PDiff_ApplyPromptDiffusion": {
        "widgets": ["strength", "start_percent", "end_percent"],
        "links": {"positive": "CONDITIONING", "negative": "CONDITIONING", "control_net": "CONTROL_NET",
                  "example_source": "IMAGE", "example_target": "IMAGE", "query": "IMAGE"},
        "outputs": [("positive", "CONDITIONING"), ("negative", "CONDITIONING")]},
    "EmptyLatentImage": {"widgets": ["width", "height", "batch_size"], "links": {}, "outputs": [("LATENT", "LATENT")]},
    "KSampler": {"widgets": ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"],
                 "links": {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING", "latent_image": "LATENT"},
                 "outputs": [("LATENT", "LATENT")]},
    "VAEDecode": {"widgets": [], "links": {"samples": "LATENT", "vae": "VAE"}, "outputs": [("IMAGE", "IMAGE")]},
    "SaveImage": {"widgets": ["filename_prefix"], "links": {"images": "IMAGE"}, "outputs": []},
    "PDiff_PromptDiffusionPreview": {"widgets": [], "links": {"example_source": "IMAGE", "example_target": "IMAGE",
                                                              "query": "IMAGE", "result": "IMAGE"},
                                     "outputs": [("IMAGE", "IMAGE")]},
}
# UI-only widget values the API does not take, by node type and position.
UI_ONLY_VALUES = {"LoadImage": {1: "image"}, "KSampler": {1: "fixed"}}


@dataclass(frozen=True)
class Example:
    name: str
    title: str
    prompt: str
    source: str
    target: str
    query: str


def examples_from_assets() -> List[Example]:
    index = {e["task"]: e for e in json.loads((EXAMPLES / "examples.json").read_text())["examples"]}
    chosen = [("depth_to_image", "depth map -> image", "inv_depth"), ("image_to_depth", "image -> depth map", "depth"),
              ("softedge_to_image", "soft edge -> image", "inv_hed"),
              ("unseen_task_image_to_normal", "unseen task: image -> normal map", "normal")]
    return [Example(name, title, index[task]["prompt"], *(f"{task}_{part}.png" for part in ("example_source", "example_target", "query")))
            for name, title, task in chosen]


INPUT_PREFIX = "pdiff_"  # the images share ComfyUI's input/ folder with the user's


def render_edit_example(inputs: Path) -> Example:
    """A text-guided edit: the example shows a scene whose floor changes; the query is another view."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image

    from training.toyworld.render import render
    from training.toyworld.scene import make_caption, sample_group, sample_item

    rng = np.random.default_rng(7)
    group = sample_group(rng, max_objects=2)
    edited_ground = replace(group.ground, pattern="checkered" if group.ground.pattern != "checkered" else "striped", color_name="")
    example_scene, query_scene = sample_item(rng, group), sample_item(rng, group)
    images = {"edit_example_source.png": example_scene, "edit_example_target.png": replace(example_scene, ground=edited_ground),
              "edit_query.png": query_scene}
    for name, scene in images.items():
        Image.fromarray(render(scene, resolution=SIZE).image).save(inputs / (INPUT_PREFIX + name))
    return Example("text_guided_edit", "text-guided edit: change the floor", make_caption(group.objects, edited_ground),
                   "edit_example_source.png", "edit_example_target.png", "edit_query.png")


# A workflow graph: (id, type, title, widget values by name, links {input: (node id, output slot)}), positions by column.
Graph = List[Tuple[int, str, str, Dict[str, Any], Dict[str, Tuple[int, int]], Tuple[int, int]]]


def graph(example: Example) -> Graph:
    return [
        (1, "PDiff_LoadPromptDiffusionModel", "Prompt Diffusion model", {"model_name": MODEL}, {}, (0, 0)),
        (2, "LoadImage", "example source", {"image": INPUT_PREFIX + example.source}, {}, (0, 1)),
        (3, "LoadImage", "example target", {"image": INPUT_PREFIX + example.target}, {}, (0, 2)),
        (4, "LoadImage", "query", {"image": INPUT_PREFIX + example.query}, {}, (0, 3)),
        (5, "CLIPTextEncode", "positive prompt", {"text": example.prompt}, {"clip": (1, 1)}, (1, 0)),
        (6, "CLIPTextEncode", "negative prompt", {"text": ""}, {"clip": (1, 1)}, (1, 1)),
        (7, "PDiff_ApplyPromptDiffusion", "Apply Prompt Diffusion", {"strength": 1.0, "start_percent": 0.0, "end_percent": 1.0},
         {"positive": (5, 0), "negative": (6, 0), "control_net": (1, 3), "example_source": (2, 0),
          "example_target": (3, 0), "query": (4, 0)}, (1, 2)),
        (8, "EmptyLatentImage", "empty latent", {"width": SIZE, "height": SIZE, "batch_size": 1}, {}, (1, 3)),
        (9, "KSampler", "sampler", {"seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "ddim",
                                    "scheduler": "ddim_uniform", "denoise": 1.0},
         {"model": (1, 0), "positive": (7, 0), "negative": (7, 1), "latent_image": (8, 0)}, (2, 0)),
        (10, "VAEDecode", "decode", {}, {"samples": (9, 0), "vae": (1, 2)}, (2, 1)),
        (11, "SaveImage", "result", {"filename_prefix": f"pdiff/{example.name}"}, {"images": (10, 0)}, (3, 0)),
        (12, "PDiff_PromptDiffusionPreview", "side by side", {},
         {"example_source": (2, 0), "example_target": (3, 0), "query": (4, 0), "result": (10, 0)}, (3, 1)),
    ]


def api_format(nodes: Graph) -> Dict[str, Any]:
    prompt = {}
    for node_id, node_type, title, widgets, links, _ in nodes:
        inputs: Dict[str, Any] = dict(widgets)
        inputs.update({name: [str(src), slot] for name, (src, slot) in links.items()})
        prompt[str(node_id)] = {"inputs": inputs, "class_type": node_type, "_meta": {"title": title}}
    return prompt


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
    ui_nodes = []
    for order, (node_id, node_type, title, widgets, node_links, (column, row)) in enumerate(nodes):
        spec = NODE_TYPES[node_type]
        link_of = {(link[3], link[4]): link[0] for link in links}
        values = [widgets[name] if name is not None else UI_ONLY_VALUES[node_type][index]
                  for index, name in enumerate(spec["widgets"])]
        ui_nodes.append({
            "id": node_id, "type": node_type, "title": title, "pos": [40 + 360 * column, 40 + 260 * row],
            "size": [320, 220], "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": link_of.get((node_id, slot))}
                       for slot, (name, kind) in enumerate(spec["links"].items()) if name in node_links],
            "outputs": [{"name": name, "type": kind, "links": out_links.get((node_id, slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(spec["outputs"])],
            "properties": {"Node name for S&R": node_type},
            "widgets_values": values,
        })
    return {"last_node_id": max(n[0] for n in nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def build(out: Path) -> List[Path]:
    """Write every workflow and input image under `out` (a workflows/ folder); returns the files."""
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    (out / "api").mkdir(parents=True, exist_ok=True)
    examples = examples_from_assets()
    for example in examples:
        for name in (example.source, example.target, example.query):
            shutil.copyfile(EXAMPLES / name, inputs / (INPUT_PREFIX + name))
    examples.append(render_edit_example(inputs))
    written = sorted(inputs.glob("*.png"))
    for example in examples:
        nodes = graph(example)
        for path, content in ((out / f"{example.name}.json", ui_format(nodes)), (out / "api" / f"{example.name}.json", api_format(nodes))):
            path.write_text(json.dumps(content, indent=2) + "\n")
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE, help="workflows folder to write (default: this one)")
    for path in build(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    main()
