"""Show what a run left behind: its offline W&B run (read back from the record log, no network
needed), the newest overlay image, checkpoints and exported weights.

    python train/show_run.py runs/demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pare.checkpoint import complete_checkpoints
from pare.tracking import read_wandb_run, sync_commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    args = parser.parse_args(argv)
    run = args.run
    if not (run / "config.yaml").is_file():
        print(f"error: {run} is not a run folder (no config.yaml)", file=sys.stderr)
        return 2
    for folder in sorted((run / "wandb").glob("offline-run-*")):
        logged = read_wandb_run(folder)
        steps = sorted({row["_step"] for row in logged["history"] if "loss/total" in row})
        evals = [row for row in logged["history"] if "val/pa_mpjpe_mm" in row]
        images = [row for row in logged["history"] if "overlay/path" in row]
        print(f"W&B offline run: {folder}")
        print(
            f"  {len(steps)} loss rows (steps {steps[0]}..{steps[-1]}), {len(evals)} evaluations, "
            f"{len(images)} overlay images; best PA-MPJPE "
            f"{logged['summary'].get('best/pa_mpjpe_mm', float('nan')):.1f} mm"
            if steps
            else "  no loss rows logged"
        )
    commands = sync_commands(run / "wandb")
    if commands:
        # A requeued job's segments share one run id: they must be uploaded together, oldest
        # first, or each upload replaces the run's history (pare.tracking.sync_commands).
        print("upload later with (in this order):" if len(commands) > 1 else "upload later with:")
        for command in commands:
            print(f"  {command}")
    overlays = sorted((run / "overlays").glob("*.png"))
    if overlays:
        print(f"overlay (prediction | ground truth): {overlays[-1]}")
    checkpoints = complete_checkpoints(run)
    if checkpoints:
        print(f"checkpoints: {', '.join(p.name for p in checkpoints)} in {run / 'checkpoints'}")
    for weights in (run / "model.safetensors", run / "best" / "model.safetensors"):
        if weights.is_file():
            print(f"weights: {weights}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
