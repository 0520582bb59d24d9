"""Packing speed on full-size synthetic 3DPW: samples per second per process, bytes per sample,
for each stored-crop cap (``--stored-crop-max``), with repeats interleaved.

    python benchmarks/bench_pack.py [--sequences 3] [--frames 12] [--caps 320 600] [--repeats 2]
        [--out benchmarks/results/pack.json]

Generates 1080x1920 synthetic 3DPW (not timed), then packs its train split with one process,
pinned to one thread (JPEG decode, SMPL, part-label render, JPEG/PNG/npz encode, tar writing),
once per cap and repeat in the order A B A B ... so that machine load hits every cap alike.
Reports the minimum and median time of each, bytes per sample, what 100k samples cost on disk,
and each cap's ratio to the first.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from pare.data.packing.pack import pack_3dpw  # noqa: E402
from pare.data.packing.samples import STORED_CROP_MAX  # noqa: E402
from pare.data.packing.shard_writer import ShardOptions  # noqa: E402
from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw  # noqa: E402
from pare.io_utils import write_json_atomic  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sequences", type=int, default=3, help="sequences generated (train gets every third)"
    )
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--caps", type=int, nargs="+", default=[320, STORED_CROP_MAX])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pack.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seconds: dict[int, list[float]] = {cap: [] for cap in args.caps}
    size: dict[int, tuple[int, int]] = {}
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
        for repeat in range(args.repeats):
            for cap in args.caps:  # interleaved: A B A B
                out = Path(tmp) / f"shards-{cap}-{repeat}"
                options = ShardOptions(progress=False, stored_crop_max=cap)
                start = time.perf_counter()
                result = pack_3dpw(raw, "train", out, "standin", options)
                seconds[cap].append(time.perf_counter() - start)
                manifest = json.loads(result["manifest"].read_text())
                size[cap] = (manifest["num_samples"], manifest["num_bytes"])
    rows = {}
    for cap in args.caps:
        samples, nbytes = size[cap]
        rows[str(cap)] = {
            "samples": samples,
            "seconds_min": min(seconds[cap]),
            "seconds_median": statistics.median(seconds[cap]),
            "samples_per_second_per_process": samples / statistics.median(seconds[cap]),
            "shard_bytes_per_sample": nbytes / max(samples, 1),
            "gb_per_100k_samples": nbytes / max(samples, 1) * 1e5 / 1e9,
        }
    first = rows[str(args.caps[0])]
    print(f"pack synthetic 3DPW, 1080x1920 frames, {first['samples']} samples, 1 process, 1 thread")
    header = f"{'stored crop <= px':<18}{'s min':>8}{'s median':>10}{'samples/s':>11}"
    print(header + f"{'KiB/sample':>12}{'GB/100k':>9}{'time ratio':>12}{'bytes ratio':>13}")
    for cap, row in rows.items():
        time_ratio = row["seconds_median"] / first["seconds_median"]
        bytes_ratio = row["shard_bytes_per_sample"] / first["shard_bytes_per_sample"]
        row["time_ratio_to_first"], row["bytes_ratio_to_first"] = time_ratio, bytes_ratio
        print(
            f"{cap:<18}{row['seconds_min']:>8.2f}{row['seconds_median']:>10.2f}"
            f"{row['samples_per_second_per_process']:>11.2f}"
            f"{row['shard_bytes_per_sample'] / 1024:>12.1f}{row['gb_per_100k_samples']:>9.2f}"
            f"{time_ratio:>12.2f}{bytes_ratio:>13.2f}"
        )
    default = rows.get(str(STORED_CROP_MAX), first)
    report = {
        "benchmark": "pack",
        "frame_size": "1080x1920",
        "repeats": args.repeats,
        "caps": rows,
        # The default cap's figures at the top level (what the README quotes).
        "samples": default["samples"],
        "samples_per_second_per_process": default["samples_per_second_per_process"],
        "shard_bytes_per_sample": default["shard_bytes_per_sample"],
    }
    print(f"wrote {write_json_atomic(args.out, report, indent=2)}")
    return report


if __name__ == "__main__":
    main()
