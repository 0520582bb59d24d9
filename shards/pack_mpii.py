"""Pack MPII's train or val people into WebDataset shards (see pare.data.packing.pack).

python shards/pack_mpii.py --root DIR --split {train,val} [--out shards/out/mpii/<split>]
    [--eft MPII_ver01.json] [--min-joints 6] [--val-list FILE] [--body-model PATH|standin]
    [--workers N] [--strict]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pare.data.packing.pack import PACK_ERRORS, pack_mpii, summary
from pare.data.packing.shard_writer import add_shard_arguments, shard_options
from pare.launch import run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root", type=Path, required=True, help="MPII root (images/, mpii_human_pose_v1_u12_1.mat)"
    )
    parser.add_argument("--split", required=True, choices=("train", "val"))
    parser.add_argument("--out", type=Path, help="output folder (default: shards/out/mpii/<split>)")
    parser.add_argument(
        "--eft",
        type=Path,
        help="EFT fits (MPII_ver01.json): adds pseudo-GT SMPL and part labels; each fit joins "
        "the person its keypoints match (annotId is not used)",
    )
    parser.add_argument(
        "--min-joints",
        type=int,
        default=6,
        help="skip training people with fewer annotated joints (validation people are all kept)",
    )
    parser.add_argument(
        "--val-list",
        type=Path,
        help="validation people: HRNet's valid.json, or text lines 'IMAGE RECT' (0-based "
        "annorect index) or 'IMAGE' (everyone in it); default: every 10th image",
    )
    parser.add_argument(
        "--body-model",
        help="an SMPL folder (real data: data/body_models/smpl) or 'standin'; default: the one "
        "the root's body_model.json names (synthetic data)",
    )
    add_shard_arguments(parser)
    args = parser.parse_args(argv)
    out = args.out or Path("shards/out/mpii") / args.split
    result = pack_mpii(
        args.root,
        args.split,
        out,
        args.body_model,
        shard_options(args),
        args.eft,
        args.min_joints,
        args.val_list,
    )
    print(summary(result))
    return 0


if __name__ == "__main__":
    run_entry_point(main, PACK_ERRORS)
