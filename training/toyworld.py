"""Write the procedural toy world (`pdiff_core.toyworld`) as a pdiff-groups dataset.

python -m training.toyworld --out DIR --groups N [--resolution 64] [--seed S] [--maps depth,hed,...]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional

from pdiff_core.toyworld import ALL_MAPS, generate


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.toyworld", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="dataset folder (must be empty unless --overwrite)")
    p.add_argument("--groups", type=int, required=True, help="number of groups (captions)")
    p.add_argument("--items-per-group", type=int, default=4)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--maps", default=",".join(ALL_MAPS), help=f"comma-separated subset of {','.join(ALL_MAPS)}")
    p.add_argument("--supersample", type=int, default=2, help="anti-aliasing rays per pixel edge (1 = off)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("training.toyworld")
    start = time.perf_counter()
    try:
        generate(
            args.out,
            args.groups,
            items_per_group=args.items_per_group,
            resolution=args.resolution,
            seed=args.seed,
            maps=[m for m in args.maps.split(",") if m],
            overwrite=args.overwrite,
            progress=not args.no_progress,
            workers=args.workers,
            supersample=args.supersample,
        )
    except ValueError as e:
        log.error("%s", e)
        return 2
    seconds = time.perf_counter() - start
    scenes = args.groups * args.items_per_group
    log.info("%d scenes in %.1f s (%.0f scenes/minute)", scenes, seconds, scenes / seconds * 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
