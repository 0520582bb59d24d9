"""Pack one 3DPW split into WebDataset shards (see pare.data.pack and pare.data.shard_writer).

python shards/pack_3dpw.py --root DIR --split {train,validation,test} --out shards/3dpw/<split>
    [--body-model standin|PATH] [--workers N] [--maxcount 1000] [--maxsize-mb 256] [--seed 0] [--strict]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pare.data.pack import pack_3dpw, run_cli
from pare.data.shard_writer import add_shard_arguments, shard_options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="3DPW root (imageFiles/, sequenceFiles/)"
    )
    parser.add_argument("--split", required=True, choices=("train", "validation", "test"))
    parser.add_argument("--out", type=Path, help="output folder (default: shards/out/3dpw/<split>)")
    parser.add_argument(
        "--body-model",
        default="standin",
        help="'standin' or a folder of SMPL_{MALE,FEMALE,NEUTRAL}",
    )
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out or Path("shards/out/3dpw") / args.split
    return run_cli(pack_3dpw, args.root, args.split, out, args.body_model, shard_options(args))


if __name__ == "__main__":
    raise SystemExit(main())
