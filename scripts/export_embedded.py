"""Copy a trained pipeline into the repository as the embedded default, in fp16 safetensors.

    python scripts/export_embedded.py runs/embedded-small/pipeline [--out pdiff_core/assets/pdiff-toyworld] [--overwrite]

The Markdown files and pictures of the output folder (the model card, its eval tables and demo grid)
are kept when the weights are replaced; the pipeline's prompt_diffusion.json (trained tasks,
guidance) comes along with the weights.
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from pdiff_core.defaults import DEFAULT_MODEL
from pdiff_core.model_info import MODEL_INFO_FILE
from pdiff_core.pipeline import PromptDiffusionPipeline

MAX_BYTES = 25 * 1024 * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", type=Path, help="a trained pipeline folder (train.output_dir/pipeline)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if (args.out / "model_index.json").exists() and not args.overwrite:
        raise SystemExit(f"{args.out} holds a model; pass --overwrite to replace it")
    pipe = PromptDiffusionPipeline.from_pretrained(str(args.pipeline), torch_dtype=torch.float16)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if (args.pipeline / MODEL_INFO_FILE).is_file():
            shutil.copy(args.pipeline / MODEL_INFO_FILE, Path(tmp) / MODEL_INFO_FILE)
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        if size > MAX_BYTES:
            raise SystemExit(
                f"the exported model is {size / 2**20:.1f} MiB, over the {MAX_BYTES / 2**20:.0f} MiB budget"
            )
        kept = {p.name: p.read_bytes() for pattern in ("*.md", "*.png") for p in args.out.glob(pattern)}
        shutil.rmtree(args.out, ignore_errors=True)
        shutil.copytree(tmp, args.out)
        for name, text in kept.items():
            (args.out / name).write_bytes(text)
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB, fp16)")


if __name__ == "__main__":
    main()
