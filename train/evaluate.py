"""Evaluate trained weights on the validation shards (MPJPE, PA-MPJPE, PVE in mm), next to the
mean-pose baseline (the training set's mean SMPL pose and shape, predicted for every image).

    python train/evaluate.py --run runs/demo [--weights best|final|FILE] [key=value ...]
    python train/evaluate.py --config configs/hrnet_w32.yaml --weights model.safetensors

Prints a table, writes ``<run>/eval.json`` (or ``--out``), and with ``--require-gain 0.2`` exits
1 unless the model's PA-MPJPE is at least 20% below the baseline's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pare.config import ConfigError, load_config
from pare.data.stream import eval_loader, shard_urls
from pare.evaluation import ConstantPrediction, GroundTruthBodies, evaluate, mean_training_pose
from pare.io_utils import write_json_atomic
from pare.models import build_model
from pare.runtime import load_weights, run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (its config.yaml and weights)")
    parser.add_argument("--config", action="append", default=[], help="YAML overrides")
    parser.add_argument("--weights", default="best", help="best, final, or a .safetensors file")
    parser.add_argument("--out", type=Path, help="JSON output (default <run>/eval.json)")
    parser.add_argument("--require-gain", type=float, help="exit 1 below this PA-MPJPE gain")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    configs = ([args.run / "config.yaml"] if args.run else []) + args.config
    cfg = load_config(configs, args.overrides)
    run = args.run or Path(cfg.train.output_dir)
    weights = {"best": run / "best" / "model.safetensors", "final": run / "model.safetensors"}.get(
        args.weights, Path(args.weights)
    )
    if args.weights == "best" and not weights.is_file():
        weights = run / "model.safetensors"  # no evaluation ran during training

    model = build_model(cfg.model, cfg.body)
    meta = load_weights(model, weights)
    gt_bodies = GroundTruthBodies(cfg.body.model_path)
    val_urls = [u for entry in cfg.data.val for u in shard_urls(entry.path)]
    train_urls = [u for entry in cfg.data.train for u in shard_urls(entry.path)]
    data = cfg.data

    def loader(urls: list[str]):
        return eval_loader(
            urls, data.batch_size, data.num_workers, data.crop_size, data.heatmap_size
        )

    rotmat, betas = mean_training_pose(loader(train_urls))
    baseline = ConstantPrediction(rotmat, betas, model.smpl)
    rows = {
        f"PARE ({cfg.model.backbone}, step {meta.get('step', '?')})": evaluate(
            model, loader(val_urls), gt_bodies, "cpu"
        ),
        "mean-pose baseline": evaluate(baseline, loader(val_urls), gt_bodies, "cpu"),
    }
    ours, base = rows.values()
    gain = 1.0 - ours["mean"]["pa_mpjpe"] / base["mean"]["pa_mpjpe"]
    label = " (STAND-IN body model)" if model.smpl.is_standin else ""
    print(f"\n3DPW-protocol evaluation on {len(ours['keys'])} validation samples (mm){label}")
    print(f"| {'model':<34} | {'MPJPE':>7} | {'PA-MPJPE':>8} | {'PVE':>7} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 10}|{'-' * 9}|")
    for name, result in rows.items():
        m = result["mean"]
        print(f"| {name:<34} | {m['mpjpe']:>7.1f} | {m['pa_mpjpe']:>8.1f} | {m['pve']:>7.1f} |")
    side = "below" if gain >= 0 else "above"
    print(f"\nPA-MPJPE {100 * abs(gain):.0f}% {side} the mean-pose baseline's")
    out = args.out or run / "eval.json"
    summary = {name: r["mean"] | {"samples": len(r["keys"])} for name, r in rows.items()}
    write_json_atomic(
        out, {"weights": str(weights), "rows": summary, "pa_mpjpe_gain": gain}, indent=2
    )
    print(f"wrote {out}")
    if args.require_gain is not None and gain < args.require_gain:
        print(
            f"error: the gain {gain:.2f} is below the required {args.require_gain:.2f}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    run_entry_point(main, (ConfigError, FileNotFoundError))
