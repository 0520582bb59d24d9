"""train/train.py with the loss made NaN at chosen optimiser steps: the non-finite guard under
test, with no hook for it in the training loop.

    python tests/train/nonfinite_train.py 3,4,5 [train/train.py arguments ...]

Steps count from 0 and the run must start fresh with ``train.gradient_accumulation_steps=1``:
then the n-th loss the loop computes is step n's.
"""

import importlib.util
import sys
from itertools import count
from pathlib import Path

TRAIN = Path(__file__).parents[2] / "train" / "train.py"


def main() -> int:
    nan_steps = {int(s) for s in sys.argv[1].split(",") if s}
    spec = importlib.util.spec_from_file_location("train_under_test", TRAIN)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    real_loss, calls = train.pare_loss, count()

    def loss_nan_at_steps(pred, batch, loss_cfg):
        loss, terms = real_loss(pred, batch, loss_cfg)
        if next(calls) in nan_steps:
            loss = loss * float("nan")
        return loss, terms

    train.pare_loss = loss_nan_at_steps  # the name train.main calls
    return train.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
