"""Generate synthetic datasets in the real on-disk formats (see pare.data.synthetic).

python shards/make_synthetic.py 3dpw --out data/synthetic/3dpw --sequences 3 --frames 60 --seed 0
python shards/make_synthetic.py 3dpw --out data/demo/3dpw --sequences 640 --frames 2 --split-ratio 3 1 0
python shards/make_synthetic.py mpii --out data/synthetic/mpii --images 200 --seed 0 [--eft]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pare.data.synthetic.mpii import SyntheticMPIIConfig, make_mpii
from pare.data.synthetic.threedpw import REAL_HEIGHT, REAL_WIDTH, Synthetic3DPWConfig, make_3dpw
from pare.launch import run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    p3 = sub.add_parser("3dpw", help="3DPW: imageFiles/ and sequenceFiles/{train,validation,test}/")
    p3.add_argument("--out", type=Path, required=True)
    p3.add_argument("--sequences", type=int, default=3)
    p3.add_argument("--frames", type=int, default=60)
    p3.add_argument("--seed", type=int, default=0)
    p3.add_argument(
        "--split-ratio",
        type=int,
        nargs=3,
        metavar=("TRAIN", "VAL", "TEST"),
        default=(1, 1, 1),
        help="sequences per split in each round-robin round (default 1 1 1)",
    )
    p3.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("WIDTH", "HEIGHT"),
        default=(REAL_WIDTH, REAL_HEIGHT),
        help="frame size (default: 3DPW's 1080x1920 portrait; smaller is faster)",
    )
    p3.add_argument(
        "--model-path", default="standin", help="body model: 'standin' or a SMPL folder"
    )
    p3.add_argument("--no-progress", action="store_true")
    pm = sub.add_parser("mpii", help="MPII: images/ and mpii_human_pose_v1_u12_1.mat")
    pm.add_argument("--out", type=Path, required=True)
    pm.add_argument("--images", type=int, default=100)
    pm.add_argument("--seed", type=int, default=0)
    pm.add_argument(
        "--image-scale", type=float, default=1.0, help="scale MPII-like frame sizes (e.g. 0.5)"
    )
    pm.add_argument(
        "--eft", action="store_true", help="also write EFT-format fits (MPII_ver01.json)"
    )
    pm.add_argument(
        "--model-path", default="standin", help="body model: 'standin' or a SMPL folder"
    )
    pm.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    if args.dataset == "3dpw":
        if args.sequences < 1 or args.frames < 1:
            parser.error("--sequences and --frames must be at least 1")
        if min(args.split_ratio) < 0 or sum(args.split_ratio) == 0:
            parser.error("--split-ratio takes three counts >= 0, not all zero")
        cfg = Synthetic3DPWConfig(
            args.sequences,
            args.frames,
            args.seed,
            *args.size,
            model_path=args.model_path,
            split_ratio=tuple(args.split_ratio),
        )
        paths = make_3dpw(args.out, cfg, progress=not args.no_progress)
        print(f"wrote {len(paths)} sequences to {args.out}", file=sys.stderr)
    else:
        if args.images < 1 or not 0 < args.image_scale <= 4:
            parser.error("--images must be at least 1 and --image-scale in (0, 4]")
        cfg = SyntheticMPIIConfig(
            args.images, args.seed, args.image_scale, args.eft, model_path=args.model_path
        )
        mat = make_mpii(args.out, cfg, progress=not args.no_progress)
        print(f"wrote {args.images} images and {mat}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # A missing or mis-ordered body model (e.g. part labels) is one line, not a traceback.
    run_entry_point(main, (FileNotFoundError, ValueError))
