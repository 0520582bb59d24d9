"""Write SPIN-format mean parameters (``pose`` 24 x 6D, ``shape``, ``cam``) from training shards:
per joint the rotation nearest to the mean rotation matrix, the mean betas, camera [0.9, 0, 0].

    python train/mean_params.py --out data/demo/mean_params.npz shards/out/demo/3dpw/train ...

Use it with ``model.mean_params=FILE`` to start predictions from the data's mean pose, as SPIN
and PARE start from SPIN's ``smpl_mean_params.npz`` (which works here as well).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pare.data.streaming.stream import eval_loader, shard_urls
from pare.evaluation import mean_training_pose
from pare.geometry import matrix_to_rot6d
from pare.io_utils import atomic_open
from pare.launch import run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", nargs="+", help="packed split folders (or manifests, URLs)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    urls = [u for path in args.shards for u in shard_urls(path)]
    rotmat, betas = mean_training_pose(eval_loader(urls, batch_size=32))
    arrays = {
        "pose": matrix_to_rot6d(rotmat).flatten().numpy().astype(np.float64),
        "shape": betas.numpy().astype(np.float64),
        "cam": np.array([0.9, 0.0, 0.0]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(args.out, "wb") as f:
        np.savez(f, **arrays)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_entry_point(main, (FileNotFoundError, ValueError))
