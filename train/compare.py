"""The design document's experiment in one command: train vanilla PARE and the self-attention
variant with the same seed, data, budget and initialisation, evaluate both on the validation
shards, and write the comparison as markdown and CSV.

    python train/compare.py --config configs/demo.yaml --config configs/compare_cpu.yaml \
        [--processes 2] [--out runs/compare] [key=value ...]

Both runs train through train/train.py (under ``accelerate launch`` with ``--processes N``),
in ``<out>/vanilla`` and ``<out>/attention``, in one W&B group. The shared initialisation is
``<out>/init.safetensors``: vanilla weights drawn from the seed (over ``train.init_weights`` when
given); the attention block starts from its own initialisation with its residual gate at 0, so
both variants begin as the same network. A finished variant (its DONE marker) is not retrained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from pare.body import SMPLBody
from pare.checkpoint import DONE_MARKER, export_weights, load_initial_weights, load_trained_model
from pare.config import ConfigError, load_config
from pare.data.streaming.stream import eval_loader, shard_urls
from pare.evaluation import evaluate
from pare.io_utils import write_bytes_atomic, write_json_atomic
from pare.launch import accelerate_launch_command, run_entry_point
from pare.models import build_model
from pare.report import comparison_csv, comparison_markdown

TRAIN = Path(__file__).with_name("train.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default: train.output_dir)")
    parser.add_argument("--processes", type=int, default=1, help="training processes per run")
    parser.add_argument("--port", type=int, default=29561, help="rendezvous port (processes > 1)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    return parser.parse_args(argv)


def train_variant(args, cfg_files, overrides: list[str], env: dict) -> None:
    launcher = (
        accelerate_launch_command(args.processes, args.port)
        if args.processes > 1
        else [sys.executable]
    )
    configs = [item for path in cfg_files for item in ("--config", str(path))]
    command = [*launcher, str(TRAIN), *configs, *overrides]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"training failed (exit {done.returncode}): {' '.join(command)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = args.out or Path(cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    group = cfg.logging.group or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"

    # One initialisation for both: vanilla weights from the seed (or the given file).
    init = out / "init.safetensors"
    if not init.is_file():
        torch.manual_seed(cfg.train.seed)
        vanilla_cfg = load_config(args.config, [*args.overrides, "model.attention.enabled=false"])
        vanilla = build_model(vanilla_cfg.model, vanilla_cfg.body)
        if vanilla_cfg.train.init_weights:
            load_initial_weights(vanilla, vanilla_cfg.train.init_weights)
        export_weights(vanilla, init)

    env = dict(os.environ)
    if args.processes > 1 and not torch.cuda.is_available():
        env["ACCELERATE_USE_CPU"] = "1"  # CPU DDP (see the README)
        env.setdefault("OMP_NUM_THREADS", "1")
    results, memory_kind = {}, ""
    for variant, enabled in (("vanilla", "false"), ("attention", "true")):
        run = out / variant
        overrides = [
            *args.overrides,
            f"model.attention.enabled={enabled}",
            f"train.init_weights={init}",
            f"train.output_dir={run}",
            "train.resume=auto",
            f"logging.group={group}",
            f"logging.run_name={variant}",
        ]
        if not (run / DONE_MARKER).is_file():
            train_variant(args, args.config, overrides, env)
        done = json.loads((run / DONE_MARKER).read_text())
        # The final weights, not the best: both variants after the same budget.
        model, run_cfg, _ = load_trained_model(run, which="final")
        urls = [u for entry in run_cfg.data.val for u in shard_urls(entry.path)]
        data = run_cfg.data
        loader = eval_loader(urls, data.batch_size, data.num_workers, data.crop_size)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        gt_bodies = SMPLBody(run_cfg.body.model_path).to(device)
        metrics = evaluate(model.to(device), loader, gt_bodies, device)
        results[variant] = metrics["mean"] | {
            "samples": len(metrics["keys"]),
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "step_time_s": done.get("step_time_s"),  # absent in markers of older runs
            "peak_memory_mb": done.get("peak_memory_mb"),
            "steps": done["step"],
        }
        memory_kind = done.get("peak_memory_kind", "")

    table = comparison_markdown(results, memory_kind)
    samples = results["vanilla"]["samples"]
    heading = (
        f"# Vanilla PARE vs. self-attention ({results['vanilla']['steps']} steps each, "
        f"{samples} validation samples, W&B group {group})\n\n"
    )
    if model.smpl.is_standin:
        heading += f"{model.smpl.label}: not comparable with numbers computed with SMPL.\n\n"
    write_bytes_atomic(out / "comparison.md", (heading + table).encode())
    write_bytes_atomic(out / "comparison.csv", comparison_csv(results).encode())
    write_json_atomic(out / "comparison.json", results, indent=2)
    print("\n" + heading + table)
    print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'}")
    return 0


if __name__ == "__main__":
    run_entry_point(main, (ConfigError, FileNotFoundError, RuntimeError))
