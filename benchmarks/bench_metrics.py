"""PA-MPJPE: the batched torch implementation vs a per-sample numpy loop (SPIN-style).

    python benchmarks/bench_metrics.py [--samples 10000] [--joints 14] [--repeats 5] [--out FILE]

Both run in the same process on the same data; the table reports the best of ``--repeats`` runs
and the speed-up ratio, which is what to compare across machines (absolute times are noisy).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from pare.io_utils import write_json_atomic
from pare.metrics import pa_mpjpe


def pa_mpjpe_numpy_loop(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """The common per-sample implementation: one SVD per sample in a Python loop."""
    out = np.empty(len(pred))
    for i, (p, g) in enumerate(zip(pred, gt, strict=True)):
        mu_p, mu_g = p.mean(0), g.mean(0)
        pc, gc = p - mu_p, g - mu_g
        u, s, vt = np.linalg.svd(pc.T @ gc)
        d = np.ones(3)
        d[-1] = np.sign(np.linalg.det(vt.T @ u.T))
        rot = vt.T @ np.diag(d) @ u.T
        scale = (s * d).sum() / (pc**2).sum()
        aligned = scale * pc @ rot.T + mu_g
        out[i] = np.linalg.norm(aligned - g, axis=1).mean()
    return out


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--joints", type=int, default=14)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/metrics.json"))
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    pred = rng.normal(size=(args.samples, args.joints, 3))
    gt = pred + 0.05 * rng.normal(size=pred.shape)
    pred_t, gt_t = torch.from_numpy(pred), torch.from_numpy(gt)

    t_loop, ref = best_time(lambda: pa_mpjpe_numpy_loop(pred, gt), args.repeats)
    t_batched, ours = best_time(lambda: pa_mpjpe(pred_t, gt_t).numpy(), args.repeats)
    max_diff = float(np.abs(ours - ref).max())
    result = {
        "benchmark": "pa_mpjpe",
        "samples": args.samples,
        "joints": args.joints,
        "repeats": args.repeats,
        "numpy_loop_s": t_loop,
        "batched_torch_s": t_batched,
        "speedup": t_loop / t_batched,
        "max_abs_difference": max_diff,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(f"PA-MPJPE, {args.samples} samples x {args.joints} joints (best of {args.repeats})")
    print(f"{'implementation':<28}{'seconds':>10}{'us/sample':>12}")
    print(f"{'numpy per-sample loop':<28}{t_loop:>10.4f}{1e6 * t_loop / args.samples:>12.2f}")
    print(
        f"{'pare.metrics (batched)':<28}{t_batched:>10.4f}{1e6 * t_batched / args.samples:>12.2f}"
    )
    print(f"speed-up {result['speedup']:.1f}x, max |difference| {max_diff:.2e}")
    print(f"wrote {write_json_atomic(args.out, result, indent=2)}")
    return result


if __name__ == "__main__":
    main()
