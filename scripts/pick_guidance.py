"""The guidance whose eval-toyworld results are best over all their tasks: each task ranks the
guidances by its headline metric, and the lowest rank sum wins (ties: the lower guidance).

    python scripts/pick_guidance.py val-g1.0/results.json val-g1.5/results.json ...
"""

import json
import sys
from collections import defaultdict

from pdiff_core.evaluation.metrics import better


def main(paths: list) -> None:
    runs = [json.load(open(p)) for p in paths]
    ranks = defaultdict(int)
    tasks = {row["task"] for run in runs for row in run["rows"]}
    for task in tasks:
        scored = [(run["config"]["guidance"], row) for run in runs for row in run["rows"] if row["task"] == task]
        for guidance, row in scored:
            ranks[guidance] += sum(better(row["metric"], other["model"], row["model"]) for _, other in scored)
    print(min(ranks, key=lambda g: (ranks[g], g)))


if __name__ == "__main__":
    main(sys.argv[1:])
