"""Loader speed, side by side on the same full-size synthetic 3DPW, one process (one core):

  (a) this pipeline: shard stream, decode, PARE augmentation, crop to 224, batch;
  (b) decode only: the stored crops, simplejpeg, nothing else (the ceiling for (a));
  (c) PARE-style per-file loading: decode the full 1080x1920 frame, then crop and resize to 224.
  (d) reading only: shard members grouped into samples, nothing decoded (what (a) pays before
      it decodes anything; it explains how far (a) can get towards (b)).

    python benchmarks/bench_loader.py [--frames 16] [--batches 20] [--out benchmarks/results/loader.json]

Goals: (a) >= 5 x (c) and (a) >= 60% of (b).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import simplejpeg  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pare.config import load_config  # noqa: E402
from pare.data.packing.pack import pack_3dpw  # noqa: E402
from pare.data.packing.shard_writer import ShardOptions  # noqa: E402
from pare.data.streaming.stream import ShardSource, shard_urls, train_loader  # noqa: E402
from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw  # noqa: E402
from pare.geometry import crop_matrix  # noqa: E402
from pare.io_utils import write_json_atomic  # noqa: E402


def pipeline_rate(urls: list[str], batches: int) -> float:
    cfg = load_config(
        [], ["data.batch_size=16", "data.num_workers=0", "data.shuffle_buffer=100"]
    ).data
    loader = train_loader([ShardSource(urls)], cfg, steps_per_epoch=batches + 2)
    it = iter(loader)
    next(it), next(it)  # warm-up (shuffle buffer fill)
    start = time.perf_counter()
    n = sum(len(b["__key__"]) for b in it)
    return n / (time.perf_counter() - start)


def read_only_rate(urls: list[str]) -> float:
    import webdataset as wds

    start = time.perf_counter()
    n = sum(1 for _ in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()))
    return n / (time.perf_counter() - start)


def decode_only_rate(urls: list[str]) -> tuple[float, list[dict]]:
    members = []
    for url in urls:
        with tarfile.open(url) as tar:
            samples: dict[str, dict] = {}
            for m in tar:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(m).read()
            members += samples.values()
    start = time.perf_counter()
    for sample in members:
        simplejpeg.decode_jpeg(sample["jpg"])
    return len(members) / (time.perf_counter() - start), members


def per_file_rate(root: Path, members: list[dict]) -> float:
    """PARE's dataset: read the frame from disk, decode it whole, crop the box, resize to 224."""
    start = time.perf_counter()
    for sample in members:
        info = json.loads(sample["json"])
        with np.load(__import__("io").BytesIO(sample["npz"])) as z:
            center, scale = z["box_center"], float(z["box_scale"])
        image = np.asarray(Image.open(root / info["image"]).convert("RGB"))
        m = crop_matrix(
            torch.tensor(center[None], dtype=torch.float64),
            torch.tensor([scale], dtype=torch.float64),
            224,
        )[0].numpy()
        inverse = np.linalg.inv(m)
        Image.fromarray(image).transform(
            (224, 224),
            Image.Transform.AFFINE,
            data=tuple(inverse[:2].reshape(-1)),
            resample=Image.Resampling.BILINEAR,
        )
    return len(members) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/loader.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "3dpw"
        make_3dpw(raw, Synthetic3DPWConfig(sequences=1, frames=args.frames, seed=0), progress=False)
        pack_3dpw(
            raw, "train", Path(tmp) / "shards", "standin", ShardOptions(maxcount=8, progress=False)
        )
        urls = shard_urls(str(Path(tmp) / "shards"))
        a = pipeline_rate(urls, args.batches)
        b, members = decode_only_rate(urls)
        c = per_file_rate(raw, members)
        d = read_only_rate(urls)
    rows = {
        "pipeline_samples_per_s": a,
        "decode_only_samples_per_s": b,
        "per_file_samples_per_s": c,
        "read_only_samples_per_s": d,
        "a_over_c": a / c,
        "a_over_b": a / b,
        "goal_a_over_c": 5.0,
        "goal_a_over_b": 0.6,
    }
    print(f"{'loader (1 core, 1080x1920 synthetic 3DPW)':<46}{'samples/s':>10}")
    print(f"{'(a) shards + decode + augment + 224 crop':<46}{a:>10.1f}")
    print(f"{'(b) decode stored crops only (ceiling)':<46}{b:>10.1f}")
    print(f"{'(c) PARE-style: full-frame decode + crop':<46}{c:>10.1f}")
    print(f"{'(d) shard reading only, nothing decoded':<46}{d:>10.1f}")
    print(f"(a)/(c) = {a / c:.1f}x (goal >= 5x); (a)/(b) = {100 * a / b:.0f}% (goal >= 60%)")
    print(f"wrote {write_json_atomic(args.out, {'benchmark': 'loader', **rows}, indent=2)}")
    return rows


if __name__ == "__main__":
    main()
