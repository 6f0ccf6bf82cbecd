"""Run a ComfyUI workflow headless, in-process, against a given ComfyUI checkout.

    python scripts/run_workflow.py workflows/api/depth_to_image.json --comfyui ~/ComfyUI --cpu \\
        --image "query=my_depth.png" --prompt "a red sphere on a plain floor" --seed 7 --output out/

The workflow may be in API format (workflows/api/) or UI format (example_workflows/, as saved by the UI).
Nodes are addressed by title (`_meta.title` / the UI title) or id: `--image TITLE=PATH` sets a
LoadImage node's file, `--prompt` / `--negative` the texts of the nodes titled "positive prompt" /
"negative prompt", `--seed` every sampler's seed, `--set NODE.INPUT=VALUE` any input (VALUE as JSON,
else a string). The ComfyUI checkout is only read: inputs are copied into a temporary input folder and
outputs go to --output. This pack is loaded from ComfyUI's custom_nodes/ if installed there, else
from this repository. Exit status: 0 on success, 2 if the workflow does not validate, 1 if a node fails;
each failing node is reported with its id, type and error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

PACK_DIR = Path(__file__).resolve().parents[1]
PACK_INPUTS = PACK_DIR / "workflows" / "inputs"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
VIRTUAL_NODES = {"Note", "MarkdownNote"}
POSITIVE_TITLE, NEGATIVE_TITLE = "positive prompt", "negative prompt"

logger = logging.getLogger("run_workflow")


class WorkflowError(Exception):
    """A workflow that cannot be run as asked; the message says which node and why."""


class NodeFailure(Exception):
    """Nodes that raised while the workflow ran; the message names each node and its error."""


# ----------------------------------------------------------------------------- formats


def is_ui_format(workflow: Dict[str, Any]) -> bool:
    return isinstance(workflow.get("nodes"), list) and "links" in workflow


def ui_to_api(workflow: Dict[str, Any], input_types: Callable[[str], Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """API-format prompt of a UI-format workflow, as ComfyUI's frontend builds it. `input_types(class_type)`
    gives a node type's inputs ({"required": {name: [type, options]}, "optional": ...}), e.g. from
    `/object_info` or `INPUT_TYPES()`; None for an unknown type."""
    links = {link[0]: (link[1], link[2]) for link in workflow["links"]}
    prompt: Dict[str, Any] = {}
    for node in workflow["nodes"]:
        node_type = node["type"]
        if node_type in VIRTUAL_NODES or node.get("mode", 0) == 2:  # notes; muted nodes
            continue
        if node.get("mode", 0) != 0:
            raise WorkflowError(f"node {node['id']} ({node_type}) is bypassed; bypassed nodes are not supported here")
        definition = input_types(node_type)
        if definition is None:
            raise WorkflowError(
                f"node {node['id']}: unknown node type {node_type!r} (a custom node that is not installed?)"
            )
        inputs: Dict[str, Any] = {}
        linked = {i["name"]: links[i["link"]] for i in node.get("inputs", []) if i.get("link") is not None}
        values = list(node.get("widgets_values") or [])
        for name, spec in {**definition.get("required", {}), **definition.get("optional", {})}.items():
            kind, options = (
                (spec[0], spec[1] if len(spec) > 1 else {}) if isinstance(spec, (list, tuple)) else (spec, {})
            )
            if (isinstance(kind, list) or kind in WIDGET_TYPES) and not options.get("forceInput"):
                if values:
                    inputs[name] = values.pop(0)
                if options.get("control_after_generate") and values:
                    values.pop(0)
            if name in linked:
                source, slot = linked[name]
                inputs[name] = [str(source), slot]
        prompt[str(node["id"])] = {
            "inputs": inputs,
            "class_type": node_type,
            "_meta": {"title": node.get("title", node_type)},
        }
    return prompt


def read_workflow(path: Path) -> Dict[str, Any]:
    """The workflow in `path`, checked to be a UI- or API-format workflow."""
    if not path.is_file():
        raise WorkflowError(f"workflow file not found: {path}")
    try:
        workflow = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WorkflowError(f"{path} is not a JSON file: {err}") from err
    expected = (
        "a workflow: a JSON object, in UI format (with 'nodes' and 'links', as the UI saves it) or API format "
        "({node id: {'class_type': ..., 'inputs': {...}}})"
    )
    if not isinstance(workflow, dict) or not workflow:
        raise WorkflowError(f"{path} holds {type(workflow).__name__ if workflow else 'nothing'}, not {expected}")
    if not is_ui_format(workflow):
        for node_id, node in workflow.items():
            if not (
                isinstance(node, dict)
                and isinstance(node.get("class_type"), str)
                and isinstance(node.get("inputs"), dict)
            ):
                raise WorkflowError(
                    f"{path}: entry {node_id!r} is not a node with 'class_type' and 'inputs'; expected {expected}"
                )
    return workflow


def check_image_files(assignments: List[str]) -> None:
    for assignment in assignments:
        key, path = _split(assignment, "--image")
        if not Path(path).is_file():
            raise WorkflowError(f"--image {key}: file not found: {path}")


def find_nodes(prompt: Dict[str, Any], key: str) -> List[str]:
    """Ids of the nodes whose id or title is `key`."""
    found = [i for i, n in prompt.items() if i == key or n.get("_meta", {}).get("title") == key]
    if not found:
        titles = sorted({n.get("_meta", {}).get("title", "") for n in prompt.values()})
        raise WorkflowError(f"no node with id or title {key!r}; titles: {titles}")
    return found


def _split(assignment: str, option: str) -> tuple:
    if "=" not in assignment:
        raise WorkflowError(f"{option} {assignment!r}: expected NAME=VALUE")
    return tuple(assignment.split("=", 1))


def apply_overrides(prompt: Dict[str, Any], args: argparse.Namespace) -> None:
    for assignment in args.image:
        key, path = _split(assignment, "--image")
        for node_id in find_nodes(prompt, key):
            if "image" not in prompt[node_id]["inputs"]:
                raise WorkflowError(
                    f"--image {key}: node {node_id} ({prompt[node_id]['class_type']}) has no image input"
                )
            prompt[node_id]["inputs"]["image"] = str(Path(path).resolve())
    for title, text in ((POSITIVE_TITLE, args.prompt), (NEGATIVE_TITLE, args.negative)):
        if text is not None:
            for node_id in find_nodes(prompt, title):
                prompt[node_id]["inputs"]["text"] = text
    if args.seed is not None:
        seeded = [n for n in prompt.values() if "seed" in n["inputs"] or "noise_seed" in n["inputs"]]
        if not seeded:
            raise WorkflowError("--seed: the workflow has no node with a seed input")
        for node in seeded:
            node["inputs"]["seed" if "seed" in node["inputs"] else "noise_seed"] = args.seed
    for assignment in args.set:
        target, value = _split(assignment, "--set")
        if "." not in target:
            raise WorkflowError(f"--set {assignment!r}: expected NODE.INPUT=VALUE")
        key, name = target.rsplit(".", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        for node_id in find_nodes(prompt, key):
            prompt[node_id]["inputs"][name] = parsed


def stage_images(prompt: Dict[str, Any], input_dir: Path, comfy_input: Path) -> None:
    """Copy every image a LoadImage-like node names into `input_dir`: a path given on the command line,
    else a file of ComfyUI's input folder, else one of this pack's workflow inputs."""
    for node_id, node in prompt.items():
        value = node["inputs"].get("image")
        if not isinstance(value, str) or node["class_type"] not in ("LoadImage", "LoadImageMask"):
            continue
        candidates = [Path(value)] if os.path.isabs(value) else [comfy_input / value, PACK_INPUTS / value]
        source = next((c for c in candidates if c.is_file()), None)
        if source is None:
            raise WorkflowError(
                f"node {node_id} ({node['class_type']}): image {value!r} not found in {[str(c.parent) for c in candidates]}"
            )
        staged = f"{node_id}_{source.name}"  # one file per node: two inputs may share a name
        shutil.copyfile(source, input_dir / staged)
        node["inputs"]["image"] = staged


# ----------------------------------------------------------------------------- ComfyUI in-process


class _HeadlessServer:
    """What ComfyUI's executor needs of its server; it logs which node runs."""

    client_id = None  # the executor sets it from extra_data
    last_node_id = None
    sockets_metadata: Dict[str, Any] = {}

    def send_sync(self, event: str, data: Any, sid: Any = None) -> None:
        if event == "executing" and data.get("node") is not None:
            logger.info("running node %s", data["node"])
        elif event == "execution_error":
            logger.error("node %s (%s) failed: %s", data["node_id"], data["node_type"], data["exception_message"])


def boot_comfyui(
    comfy_dir: Path,
    cpu: bool,
    output_dir: Optional[Path] = None,
    input_dir: Optional[Path] = None,
    fp32_text_encoder: bool = False,
) -> Dict[str, Any]:
    """Import ComfyUI from `comfy_dir` with its nodes and custom nodes (this pack included): the one
    in-process boot, which the tests' harness calls too. Output and input folders default to ComfyUI's own."""
    if not (comfy_dir / "main.py").is_file() or not (comfy_dir / "nodes.py").is_file():
        raise WorkflowError(
            f"{comfy_dir} is not a ComfyUI checkout (no main.py / nodes.py); pass --comfyui or set COMFYUI_PATH"
        )
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = comfy_args.cpu or cpu
    comfy_args.fp32_text_enc = comfy_args.fp32_text_enc or fp32_text_encoder
    import utils.extra_config  # ComfyUI's utils package, imported before nodes.py as main.py does

    extra_paths = comfy_dir / "extra_model_paths.yaml"
    if extra_paths.is_file():
        utils.extra_config.load_extra_path_config(str(extra_paths))
    import execution
    import folder_paths
    import nodes

    if output_dir is not None:
        folder_paths.set_output_directory(str(output_dir))
        folder_paths.set_temp_directory(str(output_dir / "temp"))
    if input_dir is not None:
        folder_paths.set_input_directory(str(input_dir))
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    if "PDiff_ApplyPromptDiffusion" not in nodes.NODE_CLASS_MAPPINGS:
        if not asyncio.run(nodes.load_custom_node(str(PACK_DIR), set(nodes.NODE_CLASS_MAPPINGS))):
            raise WorkflowError(f"could not load the Prompt Diffusion node pack from {PACK_DIR}; see the log above")
    return {"nodes": nodes, "execution": execution, "folder_paths": folder_paths}


def input_types_of(nodes_module: Any) -> Callable[[str], Optional[Dict[str, Any]]]:
    def input_types(class_type: str) -> Optional[Dict[str, Any]]:
        node_class = nodes_module.NODE_CLASS_MAPPINGS.get(class_type)
        return None if node_class is None else node_class.INPUT_TYPES()

    return input_types


def validation_report(error: Dict[str, Any], node_errors: Dict[str, Any]) -> str:
    lines = [f"the workflow does not validate: {error.get('message', error)}"]
    for node_id, info in node_errors.items():
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def run(prompt: Dict[str, Any], comfy: Dict[str, Any]) -> Dict[str, Any]:
    """Validate and execute `prompt`; returns ComfyUI's history entry (outputs by node id)."""
    execution = comfy["execution"]
    prompt_id = str(uuid.uuid4())
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid:
        raise WorkflowError(validation_report(error, node_errors))
    executor = execution.PromptExecutor(_HeadlessServer(), cache_type=execution.CacheType.CLASSIC)
    executor.execute(prompt, prompt_id, {"client_id": "headless"}, outputs)
    if not executor.success:
        failures = [data for event, data in executor.status_messages if event == "execution_error"]
        raise NodeFailure(
            "\n".join(
                f"node {f['node_id']} ({f['node_type']}) failed: {f['exception_type']}: {f['exception_message']}"
                for f in failures
            )
            or "execution failed"
        )
    return executor.history_result


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", type=Path, help="workflow JSON, API or UI format")
    parser.add_argument(
        "--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout (default: $COMFYUI_PATH)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("outputs"), help="folder for the outputs (default: outputs/)"
    )
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (ComfyUI's --cpu)")
    parser.add_argument(
        "--image", action="append", default=[], metavar="TITLE=PATH", help="image file of a LoadImage node"
    )
    parser.add_argument("--prompt", help=f"text of the node titled {POSITIVE_TITLE!r}")
    parser.add_argument("--negative", help=f"text of the node titled {NEGATIVE_TITLE!r}")
    parser.add_argument("--seed", type=int, help="seed of every sampler")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NODE.INPUT=VALUE", help="any input (VALUE as JSON or a string)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        # Everything that can be checked without ComfyUI is, before its ~10 s boot.
        if args.comfyui is None:
            raise WorkflowError("no ComfyUI checkout: pass --comfyui PATH or set COMFYUI_PATH")
        workflow = read_workflow(args.workflow)
        check_image_files(args.image)
        args.output.mkdir(parents=True, exist_ok=True)
        comfy_dir = args.comfyui.resolve()
        with tempfile.TemporaryDirectory(prefix="pdiff_inputs_") as input_dir:
            comfy = boot_comfyui(comfy_dir, args.cpu, args.output.resolve(), Path(input_dir))
            prompt = ui_to_api(workflow, input_types_of(comfy["nodes"])) if is_ui_format(workflow) else workflow
            apply_overrides(prompt, args)
            stage_images(prompt, Path(input_dir), comfy_dir / "input")
            history = run(prompt, comfy)
    except WorkflowError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NodeFailure as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    files = {"output": [], "temp": []}  # SaveImage's files; previews (PreviewImage, the side-by-side node)
    for output in history["outputs"].values():
        for image in output.get("images", []):
            if image.get("type") in files:
                folder = args.output if image["type"] == "output" else args.output / "temp"
                files[image["type"]].append(str(folder / image.get("subfolder", "") / image["filename"]))
    summary = {"outputs": history["outputs"], "files": files["output"], "previews": files["temp"]}
    (args.output / "outputs.json").write_text(json.dumps(summary, indent=2))
    for path in files["output"] + files["temp"]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
