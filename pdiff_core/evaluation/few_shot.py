"""`pdiff eval-toyworld --shots 1,2,4`: one toy-world evaluation per number of example pairs (and
per way of combining them), side by side in one table, to test whether more pairs help.

Each setting is an ordinary `eval-toyworld` run in its own subfolder of `--out` (resumable, with its
own results.md); `few-shot.md` and `few-shot.json` beside them hold the comparison.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..shots import check_combine
from .metrics import better
from .runner import config_dict, load_model, model_path, write_json
from .toyworld import (
    DIGITS,
    METRIC_NAMES,
    ToyworldEvalConfig,
    ToyworldRow,
    run_toyworld_eval,
    with_model_defaults,
)

logger = logging.getLogger(__name__)

Setting = Tuple[int, Optional[str]]  # (shots, combine); combine is None for one shot


def settings(shots: Sequence[int], combines: Sequence[str]) -> List[Setting]:
    if any(k < 1 for k in shots):
        raise ValueError(f"--shots must be at least 1, got {list(shots)}")
    for mode in combines:
        check_combine(mode)
    out: List[Setting] = []
    for k in dict.fromkeys(shots):
        out += [(1, None)] if k == 1 else [(k, mode) for mode in dict.fromkeys(combines)]
    return out


def setting_name(setting: Setting) -> str:
    shots, combine = setting
    return f"shots-{shots}" if combine is None else f"shots-{shots}-{combine}"


def run_few_shot_table(
    config: ToyworldEvalConfig, shots: Sequence[int], combines: Sequence[str]
) -> Dict[Setting, List[ToyworldRow]]:
    """Run every setting into `config.out/<setting>/` with one loaded pipeline; write the table."""
    # Resolved once, so that the table states the guidance and tasks that ran.
    config = with_model_defaults(config, model_path(config))
    chosen = settings(shots, combines)
    pipe = load_model(config)
    results = {}
    for setting in chosen:
        k, combine = setting
        sub = replace(
            config, out=Path(config.out) / setting_name(setting), shots=k, shot_combine=combine or config.shot_combine
        )
        logger.info("few-shot table: %s", setting_name(setting))
        results[setting] = run_toyworld_eval(sub, pipe)
    markdown = format_few_shot_table(results, config)
    Path(config.out, "few-shot.md").write_text(markdown)
    write_json(
        Path(config.out, "few-shot.json"),
        {
            "config": config_dict(config),
            "settings": {setting_name(s): [asdict(r) for r in rows] for s, rows in results.items()},
        },
    )
    logger.info("few-shot table in %s\n%s", Path(config.out, "few-shot.md"), markdown)
    return results


def format_few_shot_table(results: Dict[Setting, List[ToyworldRow]], config: ToyworldEvalConfig) -> str:
    """Rows: task and metric; columns: both baselines, then the model at each setting (best in bold)."""
    chosen = list(results)
    first = results[chosen[0]]
    header = [f"K={k}" if c is None else f"K={k} {c}" for k, c in chosen]
    lines = [
        f"Few-shot on the held-out toy world: {config.steps} steps, guidance {config.guidance}, seed {config.seed}, "
        f"{first[0].samples if first else 0} samples per task. Shot 1 is item p of the query's own group (as one-shot "
        "runs); shots 2..K are item p of the K - 1 next groups: the same task on other scenes. The example-target "
        "baseline returns shot 1's target. 'residuals': one control pass per pair, residuals averaged; 'embedding': "
        "the pairs' hint embeddings averaged, one pass.",
        "",
        "| task | seen/unseen | metric | example-target baseline | query baseline | " + " | ".join(header) + " |",
        "|---" * (5 + len(header)) + "|",
    ]
    for index, row in enumerate(first):
        values = [results[s][index].model for s in chosen]
        best = values[0]
        for v in values[1:]:
            best = v if better(row.metric, v, best) else best
        d = DIGITS[row.metric]
        cells = [f"**{v:.{d}f}**" if v == best and len(values) > 1 else f"{v:.{d}f}" for v in values]
        lines.append(
            f"| {row.task} | {'seen' if row.seen else 'unseen'} | {METRIC_NAMES[row.metric]} | "
            f"{row.example_target:.{d}f} | {row.query:.{d}f} | " + " | ".join(cells) + " |"
        )
    lines += ["", *summary_lines(results)]
    return "\n".join(lines) + "\n"


def summary_lines(results: Dict[Setting, List[ToyworldRow]]) -> List[str]:
    """For each setting after the first: on how many rows it beats the first, for seen and unseen tasks."""
    chosen = list(results)
    base = results[chosen[0]]
    lines = []
    for setting in chosen[1:]:
        counts = {}
        for seen in (True, False):
            pairs = [(r, b) for r, b in zip(results[setting], base) if r.seen == seen]
            counts[seen] = (sum(better(r.metric, r.model, b.model) for r, b in pairs), len(pairs))
        k, combine = setting
        lines.append(
            f"- K={k} {combine or ''} beats {setting_name(chosen[0]).replace('shots-', 'K=')} on "
            f"{counts[True][0]} of {counts[True][1]} seen rows and {counts[False][0]} of {counts[False][1]} unseen rows."
        )
    return lines
