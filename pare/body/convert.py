"""Convert official SMPL ``.pkl`` files to clean ``.npz`` files (no chumpy, no pickle).

pare-convert-smpl SMPL_NEUTRAL.pkl SMPL_MALE.pkl SMPL_FEMALE.pkl [--out-dir DIR]
python -m pare.body.convert basicModel_neutral_lbs_10_207_0_v1.0.0.pkl --out SMPL_NEUTRAL.npz
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

from pare.body.smpl_io import read_smpl_file, write_npz


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pare-convert-smpl", description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="official SMPL .pkl files")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--out-dir", type=Path, help="folder for the .npz files (default: beside each input)"
    )
    where.add_argument("--out", type=Path, help="output file, for a single input")
    args = parser.parse_args(argv)
    if args.out and len(args.inputs) != 1:
        parser.error("--out takes exactly one input; use --out-dir for several")
    for src in args.inputs:
        try:
            data = read_smpl_file(src)
        except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        dst = args.out or (args.out_dir or src.parent) / f"{src.stem}.npz"
        write_npz(data, dst)
        print(f"{src} -> {dst} ({len(data)} arrays: {', '.join(sorted(data))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
