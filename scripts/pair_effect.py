"""How much the example pair moves a trained model's loss, on held-out toy-world draws.

    python scripts/pair_effect.py [--model FOLDER] [--groups 64] [--samples 512] [--prompts map_name|caption|mixed]

Fixed draws, noise and timesteps; the loss with the true pair, with the pair of another trained task
drawn from the same two images, and with no pair (`training.inmemory.pair_effect`). A model that
reads the example pair does worse with another task's pair than with the true one. For scale, the
loss with the query of another draw of the same task: what reading the query is worth.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import DDPMScheduler  # noqa: E402

from pdiff_core.defaults import DEFAULT_MODEL  # noqa: E402
from pdiff_core.evaluation.toyworld import HELDOUT_SEED  # noqa: E402
from pdiff_core.model_info import read_model_info  # noqa: E402
from pdiff_core.pipeline import PromptDiffusionPipeline  # noqa: E402
from training.config import load_config  # noqa: E402
from training.inmemory import DiffusionBatches, encode_all, pair_effect, render_toyworld  # noqa: E402
from training.train import DiffusionModel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--groups", type=int, default=64)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--prompts", choices=["map_name", "caption", "mixed"], default="map_name")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    pipe = PromptDiffusionPipeline.from_pretrained(str(args.model))
    tasks = read_model_info(args.model).trained_tasks
    config = load_config(
        None,
        [
            "data.root=heldout",
            f"data.tasks={','.join(tasks)}",
            f"data.forward_prompt={args.prompts}",
            "model.preset=tiny",
            "data.flip_prob=0",
        ],
    )
    data = render_toyworld(args.groups, HELDOUT_SEED, pipe.unet.config.sample_size * 8)
    batches = DiffusionBatches(config, data, encode_all(pipe.vae, data), pipe.tokenizer, torch.device("cpu"))
    model = DiffusionModel(pipe.text_encoder, pipe.controlnet, pipe.unet)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    result = pair_effect(model, scheduler, batches, torch.device("cpu"), samples=args.samples)
    print(json.dumps({"model": str(args.model), "tasks": tasks, "prompts": args.prompts, **result}, indent=2))


if __name__ == "__main__":
    main()
