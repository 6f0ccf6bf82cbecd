"""Evaluation: `pdiff eval` (the paper's FID / RMSE protocol) and `pdiff eval-toyworld` (every task
on held-out toy-world scenes against exact maps and two no-model baselines).

Needs the `eval` extra (torchmetrics, torch-fidelity, scipy, scikit-image).
"""

from .metrics import load_inception, make_fid, psnr, rmse, ssim
from .paper import PAPER_RESULTS, PaperEvalConfig, run_paper_eval
from .runner import EvalConfig
from .toyworld import ToyworldEvalConfig, heldout_dataset, run_toyworld_eval

__all__ = [
    "PAPER_RESULTS",
    "EvalConfig",
    "PaperEvalConfig",
    "ToyworldEvalConfig",
    "heldout_dataset",
    "load_inception",
    "make_fid",
    "psnr",
    "rmse",
    "run_paper_eval",
    "run_toyworld_eval",
    "ssim",
]
