"""Train PARE (or the self-attention variant) on packed shards.

    accelerate launch train/train.py --config configs/hrnet_w32.yaml [key=value ...]
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 train/train.py ...
    python train/train.py --config configs/demo.yaml          # one process

One loop, top to bottom: setup, build, resume, loop (data, stop, forward, loss, backward, step,
log, evaluate, checkpoint), finish. Distributed and precision handling live here only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

from pare.config import (
    Config,
    ConfigError,
    DataConfig,
    DatasetSource,
    load_config,
    occluder_files,
    save_config,
)
from pare.pretrained import BackboneWeightsError, check_backbone_weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", default=[], help="YAML overrides, in order")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, applied last")
    return parser.parse_args(argv)


def load_run_config(argv: list[str] | None) -> Config:
    """The run's config from ``--config`` files and ``key=value`` overrides. Raises ConfigError
    for a bad config, FileNotFoundError for a backbone weight file it names that is missing,
    BackboneWeightsError for one that is plainly truncated or not a checkpoint; ConfigError for
    a missing or empty ``data.augment.occluders`` folder."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    check_backbone_weights(cfg.model.backbone, cfg.model.backbone_weights)
    if cfg.data.augment.occluders:  # checked here, not at load: evaluation reads run configs
        occluder_files(cfg.data.augment.occluders)  # ConfigError naming a missing or empty folder
    return cfg


if __name__ == "__main__":
    # Before the imports below (torch, timm, accelerate: seconds, 15 s on a busy 2-core machine),
    # so a missing or cut weight file or a bad key costs a second; main() loads the config again.
    try:
        load_run_config(sys.argv[1:])
    except (ConfigError, FileNotFoundError, BackboneWeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

# The remaining imports follow the early check above on purpose.
import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pare.body import SMPLBody  # noqa: E402
from pare.body.joints import SMPL_24  # noqa: E402
from pare.body.smpl import STANDIN_LABEL, STANDIN_TAG  # noqa: E402
from pare.checkpoint import (  # noqa: E402
    CHECKPOINTS,
    DONE_MARKER,
    TRAINER_STATE,
    DamagedCheckpoint,
    SaveError,
    TrainState,
    check_rng_states,
    export_weights,
    load_initial_weights,
    original_module,
    plain_checkpoint_weights,
    remove_unfinished,
    resolve_resume,
    save_checkpoint,
    update_counters,
)
from pare.data.streaming.batch import normalize_images  # noqa: E402
from pare.data.streaming.stream import (  # noqa: E402
    BadSamples,
    DamagedManifest,
    NoReadableShards,
    StreamState,
    UnreadableShard,
    check_body_model,
    eval_loader,
    shard_urls,
    sources_from_config,
    train_loader,
)
from pare.distributed import broadcast_buffers, parameters_in_sync  # noqa: E402
from pare.evaluation import NonFiniteSample, evaluate, metric_key  # noqa: E402
from pare.io_utils import write_json_atomic  # noqa: E402
from pare.launch import (  # noqa: E402
    LaunchError,
    StoppableReader,
    StopRequest,
    check_launch,
    describe_launch,
    launch_record,
    peak_memory_mb,
    run_entry_point,
    silent_fp32_warning,
)
from pare.losses import pare_loss  # noqa: E402
from pare.models import PARE, build_model  # noqa: E402
from pare.models.attention import attention_statistics  # noqa: E402
from pare.optim import build_optimizer  # noqa: E402
from pare.visualize import overlay  # noqa: E402

log = logging.getLogger("pare.train")

# What stops a run with one "error: ..." line and exit 2 (pare.launch.run_entry_point); scripts
# that wrap main() (tests' fault injection) pass it on.
ENTRY_ERRORS = (
    ConfigError,
    LaunchError,
    FileNotFoundError,
    DamagedManifest,
    NoReadableShards,
    BadSamples,
    UnreadableShard,
    BackboneWeightsError,
    SaveError,
    DamagedCheckpoint,
    NonFiniteSample,
)


def main(argv: list[str] | None = None) -> int:
    cfg = load_run_config(argv)  # a missing backbone weight file stops the run here
    # Shards packed with another body model would train against the wrong ground truth.
    check_body_model([e.path for e in [*cfg.data.train, *cfg.data.val]], cfg.body.model_path)
    val_urls, empty_val = validation_sources(cfg.data.val)  # all empty: stops here
    train_cfg = cfg.train

    # ------------------------------------------------------------------ setup
    run_dir = Path(train_cfg.output_dir)
    precision = train_cfg.mixed_precision  # "launcher": what accelerate launch was given
    accelerator = Accelerator(
        mixed_precision=None if precision == "launcher" else precision,
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        log_with="wandb" if cfg.logging.wandb_mode != "disabled" else None,
        project_dir=str(run_dir),
        # We step the scheduler once per optimiser step ourselves; Accelerate's default would
        # step it num_processes times.
        step_scheduler_with_optimizer=False,
    )
    check_launch(accelerator.num_processes)
    launch = launch_record(
        precision,
        str(accelerator.mixed_precision),
        accelerator.num_processes,
        cfg.data.batch_size,
        train_cfg.gradient_accumulation_steps,
    )
    main_process = accelerator.is_main_process
    if main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        # The launcher decides precision and world size: record what this run got beside the
        # config (as a YAML comment, so the file still loads as a config).
        save_config(cfg, run_dir / "config.yaml", header=f"launch: {describe_launch(launch)}")
    setup_logging(run_dir, main_process)
    if empty_val:
        log.warning("data.val: %s hold 0 samples; evaluating on the others", ", ".join(empty_val))
    set_seed(train_cfg.seed)  # the same initial weights on every rank
    device = accelerator.device

    # ------------------------------------------------------------------ build
    model = build_training_model(cfg)
    body_label = model.smpl.label
    # First: nobody misreads stand-in numbers, or a run's precision and global batch.
    log.info("%s: %s; %s", body_label, cfg.body.model_path, describe_launch(launch))
    fp32_warning = silent_fp32_warning(
        precision, launch["mixed_precision"], accelerator.device.type
    )
    if fp32_warning:
        log.warning(fp32_warning)
    optimizer, scheduler = build_optimizer(model, cfg.optim, train_cfg.max_steps)
    if train_cfg.compile:  # after the optimiser: the wrapper shares the model's parameters
        model = torch.compile(model, backend=train_cfg.compile_backend)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    plain_checkpoint_weights(accelerator)  # checkpoints hold the plain model's keys
    sources = sources_from_config(cfg.data.train)
    gt_bodies = SMPLBody(cfg.body.model_path).to(device)
    faces = accelerator.unwrap_model(model).smpl.faces

    # ------------------------------------------------------------------ resume
    state, stream = TrainState(), StreamState(seed=train_cfg.seed)
    keep = train_cfg.keep_checkpoints

    def counters() -> dict:
        # Every rank runs the same steps, so rank 0's stream position is every rank's.
        return {"train": state.state_dict(), "stream": stream.state_dict()}

    if main_process:  # before anything writes: a full disk needs their space for the next save
        for folder in remove_unfinished(run_dir):
            log.info("removed %s, left by a save or prune that did not finish", folder)
    accelerator.wait_for_everyone()
    resume_dir = resolve_resume(run_dir, train_cfg.resume)
    if resume_dir is not None:
        # Accelerate would resume past a damaged RNG state file with a note at info level.
        missing = check_rng_states(resume_dir, accelerator.num_processes)
        if missing:
            log.warning(
                "%s holds no random state for ranks %s (saved by fewer processes?): they go on "
                "from their current state, so the run does not repeat an uninterrupted one",
                resume_dir,
                missing,
            )
        accelerator.load_state(str(resume_dir))
        saved = json.loads((resume_dir / TRAINER_STATE).read_text())
        state.load_state_dict(saved["train"])
        stream.load_state_dict(saved["stream"])
        # Accelerate does not restore its checkpoint counter (we name folders by step anyway).
        accelerator.project_configuration.iteration = state.step
        log.info("resumed from %s at step %d", resume_dir, state.step)
    if accelerator.log_with:
        start_wandb(accelerator, cfg, run_dir, state, body_label, launch)

    # ------------------------------------------------------------------ loop
    stop = StopRequest(run_dir, train_cfg.time_budget_s).install()
    accelerator.wait_for_everyone()
    if main_process and stop.stop_file.exists():  # the request that ended the previous run
        stop.stop_file.unlink()
        log.info("removed %s left by the previous run", stop.stop_file)
    accelerator.wait_for_everyone()
    bar = tqdm(total=train_cfg.max_steps, initial=state.step, disable=not main_process, unit="step")
    # Batches are read in a background thread while this one waits watching `stop`: a stop
    # request acts within a fraction of a second even when the next batch takes minutes (a
    # source on a stalled network filesystem), where a next() of its own would be deaf to it.
    reader = StoppableReader(
        training_batches(sources, cfg.data, stream.epoch, stream.batches, stream.seed), stop
    )
    losses, timer = LossMeter(), StepTimer(state.step)
    nonfinite_in_a_row, stopped = 0, ""
    start_step, saved_step = state.step, None  # saved_step: the last save of this process
    micro_batches = 0  # trained since the last optimiser step (gradient accumulation)
    grad_norm = torch.zeros(())
    model.train()

    def checkpoint() -> None:
        """Save the training state of ``state.step``; when this run saved it already (before
        evaluating), add the evaluation's result to that checkpoint instead."""
        nonlocal saved_step
        if saved_step == state.step:
            update_counters(accelerator, run_dir, state.step, counters())
        else:
            save_checkpoint(accelerator, run_dir, state.step, keep, counters())
            saved_step = state.step

    try:
        while state.step < train_cfg.max_steps:
            # -- data; a stop request ends the wait only between optimiser steps, where the
            # state is whole (mid-accumulation, the accumulated gradients are in no checkpoint)
            step_start = micro_batches == 0
            fetched = reader.next(watch=step_start)

            # -- stop: collective (every rank checks at the same step), and before this step's
            # first other collective (DDP's, in forward and backward). A rank that gave up
            # waiting for its batch meets the others here, where they wait with theirs; all
            # drop the new batch and save the last completed step, whose stream position and
            # RNG state are the ones an uninterrupted run had there.
            if step_start:
                if fetched is None or stop.local():
                    accelerator.set_trigger()
                if accelerator.check_trigger():
                    stopped = stop.reason or "another rank asked to stop"
                    break
            host_batch, (stream.epoch, stream.batches) = fetched
            batch = {
                k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                for k, v in host_batch.items()
            }
            images = normalize_images(batch["image"])  # (B, 3, S, S) float, S = data.crop_size
            if train_cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            timer.data_done()

            # -- forward, loss, backward, step
            with accelerator.accumulate(model):
                pred = model(images)
                loss, terms = pare_loss(pred, batch, cfg.loss)
                # Every rank must take the same branch, or DDP's all-reduce would hang.
                nonfinite_ranks = accelerator.reduce(
                    (~torch.isfinite(loss.detach())).float(), "sum"
                )
                finite = float(nonfinite_ranks) == 0.0
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
            micro_batches += 1
            timer.compute_done(len(batch["__key__"]) * accelerator.num_processes)

            if finite:
                nonfinite_in_a_row = 0
                losses.add({"total": loss.detach(), **terms})
            else:
                state.nonfinite_steps += 1
                nonfinite_in_a_row += 1
                log.warning(
                    "non-finite loss at step %d: skipped (%d in a row)",
                    state.step,
                    nonfinite_in_a_row,
                )
                if nonfinite_in_a_row >= train_cfg.max_nonfinite_steps:
                    raise FloatingPointError(
                        f"{nonfinite_in_a_row} non-finite losses in a row at step {state.step}; "
                        f"stopping. The last good checkpoint is kept in {run_dir / CHECKPOINTS}; "
                        "lower optim.lr, enable optim.grad_clip_norm, or try bf16 instead of fp16."
                    )
            if not accelerator.sync_gradients:
                timer.restart()
                continue
            micro_batches = 0
            state.step += 1
            bar.update(1)

            # -- log
            if due(state.step, train_cfg.log_every, train_cfg.max_steps):
                means = accelerator.reduce(
                    {k: torch.tensor(v, device=device) for k, v in losses.means().items()}, "mean"
                )
                metrics = {
                    **{f"loss/{k}": float(v) for k, v in means.items()},
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    **timer.end_window(state.step, train_cfg.log_every),
                    "nonfinite_steps": state.nonfinite_steps,
                    **attention_metrics(accelerator.unwrap_model(model), pred),
                }
                accelerator.log(metrics, step=state.step)
                bar.set_postfix(
                    loss=f"{metrics.get('loss/total', float('nan')):.3f}",
                    sps=f"{metrics['samples_per_s']:.1f}",
                )
                log.info(  # the 24 per-part gates go to W&B only
                    "step %d %s",
                    state.step,
                    json.dumps(
                        {
                            k: round(v, 5)
                            for k, v in metrics.items()
                            if not k.startswith("attention/gate/")
                        }
                    ),
                )
                losses = LossMeter()
                timer.next_window()

            # -- images
            if main_process and due(state.step, train_cfg.image_every):
                log_overlay(accelerator, run_dir, state.step, batch, pred, faces)

            # -- evaluate, with the training state saved first: a damaged validation shard
            # stops the run (naming it) without losing the steps since the last checkpoint
            if val_urls and due(state.step, train_cfg.eval_every, train_cfg.max_steps):
                with timer.paused():  # not training time
                    checkpoint()
                    validate(accelerator, model, val_urls, cfg.data, gt_bodies, state, run_dir)

            # -- checkpoint (after evaluating: adds its result to the checkpoint saved before)
            if due(state.step, train_cfg.checkpoint_every, train_cfg.max_steps):
                checkpoint()
            timer.restart()
        if stopped and state.step > start_step:  # the state of the last completed step
            checkpoint()

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
                {
                    "step": state.step,
                    "body_model": body_label,
                    "config": OmegaConf.to_container(OmegaConf.structured(cfg)),
                },
            )
            if state.step >= train_cfg.max_steps:  # job scripts requeue until this marker exists
                write_json_atomic(
                    run_dir / DONE_MARKER,
                    {
                        "step": state.step,
                        "best_pa_mpjpe": state.best_pa_mpjpe,
                        "step_time_s": timer.step_time_s(),
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
        reader.close()
        stop.uninstall()
        bar.close()
        accelerator.end_training()
    return 0


# ---------------------------------------------------------------------- helpers of main


def setup_logging(run_dir: Path, main_process: bool) -> None:
    """``train.log`` in the run folder and stderr on the main process; warnings only elsewhere."""
    package = logging.getLogger("pare")  # this script's log and the library's (pare.data)
    if main_process:
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        package.addHandler(handler)
        package.addHandler(logging.StreamHandler(sys.stderr))
    package.setLevel(logging.INFO if main_process else logging.WARNING)


def attention_metrics(model: PARE, pred: dict) -> dict[str, float]:
    """``attention/*`` of the last batch (rank 0's images, up to 4) for the variant; {} for
    vanilla PARE: the gate's mean |g| and per-part values, the attention's entropy and the
    relative change it makes to the part maps (:func:`pare.models.attention.attention_statistics`)."""
    attention = original_module(model).head.attention
    if attention is None:
        return {}
    stats = attention_statistics(attention, pred["part_logits"][:4, 1:].detach())
    gates = {
        f"attention/gate/{name}": float(g) for name, g in zip(SMPL_24, stats["gate"], strict=True)
    }
    return {
        "attention/gate_abs_mean": float(stats["gate_abs_mean"]),
        "attention/entropy_nats": float(stats["entropy"]),
        "attention/entropy_max_nats": float(stats["entropy_max"]),
        "attention/relative_change": float(stats["relative_change"]),
        **gates,
    }


def start_wandb(
    accelerator, cfg: Config, run_dir: Path, state: TrainState, body_label: str, launch: dict
) -> None:
    """Start the W&B run. Its id is kept in ``state`` (and so in checkpoints): a resumed run
    continues the same W&B run; under a sweep agent the agent's run id is used. The config holds
    the resolved config, the body model and ``launch`` (:func:`pare.launch.launch_record`)."""
    if not state.wandb_run_id:
        # A sweep agent (wandb agent) has already created the run and passes its id.
        state.wandb_run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    standin = body_label == STANDIN_LABEL
    accelerator.init_trackers(
        cfg.logging.project,
        config={
            **OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
            "body_model": body_label,
            "launch": launch,
        },
        init_kwargs={
            "wandb": {
                "mode": cfg.logging.wandb_mode,
                "dir": str(run_dir),
                "id": state.wandb_run_id,
                "resume": "allow",
                "name": cfg.logging.run_name or run_dir.name,
                "group": cfg.logging.group or None,
                "tags": [*cfg.logging.tags, *([STANDIN_TAG] if standin else [])],
                "entity": cfg.logging.entity or None,
            }
        },
    )


def training_batches(
    sources, data: DataConfig, epoch: int, batches: int, seed: int
) -> Iterator[tuple[dict, tuple[int, int]]]:
    """``(batch, (epoch, batches))``, epoch after epoch from the stream position ``epoch``,
    ``batches`` (consumed of that epoch): a resumed epoch skips the batches it already trained
    on, one saved at its end goes on with the next. Each batch comes with the position after it;
    the caller records the position of each batch it trains on (this runs in the reader's
    thread and keeps no state of the caller's)."""
    while True:
        if batches < data.steps_per_epoch:
            loader = train_loader(sources, data, data.steps_per_epoch, epoch=epoch, seed=seed)
            for done, batch in enumerate(islice(loader, batches, None), start=batches + 1):
                yield batch, (epoch, done)
        epoch, batches = epoch + 1, 0


def validation_sources(entries: list[DatasetSource]) -> tuple[list[str], list[str]]:
    """The shard URLs of ``data.val`` and the sources that hold no sample (no shard, or a
    manifest whose shards count none). Raises ConfigError when every source is empty.

    Stopping (exit 2) rather than warning: ``data.val`` is how a run asks for evaluation
    (``data.val=[]`` trains without), so a list of empty splits means the run would end
    without a validation number or ``best/`` weights, found out hours later; stopping at
    start costs nothing. Some empty sources among others only warn: evaluation still runs."""
    urls, empty = [], []
    for entry in entries:
        found = shard_urls(entry.path)
        if found and _manifest_samples(entry.path) != 0:
            urls += found
        else:
            empty.append(entry.path)
    if entries and not urls:
        raise ConfigError(
            f"every data.val source holds 0 samples ({', '.join(empty)}): the run would never "
            "evaluate; repack the split, or set data.val=[] to train without evaluation"
        )
    return urls, empty


def _manifest_samples(path: str) -> int | None:
    """Samples a local split's manifest counts (None: no local manifest to ask)."""
    p = Path(path)
    manifest = p / "manifest.json" if p.is_dir() else p
    if manifest.suffix != ".json" or not manifest.is_file():
        return None
    shards = json.loads(manifest.read_text()).get("shardlist", [])  # read by shard_urls already
    return sum(int(s.get("nsamples", 1)) for s in shards)


def build_training_model(cfg: Config) -> torch.nn.Module:
    """The model as a run starts it: built from ``cfg.model``/``cfg.body``, then
    ``train.init_weights`` loaded over it (tensors the file lacks keep their initialisation),
    channels-last if asked. A resume later replaces the weights with its checkpoint's."""
    model = build_model(cfg.model, cfg.body)
    if cfg.train.init_weights:
        load_initial_weights(model, cfg.train.init_weights)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def due(step: int, every: int, last: int | None = None) -> bool:
    """Whether something done every ``every`` optimiser steps (0: never) is due after ``step``;
    always after the ``last`` step when given."""
    return (every > 0 and step % every == 0) or step == last


class LossMeter:
    """Sums of the loss terms over the finite steps of one log window, for their means."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += 1

    def means(self) -> dict[str, float]:
        """Mean of each term (empty when no step of the window was finite)."""
        return {name: total / max(self.count, 1) for name, total in self.sums.items()}


class StepTimer:
    """Where a log window's time goes, and the run's step time.

    Within a window: data time (fetching and moving a batch) and compute time (forward,
    backward, step), and the samples trained. Over the run: wall time per optimiser step after
    the first log window, which holds the warm-up (worker start, first allocations). Time spent
    under :meth:`paused` (evaluation) counts in neither."""

    def __init__(self, step: int) -> None:
        self.seconds, self.steps, self.windows, self.logged_at = 0.0, 0, 0, step
        self._new_window()

    def _new_window(self) -> None:
        self.data, self.compute, self.samples = 0.0, 0.0, 0
        self.start = self.tick = time.perf_counter()

    def restart(self) -> None:
        """Start timing the next batch's data from now."""
        self.tick = time.perf_counter()

    def data_done(self) -> None:
        now = time.perf_counter()
        self.data, self.tick = self.data + now - self.tick, now

    def compute_done(self, samples: int) -> None:
        """``samples``: the batch's samples over all ranks."""
        self.compute += time.perf_counter() - self.tick
        self.samples += samples

    @contextmanager
    def paused(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.start += time.perf_counter() - begin

    def end_window(self, step: int, log_every: int) -> dict[str, float]:
        """Close the log window at ``step``: its throughput (samples/s) and the mean data and
        compute seconds per step (over ``log_every`` steps; the last window may be shorter)."""
        elapsed = time.perf_counter() - self.start
        self.windows += 1
        if self.windows > 1:
            self.seconds += elapsed
            self.steps += step - self.logged_at
        self.logged_at = step
        window = {
            "samples_per_s": self.samples / max(elapsed, 1e-9),
            "time/data_s": self.data / log_every,
            "time/compute_s": self.compute / log_every,
        }
        return window

    def next_window(self) -> None:
        """Start the next log window (after the closed one has been logged)."""
        self._new_window()

    def step_time_s(self) -> float | None:
        """Seconds per optimiser step after the first log window; None before a second one."""
        return self.seconds / self.steps if self.steps else None


def validate(
    accelerator,
    model,
    val_urls: list[str],
    data: DataConfig,
    gt_bodies: SMPLBody,
    state: TrainState,
    run_dir: Path,
) -> None:
    """Evaluate on the validation shards (each sample once across ranks), record the result in
    ``state``, log ``val/*`` and export the weights to ``<run>/best`` when PA-MPJPE improves.
    Collective: every rank must call it."""
    loader = eval_loader(val_urls, data.batch_size, data.num_workers, data.crop_size)
    # The unwrapped model (autocast kept): DDP's forward could start collectives, and ranks
    # hold different numbers of evaluation batches. Its BatchNorm statistics are rank 0's
    # everywhere, as in the weights rank 0 exports.
    unwrapped = accelerator.unwrap_model(model)
    broadcast_buffers(unwrapped)
    result = evaluate(unwrapped, loader, gt_bodies, accelerator.device)
    mean = result["mean"]
    if state.record_eval(mean) and accelerator.is_main_process:
        export_weights(
            unwrapped,
            run_dir / "best" / "model.safetensors",
            {"step": state.step, "body_model": unwrapped.smpl.label, **mean},
        )
    metrics = {f"val/{metric_key(k)}": v for k, v in mean.items()}
    metrics["val/best_pa_mpjpe_mm"] = state.best_pa_mpjpe
    accelerator.log(metrics, step=state.step)
    log.info("eval step %d: %s (%d samples)", state.step, json.dumps(mean), len(result["keys"]))


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
    run_entry_point(main, ENTRY_ERRORS)
