"""Convert an official PARE checkpoint (Lightning ``.ckpt`` + its yacs YAML) to this project's
``model.safetensors`` + ``config.yaml``.

    python train/convert_pare.py --ckpt data/pare/checkpoints/pare_w_3dpw_checkpoint.ckpt \\
        --cfg data/pare/checkpoints/pare_w_3dpw_config.yaml --out runs/pare_w_3dpw

Trailing ``key=value`` overrides go into the written config (e.g. ``body.model_path=...``; the
default is the real SMPL folder data/body_models/smpl). The folder then works with
``train/evaluate.py --checkpoint DIR``, ``train/predict.py --checkpoint DIR``,
``train/train.py --config DIR/config.yaml`` (fine-tuning from the converted weights) and
``pare.load_trained_model(DIR)``. Nothing in the checkpoint is executed (see pare/convert.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pare.launch import run_entry_point


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, required=True, help="PARE's Lightning .ckpt")
    parser.add_argument("--cfg", type=Path, required=True, help="the YAML released with it")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = parser.parse_args(argv)
    from pare.config import load_config
    from pare.convert import write_converted

    out = write_converted(args.ckpt, args.cfg, args.out, args.overrides)
    m = load_config([out / "config.yaml"]).model
    print(
        f"wrote {out / 'model.safetensors'} and {out / 'config.yaml'}: {m.backbone}, "
        f"{m.branch_layers} x {m.branch_channels}-channel branches, iterative regression "
        f"{'on' if m.iterative_regression else 'off'}"
    )
    return 0


if __name__ == "__main__":
    run_entry_point(main, (FileNotFoundError, ValueError))
