"""Train PARE (or the self-attention variant) on packed shards.

    accelerate launch train/train.py --config configs/hrnet_w32.yaml [key=value ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train.py ...
    python train/train.py --config configs/demo.yaml          # one process

One loop, top to bottom: setup, build, resume, loop (data, forward, loss, backward, step, log,
evaluate, checkpoint, stop), finish. Distributed and precision handling live here only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import secrets
import sys
import time
from itertools import islice
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from tqdm import tqdm

from pare.body import SMPLBody
from pare.checkpoint import (
    DONE_MARKER,
    TRAINER_STATE,
    TrainState,
    export_weights,
    resolve_resume,
    save_checkpoint,
)
from pare.config import ConfigError, load_config, save_config
from pare.data.streaming.batch import normalize_images
from pare.data.streaming.stream import (
    StreamState,
    eval_loader,
    shard_urls,
    sources_from_config,
    train_loader,
)
from pare.distributed import broadcast_buffers, parameters_in_sync
from pare.evaluation import evaluate, metric_key
from pare.io_utils import write_json_atomic
from pare.launch import LaunchError, StopRequest, check_launch, peak_memory_mb, run_entry_point
from pare.losses import pare_loss
from pare.models import build_model
from pare.visualize import overlay

log = logging.getLogger("pare.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="YAML overrides, in order")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, applied last")
    return parser.parse_args(argv)


def lr_factor(step: int, warmup: int, schedule: str, max_steps: int) -> float:
    """Linear warmup to 1, then constant or cosine to 0 at ``max_steps`` (optimiser steps)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    tc = cfg.train

    # ------------------------------------------------------------------ setup
    run_dir = Path(tc.output_dir)
    accelerator = Accelerator(
        mixed_precision=None if tc.mixed_precision == "launcher" else tc.mixed_precision,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        log_with="wandb" if cfg.logging.wandb_mode != "disabled" else None,
        project_dir=str(run_dir),
        # We step the scheduler once per optimiser step ourselves; Accelerate's default would
        # step it num_processes times.
        step_scheduler_with_optimizer=False,
    )
    check_launch(accelerator.num_processes)
    main_process = accelerator.is_main_process
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.INFO if main_process else logging.WARNING)
    set_seed(tc.seed)  # the same initial weights on every rank
    device = accelerator.device

    # ------------------------------------------------------------------ build
    model = build_model(cfg.model, cfg.body)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if tc.compile:
        model = torch.compile(model)
    optim_cls = torch.optim.AdamW if cfg.optim.optimizer == "adamw" else torch.optim.Adam
    regressors = {id(p) for p in model_head(model).regressor_parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in regressors]},
        {
            "params": [p for p in model.parameters() if id(p) in regressors],
            "lr": cfg.optim.lr * cfg.optim.regressor_lr_scale,
        },
    ]
    optimizer = optim_cls(
        groups,
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.adam_betas),
        weight_decay=cfg.optim.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, cfg.optim.warmup_steps, cfg.optim.schedule, tc.max_steps),
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    sources = sources_from_config(cfg.data.train)
    val_urls = [u for entry in cfg.data.val for u in shard_urls(entry.path)]
    gt_bodies = SMPLBody(cfg.body.model_path).to(device)
    faces = accelerator.unwrap_model(model).smpl.faces

    # ------------------------------------------------------------------ resume
    state, stream = TrainState(), StreamState(seed=tc.seed)
    resume_dir = resolve_resume(run_dir, tc.resume)
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        saved = json.loads((resume_dir / TRAINER_STATE).read_text())
        state.load_state_dict(saved["train"])
        stream.load_state_dict(saved["stream"])
        # Accelerate does not restore its checkpoint counter (we name folders by step anyway).
        accelerator.project_configuration.iteration = state.step
        log.info("resumed from %s at step %d", resume_dir, state.step)
    if accelerator.log_with:
        if not state.wandb_run_id:  # kept in checkpoints: a resumed run continues the same run
            # A sweep agent (wandb agent) has already created the run and passes its id.
            state.wandb_run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
        accelerator.init_trackers(
            cfg.logging.project,
            config=OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
            init_kwargs={
                "wandb": {
                    "mode": cfg.logging.wandb_mode,
                    "dir": str(run_dir),
                    "id": state.wandb_run_id,
                    "resume": "allow",
                    "name": cfg.logging.run_name or run_dir.name,
                    "group": cfg.logging.group or None,
                    "tags": list(cfg.logging.tags),
                    "entity": cfg.logging.entity or None,
                }
            },
        )

    def checkpoint() -> None:
        # Every rank runs the same steps, so rank 0's stream position is every rank's.
        counters = {"train": state.state_dict(), "stream": stream.state_dict()}
        save_checkpoint(accelerator, run_dir, state.step, tc.keep_checkpoints, counters)

    # ------------------------------------------------------------------ loop
    stop = StopRequest(run_dir, tc.time_budget_s).install()
    accelerator.wait_for_everyone()
    if main_process and stop.stop_file.exists():  # the request that ended the previous run
        stop.stop_file.unlink()
        log.info("removed %s left by the previous run", stop.stop_file)
    accelerator.wait_for_everyone()
    bar = tqdm(total=tc.max_steps, initial=state.step, disable=not main_process, unit="step")
    nonfinite_in_a_row, stopped = 0, ""
    sums: dict[str, float] = {}
    timer = {"data": 0.0, "compute": 0.0, "samples": 0, "start": time.perf_counter()}
    # Wall time per optimiser step (data + compute, evaluation excluded) after the first log
    # window, which holds the warm-up (worker start, first allocations).
    pace = {"seconds": 0.0, "steps": 0, "windows": 0, "logged_at": state.step}
    grad_norm = torch.zeros(())
    model.train()
    try:
        while state.step < tc.max_steps and not stopped:
            loader = train_loader(
                sources, cfg.data, cfg.data.steps_per_epoch, epoch=stream.epoch, seed=stream.seed
            )
            # Fast-forward past the batches this epoch already trained on (after a resume).
            batches = islice(loader, stream.batches, None)
            tick = time.perf_counter()
            for batch in batches:
                # -- data
                batch = {
                    k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                    for k, v in batch.items()
                }
                images = normalize_images(batch["image"])  # (B, 3, S, S) float, S = data.crop_size
                if tc.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                timer["data"] += time.perf_counter() - tick
                tick = time.perf_counter()

                # -- forward, loss, backward, step
                with accelerator.accumulate(model):
                    pred = model(images)
                    loss, terms = pare_loss(pred, batch, cfg.loss)
                    if state.step in tc.inject_nonfinite_at:
                        loss = loss * float("nan")
                    # Every rank must take the same branch, or DDP's all-reduce would hang.
                    bad = accelerator.reduce((~torch.isfinite(loss.detach())).float(), "sum")
                    finite = float(bad) == 0.0
                    if finite:
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:  # an infinite bound only measures
                            grad_norm = accelerator.clip_grad_norm_(
                                model.parameters(), cfg.optim.grad_clip_norm or float("inf")
                            )
                        optimizer.step()
                        if accelerator.sync_gradients:
                            scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                stream.batches += 1
                timer["compute"] += time.perf_counter() - tick
                timer["samples"] += len(batch["__key__"]) * accelerator.num_processes

                if not finite:
                    state.nonfinite_steps += 1
                    nonfinite_in_a_row += 1
                    log.warning(
                        "non-finite loss at step %d: skipped (%d in a row)",
                        state.step,
                        nonfinite_in_a_row,
                    )
                    if nonfinite_in_a_row >= tc.max_nonfinite_steps:
                        raise FloatingPointError(
                            f"{nonfinite_in_a_row} non-finite losses in a row at step {state.step}; "
                            f"stopping. The last good checkpoint is kept in {run_dir / 'checkpoints'}; "
                            "lower optim.lr, enable optim.grad_clip_norm, or try bf16 instead of fp16."
                        )
                else:
                    nonfinite_in_a_row = 0
                    for name, value in {"total": loss.detach(), **terms}.items():
                        sums[name] = sums.get(name, 0.0) + float(value)
                    sums["_count"] = sums.get("_count", 0.0) + 1
                if not accelerator.sync_gradients:
                    tick = time.perf_counter()
                    continue
                state.step += 1
                bar.update(1)

                # -- log
                if state.step % tc.log_every == 0 or state.step == tc.max_steps:
                    count = max(sums.pop("_count", 0.0), 1.0)
                    means = {k: v / count for k, v in sums.items()}
                    means = accelerator.reduce(
                        {k: torch.tensor(v, device=device) for k, v in means.items()}, "mean"
                    )
                    elapsed = time.perf_counter() - timer["start"]
                    pace["windows"] += 1
                    if pace["windows"] > 1:  # (the last window may be shorter)
                        pace["seconds"] += elapsed
                        pace["steps"] += state.step - pace["logged_at"]
                    pace["logged_at"] = state.step
                    metrics = {f"loss/{k}": float(v) for k, v in means.items()}
                    metrics.update(
                        {
                            "lr": scheduler.get_last_lr()[0],
                            "grad_norm": float(grad_norm),
                            "samples_per_s": timer["samples"] / max(elapsed, 1e-9),
                            "time/data_s": timer["data"] / tc.log_every,
                            "time/compute_s": timer["compute"] / tc.log_every,
                            "nonfinite_steps": state.nonfinite_steps,
                        }
                    )
                    accelerator.log(metrics, step=state.step)
                    bar.set_postfix(
                        loss=f"{metrics.get('loss/total', float('nan')):.3f}",
                        sps=f"{metrics['samples_per_s']:.1f}",
                    )
                    log.info(
                        "step %d %s",
                        state.step,
                        json.dumps({k: round(v, 5) for k, v in metrics.items()}),
                    )
                    sums = {}
                    timer = {
                        "data": 0.0,
                        "compute": 0.0,
                        "samples": 0,
                        "start": time.perf_counter(),
                    }

                # -- images
                if main_process and tc.image_every and state.step % tc.image_every == 0:
                    log_overlay(accelerator, run_dir, state.step, batch, pred, faces)

                # -- evaluate
                if val_urls and (state.step % tc.eval_every == 0 or state.step == tc.max_steps):
                    eval_start = time.perf_counter()
                    loader_eval = eval_loader(
                        val_urls,
                        cfg.data.batch_size,
                        cfg.data.num_workers,
                        cfg.data.crop_size,
                        cfg.data.heatmap_size,
                    )
                    # The unwrapped model (autocast kept): DDP's forward could start collectives,
                    # and ranks hold different numbers of evaluation batches. Its BatchNorm
                    # statistics are rank 0's everywhere, as in the weights rank 0 exports.
                    broadcast_buffers(accelerator.unwrap_model(model))
                    result = evaluate(
                        accelerator.unwrap_model(model), loader_eval, gt_bodies, device
                    )
                    metrics = {f"val/{metric_key(k)}": v for k, v in result["mean"].items()}
                    if result["mean"]["pa_mpjpe"] < state.best_pa_mpjpe:
                        state.best_pa_mpjpe, state.best_step = (
                            result["mean"]["pa_mpjpe"],
                            state.step,
                        )
                        if main_process:
                            export_weights(
                                accelerator.unwrap_model(model),
                                run_dir / "best" / "model.safetensors",
                                {"step": state.step, **result["mean"]},
                            )
                    metrics["val/best_pa_mpjpe_mm"] = state.best_pa_mpjpe
                    accelerator.log(metrics, step=state.step)
                    state.history[str(state.step)] = result["mean"]
                    timer["start"] += time.perf_counter() - eval_start  # not training time
                    log.info(
                        "eval step %d: %s (%d samples)",
                        state.step,
                        json.dumps(result["mean"]),
                        len(result["keys"]),
                    )

                # -- checkpoint and stop (collective: every rank checks at the same step)
                if stop.local():
                    accelerator.set_trigger()
                if accelerator.check_trigger():
                    stopped = stop.reason or "another rank asked to stop"
                if stopped or state.step % tc.checkpoint_every == 0 or state.step == tc.max_steps:
                    checkpoint()
                if stopped or state.step >= tc.max_steps:
                    break
                tick = time.perf_counter()
            else:
                stream.epoch, stream.batches = stream.epoch + 1, 0

        # ------------------------------------------------------------------ finish
        if not parameters_in_sync(accelerator, model):
            raise RuntimeError(
                "parameters differ between ranks: the processes did not train in sync"
            )
        log.info("parameters identical on all %d ranks", accelerator.num_processes)
        memory_mb, memory_kind = peak_memory_mb(device)
        log.info("peak memory %.0f MB (%s, rank 0)", memory_mb, memory_kind)
        if main_process:
            export_weights(
                accelerator.unwrap_model(model),
                run_dir / "model.safetensors",
                {"step": state.step, "config": OmegaConf.to_container(OmegaConf.structured(cfg))},
            )
            if state.step >= tc.max_steps:  # job scripts requeue until this marker exists
                write_json_atomic(
                    run_dir / DONE_MARKER,
                    {
                        "step": state.step,
                        "best_pa_mpjpe": state.best_pa_mpjpe,
                        "step_time_s": pace["seconds"] / pace["steps"] if pace["steps"] else None,
                        "peak_memory_mb": memory_mb,
                        "peak_memory_kind": memory_kind,
                    },
                )
        if accelerator.log_with and main_process:
            tracker = accelerator.get_tracker("wandb", unwrap=True)
            tracker.summary["best/pa_mpjpe_mm"] = state.best_pa_mpjpe
            tracker.summary["best/step"] = state.best_step
            tracker.summary["nonfinite_steps"] = state.nonfinite_steps
        log.info(
            "%s at step %d; weights in %s",
            f"stopped ({stopped})" if stopped else "finished",
            state.step,
            run_dir / "model.safetensors",
        )
    finally:
        stop.uninstall()
        bar.close()
        accelerator.end_training()
    return 0


def model_head(model):
    """The PARE head under an optional torch.compile wrapper."""
    return getattr(model, "_orig_mod", model).head


def log_overlay(accelerator, run_dir: Path, step: int, batch: dict, pred: dict, faces) -> None:
    """Predicted mesh and keypoints over the first crop of the batch, next to the ground truth;
    saved as a PNG in the run folder and logged to W&B."""
    from PIL import Image

    image = batch["image"][0].permute(1, 2, 0).cpu().numpy()
    size = image.shape[0]
    picture = overlay(
        image,
        pred["vertices"][0].detach().float().cpu().numpy(),
        faces,
        pred["translation"][0].detach().float().cpu().numpy(),
        (pred["keypoints_2d"][0].detach().float().cpu().numpy() + 1.0) * size / 2.0,
        batch["keypoints_2d"][0].cpu().numpy(),
        batch["part_labels"][0].cpu().numpy() if bool(batch["has_part_labels"][0]) else None,
    )
    path = run_dir / "overlays" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
    if accelerator.log_with:
        import wandb

        accelerator.log(
            {"overlay": wandb.Image(picture, caption=f"step {step}: prediction | ground truth")},
            step=step,
        )


if __name__ == "__main__":
    run_entry_point(main, (ConfigError, LaunchError, FileNotFoundError))
