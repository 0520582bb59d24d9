"""Training throughput for 1 and 2 CPU processes on the same config, measured in one run.

    python benchmarks/bench_ddp.py [--config configs/demo.yaml] [--steps 15] [--out benchmarks/results/ddp.json]

Runs ``train/train.py`` three times on the demo shards (pack them first with ``make demo``, or
pass ``key=value`` overrides pointing at other shards): one process with one thread, one process
with two threads, and two processes with one thread each under
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu``. Throughput is the global samples/s of
the last logging window (the first steps fill shuffle buffers and warm up allocators).

Goal: 2 processes >= 1.6x one process (both with one thread per process).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pare.launch import accelerate_launch_command

ROOT = Path(__file__).parents[1]


def run(processes: int, threads: int, args: list[str], out: Path) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), WANDB_SILENT="true")
    cmd = [sys.executable, str(ROOT / "train" / "train.py")]
    if processes > 1:
        env["ACCELERATE_USE_CPU"] = "1"
        cmd = [*accelerate_launch_command(processes, 29561), str(ROOT / "train" / "train.py")]
    result = subprocess.run(
        [*cmd, *args, f"train.output_dir={out}"], env=env, capture_output=True, text=True
    )
    if result.returncode:
        raise RuntimeError(f"training failed ({processes} processes):\n{result.stderr[-3000:]}")
    lines = [line for line in (out / "train.log").read_text().splitlines() if " INFO step " in line]
    return json.loads(lines[-1].split(" ", 5)[5])["samples_per_s"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ddp.json"))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    window = max(1, args.steps // 3)
    train_args = [
        "--config",
        args.config,
        f"train.max_steps={args.steps}",
        f"train.log_every={window}",
        f"train.eval_every={10 * args.steps}",
        f"train.checkpoint_every={10 * args.steps}",
        "train.image_every=0",
        "logging.wandb_mode=disabled",
        "data.num_workers=0",
        *args.overrides,
    ]
    from pare.io_utils import write_json_atomic

    with tempfile.TemporaryDirectory() as tmp:
        rows = {
            "1 process, 1 thread": run(1, 1, train_args, Path(tmp) / "p1t1"),
            "1 process, 2 threads": run(1, 2, train_args, Path(tmp) / "p1t2"),
            "2 processes, 1 thread each": run(2, 1, train_args, Path(tmp) / "p2t1"),
        }
    base = rows["1 process, 1 thread"]
    ratio = rows["2 processes, 1 thread each"] / base
    print(f"{'training on CPU (' + Path(args.config).name + ')':<34}{'samples/s':>10}{'vs 1x1':>8}")
    for name, value in rows.items():
        print(f"{name:<34}{value:>10.2f}{value / base:>7.2f}x")
    print(f"2 processes / 1 process: {ratio:.2f}x (goal >= 1.6x)")
    result = {"benchmark": "ddp", "samples_per_s": rows, "two_over_one": ratio, "goal": 1.6}
    print(f"wrote {write_json_atomic(args.out, result, indent=2)}")
    return result


if __name__ == "__main__":
    main()
