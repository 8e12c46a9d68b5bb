"""python -m training.data.synthetic --out DIR --split train --count N --size 512 [--pairs M] [--seed-base S]

Writes N scenes and M before/after pairs of the Synthetic Earth to DIR/<split>/ (GeoTIFF + JSON,
see writer.py), with a progress bar. Splits use disjoint seed ranges (splits.py); the same
arguments always write byte-identical files. Options: --gsd fixes the pixel size in metres
(drawn per scene otherwise), --workers runs several processes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.data.synthetic.splits import SPLITS
from training.data.synthetic.writer import write_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.data.synthetic", description=__doc__.split("\n\n")[1])
    parser.add_argument("--out", type=Path, required=True, help="output folder (the split goes in OUT/<split>)")
    parser.add_argument("--split", choices=sorted(SPLITS), default="train")
    parser.add_argument("--count", type=int, default=100, help="number of single scenes")
    parser.add_argument("--size", type=int, default=512, help="scene width and height in pixels")
    parser.add_argument("--pairs", type=int, default=0, help="number of before/after pairs")
    parser.add_argument("--seed-base", type=int, default=0, help="first seed offset within the split")
    parser.add_argument(
        "--gsd", type=float, default=None, help="pixel size in metres (default: drawn per scene, 0.1 to 2)"
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        index = write_split(
            args.out,
            args.split,
            args.count,
            args.size,
            args.pairs,
            args.seed_base,
            args.gsd,
            args.workers,
            progress=not args.quiet,
        )
    except ValueError as error:
        parser.error(str(error))
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
