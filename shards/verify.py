"""Re-read every shard of a packed split and check it against manifest.json.

    python shards/verify.py shards/out/3dpw/train [more split folders ...]

Exits non-zero on any mismatch, naming the shard and sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pare.data.packing.verify import verify_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args(argv)
    failed = False
    for folder in args.folders:
        checked, problems = verify_split(folder)
        for problem in problems:
            print(f"{folder}: {problem}", file=sys.stderr)
        status = "FAILED" if problems else "ok"
        print(f"{folder}: {checked} samples checked, {len(problems)} problems: {status}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
