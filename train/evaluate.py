"""Evaluate trained weights: 3DPW metrics overall and per sequence, MPII PCKh, an optional
mean-pose baseline, an export for the official 3DPW evaluator, and a W&B summary.

    python train/evaluate.py --checkpoint CKPT --shards DIR [DIR ...] [options] [key=value ...]
    python train/evaluate.py --run runs/demo --baseline          # a run folder's best weights
    python train/evaluate.py --checkpoint pare.ckpt --config pare_config.yaml --shards DIR
    accelerate launch train/evaluate.py --checkpoint CKPT ...    # every sample counts once

CKPT is a ``.safetensors`` file, a run folder (its best weights, else its final ones), a
checkpoint folder or a folder from train/convert_pare.py; its config is the run's
``config.yaml`` unless ``--config`` is given. An official PARE ``.ckpt`` is converted in memory
and needs its YAML as ``--config``. Shard
folders are 3DPW (MPJPE, PA-MPJPE, PVE in mm; PCK@50 mm and AUC in %, ours and the official
evaluator's) or MPII (PCKh@0.5 in %) splits; by default the config's validation shards. Writes ``eval.json`` and ``eval.csv`` (one
row per sequence and an overall row per model) to ``--out`` (default ``<run>/eval``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pare.body import SMPLBody
from pare.body.model import STANDIN, standin_dir
from pare.checkpoint import load_trained_model, resolve_checkpoint
from pare.config import ConfigError
from pare.data.streaming.stream import (
    BadSamples,
    UnreadableShard,
    check_body_model,
    eval_loader,
    shard_urls,
)
from pare.evaluation import (
    METRICS,
    ConstantPrediction,
    evaluate,
    evaluate_pckh,
    mean_training_pose,
    per_sequence,
)
from pare.export import (
    assemble_3dpw_predictions,
    export_fields,
    ground_truth_frames,
    write_evaluator_input,
)
from pare.io_utils import write_bytes_atomic, write_json_atomic
from pare.launch import LaunchError, check_launch, run_entry_point
from pare.report import eval_csv, log_eval_to_wandb, metrics_markdown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="weights file, run folder or checkpoint")
    parser.add_argument("--run", type=Path, help="a run folder (same as --checkpoint RUN)")
    parser.add_argument(
        "--weights", default="best", choices=("best", "final"), help="with a run folder"
    )
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    parser.add_argument("--shards", nargs="+", default=[], help="3DPW or MPII split folders")
    parser.add_argument("--out", type=Path, help="output folder (default <run>/eval)")
    parser.add_argument("--baseline", action="store_true", help="add the mean-pose baseline")
    parser.add_argument(
        "--export-3dpw",
        type=Path,
        metavar="DIR",
        help="write the official 3DPW evaluator's input folder (res/, ref/) here",
    )
    parser.add_argument(
        "--dataset-root", type=Path, help="3DPW root (with sequenceFiles/): needed by --export-3dpw"
    )
    parser.add_argument("--wandb", choices=("offline", "online"), help="log a W&B summary run")
    parser.add_argument("--require-gain", type=float, help="exit 1 below this PA-MPJPE gain")
    parser.add_argument("--per-sequence", type=int, default=12, help="rows printed (0: none)")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.run is None):
        parser.error("give one of --checkpoint CKPT or --run RUN")
    if args.export_3dpw and not args.dataset_root:
        parser.error(
            "--export-3dpw needs --dataset-root 3DPW_ROOT: the evaluator reads the ground truth's "
            "sequenceFiles, and each exported file must have its sequence's shape"
        )
    if args.require_gain is not None:
        args.baseline = True
    return args


def shard_kind(path: str) -> tuple[str, str | None]:
    """('3dpw' or 'mpii', the split or None) from a split folder's manifest."""
    manifest = Path(path) / "manifest.json" if not path.endswith(".json") else Path(path)
    if manifest.is_file():
        record = json.loads(manifest.read_text())
        return record.get("dataset", "3dpw"), record.get("split")
    return ("mpii" if "mpii" in Path(path).name.lower() else "3dpw"), None


def main(argv: list[str] | None = None) -> int:
    from accelerate import Accelerator

    args = parse_args(argv)
    checkpoint = args.checkpoint or args.run
    weights, run = resolve_checkpoint(checkpoint, args.weights)  # where the outputs go
    model, cfg, meta = load_trained_model(checkpoint, args.weights, args.config, args.overrides)
    shards = args.shards or [entry.path for entry in cfg.data.val]
    check_body_model(list(shards), cfg.body.model_path)
    out = args.out or (run / "eval" if run else Path("eval"))

    accelerator = Accelerator()
    check_launch(accelerator.num_processes)
    main_process, device = accelerator.is_main_process, accelerator.device
    say = print if main_process else (lambda *a, **k: None)

    model.to(device)
    data = cfg.data

    def loader(urls: list[str]):
        return eval_loader(urls, data.batch_size, data.num_workers, data.crop_size)

    name = f"PARE ({cfg.model.backbone}, step {meta.get('step', '?')})"
    if meta.get("source") == "PARE":  # converted from an official checkpoint
        name = f"PARE released ({meta['pare_checkpoint']}, {cfg.model.backbone})"
    models = {name: model}
    if args.baseline:
        train_urls = [u for entry in cfg.data.train for u in shard_urls(entry.path)]
        rotmat, betas = mean_training_pose(loader(train_urls))
        models["mean-pose baseline"] = ConstantPrediction(rotmat, betas, model.smpl).to(device)

    kinds = {path: shard_kind(path) for path in shards}
    urls_3dpw = [u for p, (k, _) in kinds.items() if k == "3dpw" for u in shard_urls(p)]
    urls_mpii = [u for p, (k, _) in kinds.items() if k == "mpii" for u in shard_urls(p)]
    truth = None
    if args.export_3dpw:
        splits = sorted({split for kind, split in kinds.values() if kind == "3dpw"})
        if not urls_3dpw or None in splits:
            raise ValueError(
                "--export-3dpw needs 3DPW shards with a manifest naming their split "
                "(--shards or the config's data.val; pack them with shards/pack_3dpw.py)"
            )
        # Read on every rank before the long part, so a bad root fails all ranks at once.
        truth = {split: ground_truth_frames(args.dataset_root, split) for split in splits}
    report: dict = {"weights": str(weights), "shards": list(shards), "3dpw": {}}
    if urls_3dpw:
        gt_bodies = SMPLBody(cfg.body.model_path).to(device)
        for label, m in models.items():
            extra = export_fields if m is model and args.export_3dpw else None
            result = evaluate(m, loader(urls_3dpw), gt_bodies, device, extra)
            if not result["keys"]:  # the same on every rank: the keys are gathered
                raise ValueError(f"no sample with SMPL ground truth in the 3DPW shards {shards}")
            report["3dpw"][label] = {
                "overall": result["mean"] | {"samples": len(result["keys"])},
                "per_sequence": per_sequence(result),
            }
            if extra:
                # Assembled (and checked against the ground truth) on every rank; written once.
                predictions, missing = assemble_3dpw_predictions(
                    result["keys"], result["joint_positions"], result["orientations"], truth
                )
                files = sum(len(seqs) for seqs in predictions.values())
                if main_process:
                    body = cfg.body.model_path
                    written = write_evaluator_input(
                        predictions,
                        args.export_3dpw,
                        args.dataset_root,
                        standin_dir() if body == STANDIN else Path(body).expanduser(),
                    )
                    say(f"wrote {files} sequence files for the 3DPW evaluator")
                    say(written.instructions())
                    if missing:
                        say(
                            f"warning: {missing} frames the evaluator scores have no prediction "
                            "(the packer skipped them; see the shards' manifest): exported as zeros"
                        )
                report["export"] = {
                    "folder": str(args.export_3dpw),
                    "files": files,
                    "tracks": {
                        split: sum(len(a["jointPositions"]) for a in p.values())
                        for split, p in predictions.items()
                    },
                    "scored_frames_missing": missing,
                }

    if urls_mpii:  # the baseline predicts no image-dependent 2D joints: the model only
        result = evaluate_pckh(model, loader(urls_mpii), device)
        report["mpii"] = {
            name: {
                "pckh": result["total"],
                # JSON has no NaN: a joint never visible has no accuracy.
                "per_joint": [None if v != v else v for v in result["per_joint"]],
                "samples": len(result["keys"]),
            }
        }

    gain = None
    if report["3dpw"]:
        overall = {label: r["overall"] for label, r in report["3dpw"].items()}
        first = next(iter(overall.values()))
        label_note = " (STAND-IN body model)" if model.smpl.is_standin else ""
        say(f"\n3DPW-protocol evaluation on {first['samples']} samples{label_note}")
        say(metrics_markdown(overall, METRICS))
        seq = report["3dpw"][name]["per_sequence"]
        if args.per_sequence and len(seq) > 1:
            shown = dict(
                sorted(seq.items(), key=lambda kv: -kv[1]["pa_mpjpe"])[: args.per_sequence]
            )
            say(f"\nper sequence (worst {len(shown)} of {len(seq)} by PA-MPJPE; all in eval.csv)")
            say(metrics_markdown(shown, ("pa_mpjpe", "mpjpe", "pve"), "sequence"))
        if args.baseline:
            base = overall["mean-pose baseline"]["pa_mpjpe"]
            gain = 1.0 - overall[name]["pa_mpjpe"] / base
            report["pa_mpjpe_gain"] = gain
            side = "below" if gain >= 0 else "above"
            say(f"\nPA-MPJPE {100 * abs(gain):.0f}% {side} the mean-pose baseline's")
    for r in report.get("mpii", {}).values():
        say(f"\nMPII PCKh@0.5 of the projected 2D joints: {r['pckh']:.1f}% ({r['samples']} people)")

    if main_process:
        write_json_atomic(out / "eval.json", report, indent=2)
        write_bytes_atomic(out / "eval.csv", eval_csv(report).encode())
        say(f"wrote {out / 'eval.json'} and {out / 'eval.csv'}")
        if args.wandb:
            where = log_eval_to_wandb(
                report,
                out=out,
                name=(run or weights.parent).name,
                mode=args.wandb,
                logging=cfg.logging,
            )
            say(f"W&B summary run in {where}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if args.require_gain is not None and not (gain is not None and gain >= args.require_gain):
        shown = "unknown (no 3DPW shards)" if gain is None else f"{gain:.2f}"
        print(f"error: the PA-MPJPE gain {shown} is below {args.require_gain:.2f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_entry_point(
        main, (ConfigError, FileNotFoundError, LaunchError, ValueError, BadSamples, UnreadableShard)
    )
