"""How a process is started and stopped: the entry-point wrapper, the ``accelerate launch``
command, launch checks that catch silent mis-launches, collective stop requests (signals, a
``STOP`` file, a time budget), waiting for data without going deaf to them, and the
peak-memory reading the run summary records.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from pare.checkpoint import STOP_MARKER


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


def launch_record(
    configured: str, effective: str, num_processes: int, batch_size: int, accumulation: int
) -> dict:
    """What a training run actually runs with: ``{"mixed_precision": effective ("no", "bf16",
    "fp16"), "configured_precision": configured (``train.mixed_precision``, e.g. "launcher"),
    "num_processes", "batch_per_process", "gradient_accumulation_steps", "global_batch"}``.
    The global batch is per-process batch x processes x accumulation steps."""
    return {
        "mixed_precision": effective,
        "configured_precision": configured,
        "num_processes": num_processes,
        "batch_per_process": batch_size,
        "gradient_accumulation_steps": accumulation,
        "global_batch": batch_size * num_processes * accumulation,
    }


def describe_launch(record: dict) -> str:
    """One line for the log and ``config.yaml``'s header, from :func:`launch_record`."""
    n = record["num_processes"]
    return (
        f"mixed precision {record['mixed_precision']} (train.mixed_precision="
        f"{record['configured_precision']}), {n} process{'es' if n != 1 else ''}, global batch "
        f"{record['global_batch']} = {record['batch_per_process']} per process x {n} x "
        f"{record['gradient_accumulation_steps']} accumulation"
    )


def silent_fp32_warning(configured: str, effective: str, device_type: str, env=None) -> str | None:
    """The warning for a GPU run that trains in fp32 only because nobody chose a precision:
    ``train.mixed_precision=launcher`` started by ``torchrun`` or plain ``python``, which, unlike
    ``accelerate launch``, pass no precision (``ACCELERATE_MIXED_PRECISION``). None otherwise."""
    env = os.environ if env is None else env
    if (
        configured == "launcher"
        and effective == "no"
        and device_type == "cuda"
        and "ACCELERATE_MIXED_PRECISION" not in env
    ):
        return (
            "train.mixed_precision=launcher, but this process was not started by accelerate "
            "launch: training in fp32. Set train.mixed_precision=bf16 (or fp16, or no to mean "
            "fp32), or start with accelerate launch --mixed_precision bf16"
        )
    return None


class StopRequest:
    """Local reasons to stop: SIGTERM, SIGINT, SIGUSR1, a ``STOP`` file in the run folder, or a
    wall-clock budget. :meth:`local` says whether this rank wants to stop; the loop turns that
    into a collective decision (every rank must check at the same step)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, run_dir: Path, budget_s: float = 0.0) -> None:
        self.stop_file = Path(run_dir) / STOP_MARKER
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


class StoppableReader:
    """The items of ``iterable``, each read in a background thread when asked for, while the
    caller waits watching a :class:`StopRequest`.

    A training loop that calls ``next()`` on its loader itself is deaf while it waits: a signal
    only sets a flag, and the kernel may not even let the wait end (a read stalled on a network
    filesystem cannot be interrupted). Here the caller's thread waits on a queue and checks
    ``stop`` every ``poll_s`` seconds, so a stop request is seen within that time however long
    the read takes. Items are read one per :meth:`next` call, never ahead: the reading happens
    when and as often as it did in the caller's thread (the loader's own workers still
    prefetch). The thread is a daemon: a read that never returns does not keep the process
    alive."""

    def __init__(self, iterable: Iterable, stop: StopRequest, poll_s: float = 0.2) -> None:
        self.stop, self.poll_s = stop, poll_s
        self._asked: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = False  # an item was asked for and not handed out yet
        self._thread = threading.Thread(
            target=self._read, args=(iterable,), name="stoppable-reader", daemon=True
        )
        self._thread.start()

    def _read(self, iterable: Iterable) -> None:
        iterator = iter(iterable)
        while self._asked.get():
            try:
                self._results.put((True, next(iterator)))
            except BaseException as err:  # handed to the caller, raised there
                self._results.put((False, err))
                return

    def next(self, watch: bool = True):
        """The next item; None when ``watch`` and a stop is requested before it arrives (then
        the read goes on, and a later call returns its item). Raises what reading raised."""
        if watch and self.stop.local():
            return None
        if not self._pending:
            self._asked.put(True)
            self._pending = True
        while True:
            try:
                ok, value = self._results.get(timeout=self.poll_s)
            except queue.Empty:
                if watch and self.stop.local():
                    return None
                continue
            self._pending = False
            if ok:
                return value
            raise value

    def close(self, timeout_s: float = 60.0) -> None:
        """End the thread once its current read (if any) returns. Without a read in flight, wait
        for it (up to ``timeout_s``): the thread holds the loader's iterator, whose workers shut
        down when it goes, and a daemon thread still doing that when the interpreter exits is
        killed inside torch's C++ ("terminate called without an active exception", SIGABRT: seen
        at the end of a 2-process run with a loader worker). A read that is stalled is not
        waited for."""
        self._asked.put(False)
        if not self._pending:
            self._thread.join(timeout=timeout_s)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """This process's peak memory in MiB and what was measured: allocated CUDA memory on a GPU,
    else the peak resident set size (model, activations, Python and all)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA allocated"
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 1024), "process RSS"
