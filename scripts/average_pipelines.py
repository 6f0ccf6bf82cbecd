"""Average the weights of pipelines trained from the same starting point (a "model soup", Wortsman et
al. 2022): runs that continued one model side by side, on different scenes, become one model.

    python scripts/average_pipelines.py runs/continue-d/pipeline runs/continue-e/pipeline --out runs/soup

Every weight of the UNet, ControlNet, text encoder and VAE is the plain mean over the pipelines; the
scheduler, tokenizer and prompt_diffusion.json are the first pipeline's. The pipelines must share every
component's config.
"""

import argparse
import shutil
import sys
from pathlib import Path
from typing import List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pdiff_core.model_info import MODEL_INFO_FILE  # noqa: E402
from pdiff_core.pipeline import PromptDiffusionPipeline  # noqa: E402

AVERAGED = ("unet", "controlnet", "text_encoder", "vae")


def _config(module: torch.nn.Module) -> dict:
    """A component's architecture, without the bookkeeping keys ("_name_or_path", versions)."""
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return {k: v for k, v in config.items() if not k.startswith("_") and k != "transformers_version"}


def average_pipelines(folders: List[Path], out: Path) -> Path:
    """Write the mean of `folders`' weights to `out` (a new folder); returns it."""
    if len(folders) < 2:
        raise ValueError(f"give two or more pipeline folders to average, got {len(folders)}")
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose another --out or remove it")
    pipes = [PromptDiffusionPipeline.from_pretrained(str(f), torch_dtype=torch.float32) for f in folders]
    first = pipes[0]
    for name in AVERAGED:
        modules = [getattr(p, name) for p in pipes]
        for folder, module in zip(folders[1:], modules[1:]):
            if _config(module) != _config(modules[0]):
                raise ValueError(
                    f"{folder}: {name}'s config differs from {folders[0]}'s; only one model's runs average"
                )
        states = [m.state_dict() for m in modules]
        mean = {
            key: torch.stack([s[key] for s in states]).mean(dim=0) if value.is_floating_point() else value
            for key, value in states[0].items()
        }
        modules[0].load_state_dict(mean)
    first.save_pretrained(str(out), safe_serialization=True)
    if (folders[0] / MODEL_INFO_FILE).is_file():
        shutil.copy(folders[0] / MODEL_INFO_FILE, out / MODEL_INFO_FILE)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipelines", type=Path, nargs="+", help="pipeline folders (train.output_dir/pipeline)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        print(f"wrote {average_pipelines(args.pipelines, args.out)}")
    except (ValueError, FileExistsError) as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
