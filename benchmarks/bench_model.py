"""Model cost on CPU: vanilla PARE against the self-attention variant, and fused against naive
attention, side by side in one run.

    python benchmarks/bench_model.py [--backbone hrnet_w32] [--batch 8] [--repeats 3]
                               [--bf16-repeats 1] [--precisions fp32,bf16]
                               [--out benchmarks/results/model.json]

Rows: forward+backward time (best of ``--repeats`` after a warm-up) and peak memory for vanilla
PARE, the variant at its default attention resolution (28x28) and at full resolution (56x56),
in fp32 and under bf16 autocast (CPUs without native bf16 run it an order of magnitude slower
than fp32, hence its own, smaller ``--bf16-repeats``; 0 times the first, measured step); then the attention block alone, fused (SDPA) against naive, at
56x56. Every row runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``, minus
what the process held before the first forward) is its own.

Goals: variant (default) <= 1.25x vanilla time and <= 1.10x vanilla peak memory; fused attention
<= 0.15x the naive peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import timeit
from pathlib import Path

import torch

ROWS = [
    ("vanilla", "fp32", []),
    ("variant 28x28 (default)", "fp32", ["model.attention.enabled=true"]),
    ("variant 56x56", "fp32", ["model.attention.enabled=true", "model.attention.resolution=0"]),
    ("vanilla", "bf16", []),
    ("variant 28x28 (default)", "bf16", ["model.attention.enabled=true"]),
    ("variant 56x56", "bf16", ["model.attention.enabled=true", "model.attention.resolution=0"]),
]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _measure(step, repeats: int) -> dict:
    """Peak memory of the first call; time: best of ``repeats`` more calls, or with
    ``repeats=0`` the first call itself (for steps so slow that warm-up costs are noise)."""
    base = _rss_mb()
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    peak = _peak_mb() - base
    seconds = min(timeit.repeat(step, number=1, repeat=repeats)) if repeats else first
    return {"seconds": seconds, "peak_mb": peak}


def measure_model(backbone: str, batch: int, precision: str, overrides: list, repeats: int) -> dict:
    from pare.config import load_config
    from pare.models import build_model

    cfg = load_config([], [f"model.backbone={backbone}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.body).train()
    images = torch.randn(batch, 3, 224, 224)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(images)
        loss = out["part_logits"].float().square().mean() + out["vertices"].square().mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    return _measure(step, repeats)


def measure_attention(kind: str, batch: int, repeats: int) -> dict:
    from pare.models import PartSelfAttention, naive_attention

    torch.manual_seed(0)
    attention = PartSelfAttention(24, dim=64, heads=4, resolution=0)
    if kind == "naive":
        attention.attend = naive_attention
    with torch.no_grad():
        attention.gate.fill_(1.0)
    maps = torch.randn(batch, 24, 56, 56, requires_grad=True)

    def step() -> None:
        attention(maps).square().mean().backward()

    return _measure(step, repeats)


def _in_subprocess(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(args)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"benchmark worker {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="hrnet_w32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16-repeats", type=int, default=1)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated subset")
    parser.add_argument(
        "--attention-batch", type=int, default=8, help="batch of the fused/naive attention rows"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        if job[0] == "model":
            result = measure_model(*job[1:])
        else:
            result = measure_attention(*job[1:])
        print(json.dumps(result))
        return result

    from pare.io_utils import write_json_atomic

    rows = []
    precisions = args.precisions.split(",")
    for name, precision, overrides in ROWS:
        if precision not in precisions:
            continue
        repeats = args.repeats if precision == "fp32" else args.bf16_repeats
        job = ["model", args.backbone, args.batch, precision, overrides, repeats]
        rows.append({"model": name, "precision": precision, **_in_subprocess(job)})
    attention = {
        # Batch 8 by default: at small batches the import-time peak of the process hides the
        # attention's own memory (measured at batch 2 on a fresh install: fused/naive 1.0).
        kind: _in_subprocess(["attention", kind, args.attention_batch, args.repeats])
        for kind in ("fused", "naive")
    }

    def ratio(key: str, precision: str, variant: str) -> float:
        by = {(r["model"], r["precision"]): r[key] for r in rows}
        return by[(variant, precision)] / by[("vanilla", precision)]

    ratios = {
        f"{p}_{k}_variant_default_over_vanilla": ratio(k, p, "variant 28x28 (default)")
        for p in precisions
        for k in ("seconds", "peak_mb")
    }
    ratios.update(
        {
            f"{p}_{k}_variant_full_over_vanilla": ratio(k, p, "variant 56x56")
            for p in precisions
            for k in ("seconds", "peak_mb")
        }
    )
    ratios["fused_over_naive_peak_mb"] = (
        attention["fused"]["peak_mb"] / attention["naive"]["peak_mb"]
    )
    ratios["fused_over_naive_seconds"] = (
        attention["fused"]["seconds"] / attention["naive"]["seconds"]
    )

    print(
        f"PARE forward+backward on CPU ({torch.get_num_threads()} threads), {args.backbone}, "
        f"batch {args.batch}"
    )
    print(f"{'model':<26}{'precision':>10}{'seconds':>10}{'peak MB':>10}")
    for r in rows:
        print(f"{r['model']:<26}{r['precision']:>10}{r['seconds']:>10.2f}{r['peak_mb']:>10.0f}")
    print("\nattention block alone, 56x56, 4 heads, batch 8, fwd+bwd")
    for kind, r in attention.items():
        print(f"{kind:<26}{'fp32':>10}{r['seconds']:>10.2f}{r['peak_mb']:>10.0f}")
    print()
    for p in precisions:
        print(
            f"{p}: variant (default) / vanilla: time {ratios[f'{p}_seconds_variant_default_over_vanilla']:.2f}x "
            f"(goal <= 1.25x), peak memory {ratios[f'{p}_peak_mb_variant_default_over_vanilla']:.2f}x "
            "(goal <= 1.10x)"
        )
    print(
        f"fused / naive attention peak memory: {ratios['fused_over_naive_peak_mb']:.3f}x (goal <= 0.15x)"
    )
    result = {
        "benchmark": "model",
        "backbone": args.backbone,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "rows": rows,
        "attention": attention,
        **ratios,
        "goal_time_ratio": 1.25,
        "goal_memory_ratio": 1.10,
        "goal_fused_memory_ratio": 0.15,
    }
    print(f"wrote {write_json_atomic(args.out, result, indent=2)}")
    return result


if __name__ == "__main__":
    main()
