"""Packing speed on full-size synthetic 3DPW: samples per second per process, bytes per sample.

    python benchmarks/bench_pack.py [--sequences 4] [--frames 12] [--out benchmarks/results/pack.json]

Generates 1080x1920 synthetic 3DPW (not timed), then packs its train split with one process,
pinned to one thread (JPEG decode, SMPL, part-label render, JPEG/PNG/npz encode, tar writing).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from pare.data.packing.pack import pack_3dpw  # noqa: E402
from pare.data.packing.shard_writer import ShardOptions  # noqa: E402
from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw  # noqa: E402
from pare.io_utils import write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sequences", type=int, default=3, help="sequences generated (train gets every third)"
    )
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pack.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "3dpw"
        make_3dpw(
            raw,
            Synthetic3DPWConfig(sequences=args.sequences, frames=args.frames, seed=0),
            progress=False,
        )
        pack_3dpw(
            raw, "train", Path(tmp) / "warm", "standin", ShardOptions(progress=False)
        )  # builds caches
        start = time.perf_counter()
        result = pack_3dpw(
            raw, "train", Path(tmp) / "shards", "standin", ShardOptions(progress=False)
        )
        seconds = time.perf_counter() - start
        manifest = json.loads(result["manifest"].read_text())
    samples = manifest["num_samples"]
    row = {
        "frame_size": "1080x1920",
        "samples": samples,
        "seconds": seconds,
        "samples_per_second_per_process": samples / seconds,
        "shard_bytes_per_sample": manifest["num_bytes"] / max(samples, 1),
    }
    print(f"{'pack synthetic 3DPW (1 process, 1 thread)':<44}{'samples/s':>10}{'KiB/sample':>12}")
    print(
        f"{'1080x1920 frames, ' + str(samples) + ' samples':<44}{row['samples_per_second_per_process']:>10.2f}"
        f"{row['shard_bytes_per_sample'] / 1024:>12.1f}"
    )
    print(f"wrote {write_json_atomic(args.out, {'benchmark': 'pack', **row}, indent=2)}")
    return row


if __name__ == "__main__":
    main()
