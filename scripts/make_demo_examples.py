"""Write the bundled demo examples (pdiff_core/assets/examples/) from a held-out toy-world dataset.

    python -m training.toyworld --out /tmp/toyworld-heldout --groups 100 --resolution 64 --seed 100000
    python scripts/make_demo_examples.py /tmp/toyworld-heldout

Each task takes its own group: the example pair from item 0, the query and exact answer from item 1.
"""

import argparse
import json
import shutil
from pathlib import Path

from pdiff_core.data import DatasetIndex, map_prompt, parse_task
from pdiff_core.demo import EXAMPLES_DIR

SEEN = ("depth", "hed", "seg", "inv_depth", "inv_hed", "inv_seg")
UNSEEN = ("normal", "albedo", "inv_normal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a held-out pdiff-groups dataset")
    parser.add_argument("--out", type=Path, default=EXAMPLES_DIR)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise SystemExit(f"{args.out} is not empty; pass --overwrite to replace it")
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    index = DatasetIndex.load(args.dataset)
    entries = []
    for number, name in enumerate(SEEN + UNSEEN):
        task = parse_task(name, index.maps)
        group = index.groups[number]
        example, query = group.items[0], group.items[1]
        files = {}
        for key, (item, side) in {
            "example_source": (example, 0),
            "example_target": (example, 1),
            "query": (query, 0),
            "truth": (query, 1),
        }.items():
            source = task.paths(item)[side]
            files[key] = f"{name}_{key}.png"
            shutil.copyfile(source, args.out / files[key])
        prompt = group.caption if task.inverse else map_prompt(task.map)
        entries.append({"task": name, "prompt": prompt, "seen": name in SEEN, "group": group.id, **files})
    (args.out / "examples.json").write_text(
        json.dumps({"source": str(args.dataset.name), "examples": entries}, indent=2)
    )
    print(f"wrote {len(entries)} examples to {args.out}")


if __name__ == "__main__":
    main()
