"""Train the embedded default `pdiff-toyworld` in one process: render the toy world once, train the
VAE on it, then the diffusion model on that VAE, with the whole dataset in accelerator memory.

    python scripts/train_embedded.py --out runs/embedded [--vae-minutes 1.25] [--total-minutes 6.5] \\
        [--override key=value ...]      # applied to both stage configs

The stage configs are `training/configs/embedded_toyworld_vae.yaml` and `embedded_toyworld.yaml`;
each stage writes `train_report.json` (steps, samples, seconds, losses, the pair's effect on the loss)
into its folder, and the VAE's held-out reconstruction PSNR goes into `vae_report.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pdiff_core.evaluation.toyworld import HELDOUT_SEED  # noqa: E402
from training.config import add_override_argument, load_config  # noqa: E402
from training.inmemory import render_toyworld, run, vae_psnr  # noqa: E402

CONFIGS = ROOT / "training" / "configs"
HELDOUT_VAE_GROUPS = 100
# Encoding the latents, the pair-effect checks and saving, measured on the small preset.
SAVE_MARGIN_MINUTES = 0.75


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (vae/ and diffusion/ go inside)")
    parser.add_argument("--vae-minutes", type=float, default=None, help="time budget of the VAE stage")
    parser.add_argument(
        "--total-minutes",
        type=float,
        default=None,
        help="wall-clock budget of the whole run: the diffusion stage gets what the data, the VAE "
        "and a margin for encoding and saving leave of it",
    )
    parser.add_argument(
        "--heldout-groups",
        type=int,
        default=HELDOUT_VAE_GROUPS,
        help="held-out groups for the VAE's reconstruction PSNR",
    )
    add_override_argument(
        parser, "applied to both stage configs, e.g. data.toyworld_groups=16 model.preset=tiny for a dry run"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    vae_overrides = [f"train.output_dir={args.out / 'vae'}"]
    if args.vae_minutes is not None:
        vae_overrides.append(f"train.time_budget_minutes={args.vae_minutes}")
    vae_config = load_config(CONFIGS / "embedded_toyworld_vae.yaml", vae_overrides + args.override)
    diffusion_overrides = [f"train.output_dir={args.out / 'diffusion'}", f"model.vae={args.out / 'vae' / 'vae'}"]
    diffusion_config = load_config(CONFIGS / "embedded_toyworld.yaml", diffusion_overrides + args.override)

    started = time.perf_counter()
    d = diffusion_config.data
    data = render_toyworld(d.toyworld_groups, d.toyworld_seed, d.resolution)
    vae_folder = run(vae_config, data)

    # The VAE on held-out scenes (the eval-toyworld seed): every image and every map kind.
    from diffusers import AutoencoderKL

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    heldout = render_toyworld(args.heldout_groups, HELDOUT_SEED, d.resolution).to(device)
    vae = AutoencoderKL.from_pretrained(vae_folder).to(device).eval()
    report = {
        "heldout_groups": args.heldout_groups,
        "seed": HELDOUT_SEED,
        "psnr_images": vae_psnr(vae, heldout.pixels[:, 0]),
        "psnr_all_kinds": vae_psnr(vae, heldout.pixels.flatten(0, 1)),
        "psnr_per_kind": {k: vae_psnr(vae, heldout.pixels[:, i]) for i, k in enumerate(heldout.kinds)},
    }
    (args.out / "vae_report.json").write_text(json.dumps(report, indent=2) + "\n")
    logging.info(
        "VAE held-out PSNR: images %.2f dB, all kinds %.2f dB", report["psnr_images"], report["psnr_all_kinds"]
    )
    del heldout, vae

    if args.total_minutes is not None:
        left = args.total_minutes - (time.perf_counter() - started) / 60 - SAVE_MARGIN_MINUTES
        if left <= 0:
            raise SystemExit(f"--total-minutes {args.total_minutes}: nothing left for the diffusion stage")
        diffusion_config.train.time_budget_minutes = left
        logging.info("diffusion stage budget: %.2f minutes", left)
    run(diffusion_config, data)


if __name__ == "__main__":
    main()
