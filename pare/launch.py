"""How a process is started and stopped: the entry-point wrapper, the ``accelerate launch``
command, launch checks that catch silent mis-launches, collective stop requests (signals, a
``STOP`` file, a time budget), and the peak-memory reading the run summary records.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch


def run_entry_point(main, errors: tuple[type[BaseException], ...]) -> None:
    """``sys.exit(main())`` for the scripts in ``train/``: the expected ``errors`` (bad config,
    missing file, wrong launch) print one ``error: ...`` line and exit 2, without a traceback."""
    import sys

    try:
        sys.exit(main())
    except errors as err:
        message = str(err).strip()
        if "Traceback" in message:  # re-raised from a DataLoader worker: keep the cause's line
            message = message.splitlines()[-1].split(": ", 1)[-1]
        print(f"error: {message}", file=sys.stderr)
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


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """This process's peak memory in MiB and what was measured: allocated CUDA memory on a GPU,
    else the peak resident set size (model, activations, Python and all)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA allocated"
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024), "process RSS"
