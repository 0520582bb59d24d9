"""What the training loop needs around the model: launch checks, collective stopping,
checkpoint folders, and the counters that go into checkpoints.

Checkpoints are folders ``<run>/checkpoints/step-0001000`` written by ``accelerator.save_state``
into ``step-0001000.tmp`` and renamed once every rank has finished writing, with a ``COMPLETE``
marker inside: a folder without the marker (a job killed mid-save) is never resumed from.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER_STATE = "trainer_state.json"
DONE_MARKER = "DONE"  # written by train.py when a run reaches train.max_steps
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


def run_entry_point(main, errors: tuple[type[BaseException], ...]) -> None:
    """``sys.exit(main())`` for the scripts in ``train/``: the expected ``errors`` (bad config,
    missing file, wrong launch) print one ``error: ...`` line and exit 2, without a traceback."""
    import sys

    try:
        sys.exit(main())
    except errors as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def accelerate_launch_command(processes: int, port: int, *flags: str) -> list[str]:
    """The ``accelerate launch`` prefix for ``processes`` local processes (``flags`` default to
    ``--multi_gpu``; on CPU the environment also needs ACCELERATE_USE_CPU=1), next to this
    Python's interpreter."""
    import sys

    return [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        *(flags or ("--multi_gpu",)),
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
    ]


class LaunchError(RuntimeError):
    """The processes that started are not the ones the launcher was asked for."""


def _launcher_processes(ppid: int | None = None) -> int | None:
    """``--num_processes`` of the ``accelerate launch`` that started this process, if any."""
    try:
        raw = Path(f"/proc/{ppid or os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    if not any(a.endswith("accelerate") for a in args[:2]) or "launch" not in args:
        return None
    for i, arg in enumerate(args):
        for flag in ("--num_processes", "--num-processes"):
            if arg == flag and i + 1 < len(args):
                return int(args[i + 1])
            if arg.startswith(flag + "="):
                return int(arg.split("=", 1)[1])
    return None


def check_launch(num_processes: int, ppid: int | None = None) -> None:
    """Fail loudly on launches that silently run something else than asked.

    - ``WORLD_SIZE`` (set by the launcher) differs from the process group Accelerate built:
      typically ``--multi_gpu`` on a machine without GPUs and without ``ACCELERATE_USE_CPU=1``,
      which starts unsynchronised copies that each train alone.
    - ``accelerate launch --cpu --num_processes N`` starts a single process.
    """
    env_world = int(os.environ.get("WORLD_SIZE", "1"))
    if env_world != num_processes:
        raise LaunchError(
            f"the launcher started {env_world} processes but they formed a group of "
            f"{num_processes}: they would train unsynchronised copies. On CPU, launch with "
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ..."
        )
    asked = _launcher_processes(ppid)
    if asked is not None and asked != num_processes:
        raise LaunchError(
            f"accelerate launch was asked for {asked} processes but started {num_processes} "
            "(`--cpu --num_processes N` starts one). On CPU, launch with "
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ..."
        )


class StopRequest:
    """Local reasons to stop: SIGTERM, SIGINT, SIGUSR1, a ``STOP`` file in the run folder, or a
    wall-clock budget. :meth:`local` says whether this rank wants to stop; the loop turns that
    into a collective decision (every rank must check at the same step)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, run_dir: Path, budget_s: float = 0.0) -> None:
        self.stop_file = Path(run_dir) / "STOP"
        self.deadline = time.monotonic() + budget_s if budget_s > 0 else None
        self.reason = ""
        self._previous = {}

    def install(self) -> StopRequest:
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        self.reason = signal.Signals(signum).name

    def local(self) -> bool:
        if not self.reason and self.stop_file.exists():
            self.reason = f"{self.stop_file} exists"
        if not self.reason and self.deadline is not None and time.monotonic() > self.deadline:
            self.reason = "wall-clock budget spent"
        return bool(self.reason)


@dataclass
class TrainState:
    """Counters that must survive a resume (registered with ``register_for_checkpointing``)."""

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


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:07d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE).is_file()]
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
    if not (path / COMPLETE).is_file():
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
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def export_weights(model: torch.nn.Module, path: Path, metadata: dict | None = None) -> Path:
    """The model's state dict as safetensors (atomically), for evaluation and prediction."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
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
    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), "pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def parameters_in_sync(accelerator, model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (a checksum per rank, compared)."""
    params = [p.detach().double().flatten() for p in model.parameters()]
    flat = torch.cat(params)
    weights = torch.arange(1, len(flat) + 1, dtype=torch.float64, device=flat.device)
    checksum = torch.stack([flat.sum(), (flat * weights).sum()])  # order-sensitive
    gathered = accelerator.gather(checksum[None])  # (ranks, 2)
    return bool((gathered == gathered[0]).all())


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


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """This process's peak memory in MiB and what was measured: allocated CUDA memory on a GPU,
    else the peak resident set size (model, activations, Python and all)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA allocated"
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024), "process RSS"
