"""Collectives the loop needs beyond Accelerate's, usable without a process group (one process).

Evaluation gathers per-sample results rather than per-rank means: ranks hold different numbers of
samples (the evaluation stream deals samples out by index, not by padding), so averaging rank
means would weight samples unequally, and Accelerate's ``gather_for_metrics`` cannot drop padding
it does not know the length of for an iterable dataset.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` without a process group."""
    if world_size() == 1:
        return [obj]
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


@contextmanager
def fail_together() -> Iterator[None]:
    """Run a block that every rank enters and that ends in a collective (evaluation, before its
    gather), so that an exception on one rank stops every rank instead of leaving the others
    waiting in the collective until the process group's timeout (30 min on NCCL).

    Each rank catches its own exception and all ranks then exchange them (one
    ``all_gather_object``); a failing rank raises its own exception, every other rank the
    lowest failing rank's, so each prints a one-line error. A rank that cannot pickle its exception sends a
    RuntimeError with its text. Without a process group the exception passes through as is."""
    error: BaseException | None = None
    try:
        yield
    except Exception as e:
        if world_size() == 1:
            raise
        error = e
    if world_size() == 1:
        return
    try:
        sent = pickle.loads(pickle.dumps(error)) if error is not None else None
    except Exception:
        sent = RuntimeError(f"{type(error).__name__}: {error}")
    failures = [f for f in gather_objects(sent) if f is not None]
    if error is not None:
        raise error
    if failures:
        raise failures[0]


def gather_per_sample(
    keys: list[str], values: dict[str, np.ndarray]
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every rank's (keys, per-sample arrays) on every rank, sorted by key, each sample once.

    ``values[name]`` has one row per key. A key seen on two ranks is an error: it would be
    counted twice in every mean.
    """
    for name, array in values.items():
        if len(array) != len(keys):
            raise ValueError(f"{name!r} has {len(array)} rows for {len(keys)} keys")
    parts = gather_objects((list(keys), {k: np.asarray(v) for k, v in values.items()}))
    all_keys = [k for part_keys, _ in parts for k in part_keys]
    if len(set(all_keys)) != len(all_keys):
        seen: set[str] = set()
        twice = sorted({k for k in all_keys if k in seen or seen.add(k)})
        raise RuntimeError(f"samples evaluated more than once across ranks: {twice[:5]}")
    order = np.argsort(np.asarray(all_keys, dtype=object), kind="stable")
    # A rank that saw no sample may lack the optional per-sample arrays (it has no rows).
    names = dict.fromkeys(name for _, part_values in parts for name in part_values)
    merged = {
        name: np.concatenate([pv[name] for _, pv in parts if name in pv and len(pv[name])])[order]
        if any(name in pv and len(pv[name]) for _, pv in parts)
        else np.zeros(0)
        for name in names
    }
    return [all_keys[i] for i in order], merged


def broadcast_buffers(module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    Each rank updates its running statistics from its own batches; DDP broadcasts rank 0's at the
    start of every training forward, so between forwards the ranks disagree. Evaluating the
    unwrapped model on every rank would then mix models; after this call every rank evaluates
    the model that rank 0 saves and exports.
    """
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=src)


def parameters_in_sync(accelerator, model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (a checksum per rank, compared)."""
    params = [p.detach().double().flatten() for p in model.parameters()]
    flat = torch.cat(params)
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device)
    checksum = torch.stack([flat.sum(), (flat * weights).sum()])  # order-sensitive
    gathered = accelerator.gather(checksum[None])  # (ranks, 2)
    return bool((gathered == gathered[0]).all())
