"""Pack one 3DPW split into WebDataset shards (see pare.data.packing.pack).

python shards/pack_3dpw.py --root DIR --split {train,validation,test} [--out shards/out/3dpw/<split>]
    [--body-model PATH|standin] [--workers N] [--maxcount 1000] [--maxsize-mb 256] [--seed 0] [--strict]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pare.data.packing.pack import PACK_ERRORS, pack_3dpw, summary
from pare.data.packing.shard_writer import add_shard_arguments, shard_options
from pare.launch import run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="3DPW root (imageFiles/, sequenceFiles/)"
    )
    parser.add_argument("--split", required=True, choices=("train", "validation", "test"))
    parser.add_argument("--out", type=Path, help="output folder (default: shards/out/3dpw/<split>)")
    parser.add_argument(
        "--body-model",
        help="a folder of SMPL_{MALE,FEMALE,NEUTRAL} (real data: data/body_models/smpl) or "
        "'standin'; default: the one the root's body_model.json names (synthetic data)",
    )
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out or Path("shards/out/3dpw") / args.split
    print(summary(pack_3dpw(args.root, args.split, out, args.body_model, shard_options(args))))
    return 0


if __name__ == "__main__":
    run_entry_point(main, PACK_ERRORS)
