"""Checkpoints and trained weights: run folders, the counters that survive a resume, saving,
pruning and resuming, the exported ``model.safetensors`` files, the initial weights a run may
start from, and loading a trained model back (:func:`load_trained_model`).

Checkpoints are folders ``<run>/checkpoints/step-0001000`` written by ``accelerator.save_state``
into ``step-0001000.tmp`` and renamed once every rank has finished writing, with a ``COMPLETE``
marker inside: a folder without the marker (a job killed mid-save) is never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pare.config import Config, ConfigError, load_config
from pare.pretrained import RANDOM

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
DONE_MARKER = "DONE"  # written by train.py when a run reaches train.max_steps
_STEP_DIR = re.compile(r"^step-(\d{7,})$")

if TYPE_CHECKING:
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


def save_checkpoint(
    accelerator, run_dir: Path, step: int, keep: int, counters: dict | None = None
) -> Path:
    """``save_state`` into a temporary folder, add ``counters`` as ``trainer_state.json`` (JSON:
    Accelerate's own custom-object files are pickles, loaded with ``weights_only=False``), then
    mark and rename it (main process), and prune all but the newest ``keep`` complete
    checkpoints. Collective: every rank must call it."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)  # left by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if counters is not None:
            (tmp / TRAINER_STATE).write_text(json.dumps(counters))
        (tmp / COMPLETE).write_text(json.dumps({"step": step, "time": time.time()}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            (old / COMPLETE).unlink()  # first: a kill mid-removal leaves no "complete" remnant
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def update_counters(run_dir: Path, step: int, counters: dict) -> None:
    """Replace ``trainer_state.json`` of the complete checkpoint of ``step`` (atomically): the
    training loop saves before evaluating, then records the evaluation's result here rather
    than writing the whole checkpoint again. Main process only."""
    from pare.io_utils import write_json_atomic

    folder = checkpoint_dir(run_dir, step)
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(f"{folder} is not a complete checkpoint")
    write_json_atomic(folder / TRAINER_STATE, counters)


def export_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> Path:
    """The model's state dict as safetensors (atomically), for evaluation and prediction."""
    return save_weights(model.state_dict(), path, metadata)


def save_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> Path:
    """A state dict as safetensors, written to a temporary name and renamed; ``metadata``
    values are stored as JSON (read back by :func:`load_weights`)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = path.with_name(path.name + ".tmp")
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    save_file(state, str(tmp), metadata=meta)
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
    model.load_state_dict(state)
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
    state = load_file(path)
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
