"""The optimiser and learning-rate schedule. PARE trains with Adam over all parameters at one
constant rate (``pare/core/trainer.py`` ``configure_optimizers``, weight decay
``OPTIMIZER.WD`` = 0); here the SMPL regressors and the part self-attention may have their own
rates (:class:`pare.config.OptimConfig`), and a warmup and a cosine decay are options."""

from __future__ import annotations

import math

import torch

from pare.config import OptimConfig
from pare.models import PARE


def lr_factor(step: int, warmup: int, schedule: str, max_steps: int) -> float:
    """Linear warmup to 1, then constant or cosine to 0 at ``max_steps`` (optimiser steps)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def build_optimizer(
    model: PARE, optim: OptimConfig, max_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Adam or AdamW with the SMPL regressors in their own group (``lr * regressor_lr_scale``),
    the part self-attention in a third (``lr * attention_lr_scale``) when that scale is not 1,
    and the warmup-then-constant-or-cosine schedule over ``max_steps`` optimiser steps. Takes
    the plain model (not a ``torch.compile`` wrapper): it reads ``model.head``."""
    regressors = {id(p) for p in model.head.regressor_parameters()}
    attention = model.head.attention
    # Only when needed: checkpoints of runs with two groups must still resume.
    separate = attention is not None and optim.attention_lr_scale != 1.0
    attending = {id(p) for p in attention.parameters()} if separate else set()
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in regressors | attending]},
        {
            "params": [p for p in model.parameters() if id(p) in regressors],
            "lr": optim.lr * optim.regressor_lr_scale,
        },
    ]
    if separate:
        groups.append(
            {
                "params": [p for p in model.parameters() if id(p) in attending],
                "lr": optim.lr * optim.attention_lr_scale,
            }
        )
    optim_cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    optimizer = optim_cls(
        groups, lr=optim.lr, betas=tuple(optim.adam_betas), weight_decay=optim.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim.warmup_steps, optim.schedule, max_steps)
    )
    return optimizer, scheduler
