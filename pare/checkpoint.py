"""Checkpoints and trained weights: run folders, the counters that survive a resume, saving,
pruning and resuming, the exported ``model.safetensors`` files, the initial weights a run may
start from, and loading a trained model back (:func:`load_trained_model`).

Checkpoints are folders ``<run>/checkpoints/step-0001000`` written by ``accelerator.save_state``
into ``step-0001000.tmp`` and renamed once every rank has finished writing, with a ``COMPLETE``
marker inside: a folder without the marker (a job killed mid-save) is never resumed from, and
the next run removes it (:func:`remove_unfinished`). A save that fails (a full disk) removes
its folder and stops the run naming the cause (:class:`SaveError`).

Job scripts ask this module, without importing torch, whether to requeue a run that ended
before ``DONE`` (:func:`requeue_decision`; ``python -m pare.checkpoint requeue``, see slurm/).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pare.config import Config, ConfigError, load_config
from pare.pretrained import RANDOM

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
DONE_MARKER = "DONE"  # written by train.py when a run reaches train.max_steps
STOP_MARKER = "STOP"  # a stop request: the trainer polls it, job scripts' traps write it
TASK_SIGNALLED = "STOP.node-{}"  # a job script's task on node N received TERM (slurm/common.sh)
RNG_STATES = "random_states_{}.pkl"  # accelerate's save_state: one per process index
_STEP_DIR = re.compile(r"^step-(\d{7,})$")
_UNFINISHED_DIR = re.compile(r"^step-(\d{7,})(\.tmp)?$")

if TYPE_CHECKING:
    import torch

    from pare.models import PARE


@dataclass
class TrainState:
    """Counters that must survive a resume, saved as JSON beside Accelerate's state by
    :func:`save_checkpoint` (``trainer_state.json``) and read back by train/train.py."""

    step: int = 0
    nonfinite_steps: int = 0
    best_pa_mpjpe: float = float("inf")
    best_step: int = -1
    wandb_run_id: str = ""
    history: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def record_eval(self, mean: dict[str, float]) -> bool:
        """Keep an evaluation of the current step (metric -> mean, PA-MPJPE in mm) in the
        history; True when its PA-MPJPE is the best so far (then ``best_*`` follow it)."""
        self.history[str(self.step)] = mean
        if not mean["pa_mpjpe"] < self.best_pa_mpjpe:  # a NaN evaluation is never the best
            return False
        self.best_pa_mpjpe, self.best_step = mean["pa_mpjpe"], self.step
        return True


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:07d}"


# What a checkpoint folder must hold besides its COMPLETE marker: a kill while pruning (or a
# hand-deleted file) can leave the marker without them.
_REQUIRED = ("model.safetensors", TRAINER_STATE)


def is_complete(folder: Path) -> bool:
    """A checkpoint folder that a resume can use: the marker and the files it vouches for."""
    return all((Path(folder) / name).is_file() for name in (COMPLETE, *_REQUIRED))


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run (see :func:`is_complete`), oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve_resume(run_dir: Path, resume: str) -> Path | None:
    """``train.resume``: "" (start fresh), "auto" (the newest complete checkpoint of the run, or
    none) or a checkpoint folder (which must be complete)."""
    if not resume:
        return None
    if resume == "auto":
        found = complete_checkpoints(run_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not is_complete(path):
        raise FileNotFoundError(
            f"{path} is not a complete checkpoint (no {COMPLETE} marker); pass a folder from "
            f"{Path(run_dir) / CHECKPOINTS} or train.resume=auto"
        )
    return path


def newest_complete_step(run_dir: Path) -> int | None:
    """The step of the newest complete checkpoint of a run (the one ``resume=auto`` picks)."""
    found = complete_checkpoints(run_dir)
    return int(_STEP_DIR.match(found[-1].name).group(1)) if found else None


# What preemption and cancellation send. A task killed by one of them, with no stop requested,
# was still stopped from outside; one killed by SIGSEGV or SIGABRT crashed.
_PREEMPTION_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGKILL, signal.SIGUSR1, signal.SIGTERM)


def requeue_decision(
    run_dir: Path,
    status: int,
    *,
    signalled: bool = False,
    nodes: int = 1,
    started_from: int | None = None,
    restarts: int = 0,
    max_requeues: int = 20,
    job_state: str = "RUNNING",
) -> tuple[bool, str]:
    """Whether a job script should requeue a run whose launcher (srun) ended with ``status``
    (128 + N when a task was killed by signal N), and one line saying why.

    A stop is requeued however the launcher ended: the batch shell trapped a signal
    (``signalled``; with ``scancel --full`` srun SIGKILLs its tasks, possibly mid-checkpoint),
    the task on every one of the ``nodes`` received TERM (``STOP.node-<N>`` in the run folder:
    TERM to the job steps, after which the launcher exits non-zero; srun also TERMs the other
    tasks when one fails, so a marker from only some nodes means a crash), or the trainer
    stopped by itself (exit 0). A task killed by a preemption signal with no stop requested is
    requeued only when this attempt saved a checkpoint newer than ``started_from`` (the step
    it resumed from, None for none): a kill that repeats (the out-of-memory killer) cannot
    loop. Any other failure is a crash. Never when ``DONE`` exists, when the job is no longer
    RUNNING (``job_state`` from scontrol: COMPLETING after a plain ``scancel`` or the time
    limit, whose TERMs look like any other) or after ``max_requeues`` requeues
    (``restarts``: SLURM_RESTART_COUNT)."""
    run_dir = Path(run_dir)
    if (run_dir / DONE_MARKER).is_file():
        return False, f"run complete: {run_dir / DONE_MARKER}"
    if job_state != "RUNNING":
        return False, f"the job is {job_state} (cancelled or out of time): not requeueing"
    newest = newest_complete_step(run_dir)
    killed_by = status - 128 if status > 128 else 0
    every_task = all((run_dir / TASK_SIGNALLED.format(node)).exists() for node in range(nodes))
    if signalled or every_task:
        cause = f"a stop was requested (exit {status})"
    elif status == 0:
        cause = "the trainer stopped before train.max_steps"
    elif killed_by in _PREEMPTION_SIGNALS:
        name = signal.Signals(killed_by).name
        if newest is None or (started_from is not None and newest <= started_from):
            return False, (
                f"the trainer was killed by {name} with no stop requested and saved no "
                "checkpoint: not requeueing (a kill that repeats, such as the out-of-memory "
                "killer, would loop)"
            )
        cause = f"the trainer was killed by {name} after saving step {newest}"
    else:
        return False, f"the trainer failed (exit {status}): not requeueing"
    if restarts >= max_requeues:
        return False, f"{cause}, but the job was already requeued {restarts} times: giving up"
    resume = (
        f"resumes from {checkpoint_dir(run_dir, newest)}"
        if newest is not None
        else "starts over (no complete checkpoint yet)"
    )
    return True, f"{cause}; the requeued job {resume}"


class SaveError(RuntimeError):
    """A checkpoint or weights file could not be written (a full disk, a quota). The message
    is one line naming the file, the cause and what is kept; the partial files are removed."""


class DamagedCheckpoint(ValueError):
    """A file of a checkpoint that cannot be read back as written."""


def save_checkpoint(
    accelerator, run_dir: Path, step: int, keep: int, counters: dict | None = None
) -> Path:
    """``save_state`` into a temporary folder, add ``counters`` as ``trainer_state.json`` (JSON:
    Accelerate's own custom-object files are pickles, loaded with ``weights_only=False``), then
    mark and rename it (main process), and prune all but the newest ``keep`` complete
    checkpoints. Collective: every rank must call it. Raises :class:`SaveError` on every rank
    when any rank fails to write its part, after removing the temporary folder."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a save that was killed
    accelerator.wait_for_everyone()
    error = _attempt(accelerator.save_state, str(tmp))  # every rank writes its RNG state
    # Collective, as the barriers it replaces: a rank that failed must not leave the others
    # waiting, nor rank 0 mark a folder that lacks another rank's file.
    written = _on_every_rank(accelerator, error is None)
    if written and accelerator.is_main_process:
        error = _attempt(_mark_and_rename, tmp, final, step, counters)
    if not _on_every_rank(accelerator, written and error is None):
        # The message first: it reports the free space the partial folder leaves.
        message = _save_failure("checkpoint", final, error, run_dir, keep)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise SaveError(message)
    if accelerator.is_main_process:
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            (old / COMPLETE).unlink()  # first: a kill mid-removal leaves no "complete" remnant
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _attempt(write, *args) -> BaseException | None:
    """The exception ``write(*args)`` raised (None if none): torch, safetensors and the OS each
    report a full disk in their own way."""
    try:
        write(*args)
    except Exception as err:
        return err
    return None


def _mark_and_rename(tmp: Path, final: Path, step: int, counters: dict | None) -> None:
    if counters is not None:
        (tmp / TRAINER_STATE).write_text(json.dumps(counters))
    (tmp / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _on_every_rank(accelerator, ok: bool) -> bool:
    """Whether ``ok`` holds on every rank (collective)."""
    if accelerator.num_processes == 1:
        return ok
    import torch

    failed = torch.tensor([0.0 if ok else 1.0], device=accelerator.device)
    return float(accelerator.reduce(failed, "sum")) == 0.0


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How the libraries word it: safetensors "No space left on device (os error 28)"; torch's zip
# writer only says "unexpected pos ..." or "file write failed", so free space decides there.
_DISK_FULL_WORDS = ("no space left", "disk quota exceeded", "os error 28", "os error 122")


def _is_disk_full(error: BaseException | None, folder: Path) -> bool:
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _DISK_FULL_ERRNOS:
            return True
        if any(w in str(seen).lower() for w in _DISK_FULL_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return error is not None and _free_bytes(folder) < 2**20


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(_existing(path)).free
    except OSError:
        return -1


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _mount_point(path: Path) -> Path:
    path = _existing(path)
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _cause(error: BaseException) -> str:
    """An error in a few words: its type and first sentence (torch's run to a paragraph)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    first = lines[0].split(". ")[0] if lines else ""
    return f"{type(error).__name__}: {first[:200]}"


def _save_failure(
    what: str, target: Path, error, run_dir: Path | None, keep: int | None = None
) -> str:
    """One line: what could not be saved, why, how much space is left where (and a checkpoint
    needs), what to do, and (for a checkpoint) which complete one is kept."""
    free, mount = _free_bytes(target), _mount_point(target)
    space = f"{free / 2**20:.0f} MiB free on {mount}" if free >= 0 else f"on {mount}"
    if error is None:  # this rank wrote its part; another did not
        cause = "another rank could not write its part (its error names the cause)"
    elif _is_disk_full(error, target):
        cause = "no space left on device"
    else:
        cause = _cause(error)
    if run_dir is None:
        return (
            f"{cause} while saving {what} {target} ({space}): free space there (or check the quota)"
        )
    kept = complete_checkpoints(run_dir)
    if kept:
        size = sum(f.stat().st_size for f in kept[-1].iterdir() if f.is_file())
        space += f"; a checkpoint takes {size / 2**20:.0f} MiB"
    now = "" if keep is None else f", now {keep}"
    last = (
        f"the last complete checkpoint, {kept[-1]}, is kept; train.resume=auto continues from it"
        if kept
        else "no complete checkpoint is kept yet"
    )
    return (
        f"{cause} while saving {what} {target} ({space}): free space there (or check the "
        "quota), set train.output_dir to another filesystem, or keep fewer checkpoints "
        f"(train.keep_checkpoints{now}); {last}"
    )


def update_counters(accelerator, run_dir: Path, step: int, counters: dict) -> None:
    """Replace ``trainer_state.json`` of the complete checkpoint of ``step`` (atomically): the
    training loop saves before evaluating, then records the evaluation's result here rather
    than writing the whole checkpoint again. Collective: every rank must call it; the main
    process writes. Raises :class:`SaveError` (the old file kept) when it cannot write."""
    from pare.io_utils import write_json_atomic

    folder = checkpoint_dir(run_dir, step)
    error = None
    if accelerator.is_main_process:
        if (folder / COMPLETE).is_file():
            error = _attempt(write_json_atomic, folder / TRAINER_STATE, counters)
        else:
            error = FileNotFoundError(f"{folder} is not a complete checkpoint")
    if not _on_every_rank(accelerator, error is None):  # raised on every rank, none left waiting
        if isinstance(error, FileNotFoundError):
            raise error
        raise SaveError(_save_failure("the counters of", folder, error, run_dir))


def remove_unfinished(run_dir: Path) -> list[Path]:
    """Remove what killed saves and prunes left in ``<run>/checkpoints``: ``step-*.tmp`` folders
    and step folders without their ``COMPLETE`` marker. No resume would use them, and on a
    full disk their space is what the next save needs. Main process, before training."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    removed = []
    for folder in sorted(root.iterdir()):
        match = _UNFINISHED_DIR.match(folder.name)
        if match and folder.is_dir() and (match.group(2) or not (folder / COMPLETE).exists()):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def check_rng_states(folder: Path, processes: int) -> list[int]:
    """Read the RNG state files of checkpoint ``folder`` (``random_states_<rank>.pkl``, one per
    process that saved it) as ``accelerator.load_state`` will, and try each state on a fresh
    generator. Accelerate catches any error there and resumes with the current states (an
    info-level log line only): the run would go on drawing other numbers than an uninterrupted
    one, silently. Raises :class:`DamagedCheckpoint` naming the file and the way out instead.
    Every rank reads every file, so all decide alike. Returns the ranks of ``processes``
    without a file (the checkpoint was saved by fewer processes)."""
    import random

    import numpy as np
    import torch
    from accelerate.utils import load  # torch.load(weights_only=True) + numpy's globals

    missing = []
    for rank in range(processes):
        path = Path(folder) / RNG_STATES.format(rank)
        if not path.is_file():
            missing.append(rank)
            continue
        try:
            states = load(path, map_location="cpu")  # refuses any global outside the allow-list
            random.Random().setstate(states["random_state"])
            np.random.RandomState().set_state(states["numpy_random_seed"])
            torch.Generator().set_state(states["torch_manual_seed"])
        except Exception as err:
            raise DamagedCheckpoint(
                f"{path} is truncated or damaged ({_cause(err)}): resuming without this random "
                f"state would not continue the run exactly; {_earlier_checkpoint(Path(folder))}"
            ) from None
    return missing


def _earlier_checkpoint(folder: Path) -> str:
    """What to do about a damaged checkpoint ``folder``: resume from the one before it."""
    step = _STEP_DIR.match(folder.name)
    older = [
        p
        for p in complete_checkpoints(folder.parent.parent)
        if step and int(_STEP_DIR.match(p.name).group(1)) < int(step.group(1))
    ]
    if older:
        return (
            f"resume from an earlier checkpoint (train.resume={older[-1]}), or delete {folder} "
            "and train.resume=auto takes the one before it"
        )
    return (
        f"delete {folder} and start afresh, or delete only this file to resume with other "
        "random states (not exactly)"
    )


# torch.compile wraps a module in an OptimizedModule whose state dict prefixes every key with
# this; exported weights must not depend on whether the run was compiled.
COMPILED_PREFIX = "_orig_mod."


def plain_state_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with torch.compile's ``_orig_mod.`` removed from every key (anywhere in the
    key: a compiled submodule prefixes its own part)."""
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items()}


def original_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module under torch.compile's wrapper (the module itself when not compiled)."""
    return getattr(model, "_orig_mod", model)


def plain_checkpoint_weights(accelerator) -> None:
    """Make ``accelerator.save_state`` write, and ``load_state`` read, the plain model's keys
    whatever wraps it (``train.compile``, the launcher's ``--dynamo_backend``): a checkpoint
    then loads into a compiled or a plain model alike, so a run may resume with compilation
    switched on or off, and checkpoints written with ``_orig_mod.`` keys (before this) still
    load. Registers a save and a load pre-hook; call once, after ``accelerator.prepare``."""
    from safetensors.torch import load_file

    def plain(model: torch.nn.Module) -> torch.nn.Module:
        return original_module(accelerator.unwrap_model(model, keep_torch_compile=False))

    def before_save(models: list, weights: list, output_dir: str) -> None:
        for i, model in enumerate(models):  # Accelerate saves this list of state dicts
            weights[i] = plain(model).state_dict()

    def before_load(models: list, input_dir: str) -> None:
        # Load each model here and take it off Accelerate's list, which would load the file's
        # keys as they are into the wrapper.
        for i, model in reversed(list(enumerate(models))):
            path = Path(input_dir) / f"model{f'_{i}' if i else ''}.safetensors"
            if path.is_file():
                try:
                    state = load_file(str(path))
                except Exception as err:  # safetensors raises its own error type
                    raise DamagedCheckpoint(
                        f"{path} is truncated or damaged ({_cause(err)}); "
                        f"{_earlier_checkpoint(Path(input_dir))}"
                    ) from None
                plain(model).load_state_dict(plain_state_keys(state))
                models.pop(i)

    accelerator.register_save_state_pre_hook(before_save)
    accelerator.register_load_state_pre_hook(before_load)


def export_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> Path:
    """The model's state dict as safetensors (atomically), for evaluation and prediction. A
    torch.compile'd model exports its original module's keys, so the file loads into a plain
    model."""
    return save_weights(plain_state_keys(original_module(model).state_dict()), path, metadata)


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    """A state dict as safetensors, written to a temporary name and renamed; ``metadata``
    values are stored as JSON (read back by :func:`load_weights`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    error = _attempt(save_file, state, str(tmp), meta)
    if error is not None:
        message = _save_failure("weights", path, error, None)
        tmp.unlink(missing_ok=True)
        raise SaveError(message)
    os.replace(tmp, path)
    return path


def load_weights(model: torch.nn.Module, path: Path) -> dict:
    """Load exported safetensors weights (strict) and return their metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path} (train/train.py writes them)")
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error type for a damaged file
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); it is truncated or damaged: "
            "export or copy it again"
        ) from None
    # Files exported by earlier versions from a compiled run carry "_orig_mod." keys.
    original_module(model).load_state_dict(plain_state_keys(state))
    return {k: json.loads(v) for k, v in metadata.items()}


def resolve_checkpoint(path: Path, which: str = "best") -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a weights file, a run folder or a checkpoint."""
    if path.is_file():
        run = next((p for p in path.parents if (p / "config.yaml").is_file()), None)
        return path, run
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if (path / "config.yaml").is_file():  # a run folder
        best, final = path / "best" / "model.safetensors", path / "model.safetensors"
        if which == "final" or not best.is_file():
            return final, path
        return best, path
    weights = path / "model.safetensors"  # a checkpoint folder (save_state)
    if weights.is_file():
        return weights, next((p for p in path.parents if (p / "config.yaml").is_file()), None)
    raise FileNotFoundError(
        f"{path} holds neither config.yaml (a run folder) nor model.safetensors (a checkpoint)"
    )


def load_initial_weights(model: torch.nn.Module, path: str) -> list[str]:
    """``train.init_weights``: load an exported weights file into a freshly built model. Every
    tensor in the file must fit the model; the model's own extras (e.g. the attention block)
    keep their initialisation, and their names are returned. Raises FileNotFoundError for a
    missing file and ValueError for a file from another architecture."""
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"train.init_weights not found: {path}")
    state = plain_state_keys(load_file(path))
    model = original_module(model)
    own = model.state_dict()
    unknown = sorted(set(state) - set(own))
    misfit = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    if unknown or misfit:
        raise ValueError(
            f"{path} does not fit this model: unknown {unknown[:5]}, other shapes {misfit[:5]} "
            "(was it exported from another backbone or head size?)"
        )
    model.load_state_dict(state, strict=False)
    return sorted(set(own) - set(state))


def load_trained_model(
    checkpoint: str | os.PathLike,
    which: str = "best",
    config_files: list | tuple = (),
    overrides: list[str] | tuple = (),
) -> tuple[PARE, Config, dict]:
    """A trained model ready to predict: ``(model, cfg, meta)``.

    ``checkpoint`` is a run folder (its ``which`` weights: "best", falling back to the final
    ones, or "final"), a checkpoint folder or a ``.safetensors`` file, as for
    :func:`resolve_checkpoint`; a folder written by train/convert_pare.py; or an official PARE
    ``.ckpt``, converted in memory, with its YAML as the one entry of ``config_files``. The config is ``config_files`` when given, else the run's
    ``config.yaml``; ``overrides`` (``key=value``) apply last. The model is on the CPU in eval
    mode; ``meta`` is the weights file's metadata (e.g. ``step``). Raises FileNotFoundError for
    a missing checkpoint or weights file, ConfigError when there is no config to build from.
    """
    if Path(checkpoint).suffix == ".ckpt":
        return _load_pare_checkpoint(Path(checkpoint), config_files, overrides)
    weights, run = resolve_checkpoint(Path(checkpoint), which)
    files = list(config_files) or ([run / "config.yaml"] if run else [])
    if not files:
        raise ConfigError(f"no config.yaml found above {weights}: pass --config")
    cfg = load_config(files, overrides)
    # Imported here: the checkpoint-folder helpers above serve tools that need no model code.
    from pare.models import build_model

    # The weights replace every tensor: the backbone's pretrained file is not needed (nor read).
    model = build_model(replace(cfg.model, backbone_weights=RANDOM), cfg.body)
    meta = load_weights(model, weights)  # every tensor: the random draw above is replaced
    return model.eval(), cfg, meta


def _load_pare_checkpoint(
    ckpt: Path, config_files: list | tuple, overrides: list[str] | tuple
) -> tuple[PARE, Config, dict]:
    """:func:`load_trained_model` for an official PARE ``.ckpt`` (see pare/convert.py)."""
    if len(config_files) != 1:
        raise ConfigError(
            f"{ckpt} is a PARE checkpoint: pass the YAML released with it as the one --config "
            "(or convert it once with train/convert_pare.py)"
        )
    from pare.convert import convert_pare
    from pare.models import build_model

    converted = convert_pare(ckpt, config_files[0], overrides)
    model = build_model(converted.cfg.model, converted.cfg.body)
    model.load_state_dict(converted.state)
    return model.eval(), converted.cfg, converted.meta


def main(argv: list[str] | None = None) -> int:
    """For job scripts, without torch: ``newest RUN_DIR`` prints the newest complete
    checkpoint's step (or ``none``); ``requeue RUN_DIR --status N ...`` prints
    :func:`requeue_decision`'s line and exits 0 to requeue, 1 not to."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pare.checkpoint")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("newest").add_argument("run_dir", type=Path)
    requeue = commands.add_parser("requeue")
    requeue.add_argument("run_dir", type=Path)
    requeue.add_argument("--status", type=int, required=True)
    requeue.add_argument("--signalled", action="store_true")
    requeue.add_argument("--started-from", default="none")
    requeue.add_argument("--nodes", type=int, default=1)
    requeue.add_argument("--job-state", default="RUNNING")
    requeue.add_argument("--restarts", type=int, default=0)
    requeue.add_argument("--max-requeues", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command == "newest":
        step = newest_complete_step(args.run_dir)
        print("none" if step is None else step)
        return 0
    requeue_it, reason = requeue_decision(
        args.run_dir,
        args.status,
        signalled=args.signalled,
        nodes=args.nodes,
        started_from=None if args.started_from == "none" else int(args.started_from),
        restarts=args.restarts,
        max_requeues=args.max_requeues,
        job_state=args.job_state,
    )
    print(reason)
    return 0 if requeue_it else 1


if __name__ == "__main__":
    raise SystemExit(main())
