"""Run under `accelerate launch` (2 CPU processes) or alone: a few SGD steps of a small PARE on
one fixed global batch (saved by the test), each rank taking its contiguous share; writes the
parameters each rank ends with.

BatchNorm runs on running statistics taken from the whole batch (the model in eval mode): with
per-rank batch statistics, DDP over two half batches is a different computation from one
process over the whole batch, and the comparison would test BatchNorm, not gradient averaging.
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from pare.config import load_config
from pare.data.streaming.batch import normalize_images
from pare.losses import pare_loss
from pare.models import build_model

STEPS = 1  # one step isolates the averaging; later steps compound rounding through a deep net


def main() -> None:
    batch_file, out = Path(sys.argv[1]), Path(sys.argv[2])
    accelerator = Accelerator()
    cfg = load_config(
        [], ["model.backbone=hrnet_w18_small", "model.branch_channels=32", "model.branch_layers=1"]
    )
    set_seed(0)
    model = build_model(cfg.model, cfg.body)
    # Plain SGD: the update is linear in the averaged gradient, so the comparison tests the
    # averaging; Adam's m / sqrt(v) would magnify last-bit differences of tiny gradients.
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5)
    batch = torch.load(batch_file, weights_only=True)
    # Running statistics from the whole batch (the same on every rank): with the initial ones
    # (mean 0, variance 1) a random deep network's activations explode.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # a cumulative average
    with torch.no_grad():
        model.train()(normalize_images(batch["image"]))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()
    share = len(batch["image"]) // accelerator.num_processes
    lo = accelerator.process_index * share
    local = {k: v[lo : lo + share] for k, v in batch.items()}
    for _ in range(STEPS):
        loss, _ = pare_loss(model(normalize_images(local["image"])), local, cfg.loss)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    params = {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters()}
    torch.save(
        params, out / f"params_rank{accelerator.process_index}_of{accelerator.num_processes}.pt"
    )
    torch.save(initial, out / "params_initial.pt")
    # Leave the group together: a rank exiting while gloo still talks to it can abort (SIGABRT).
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
