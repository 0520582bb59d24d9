"""Launch checks, stop requests, and waiting for data while listening for them."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pare.launch import (
    LaunchError,
    StoppableReader,
    StopRequest,
    _launcher_processes,
    check_launch,
)


def test_launcher_process_count_is_read_from_the_parent_command_line():
    code = "import time; time.sleep(20)"
    for flags, expected in ((["--num_processes", "3"], 3), (["--num-processes=4"], 4), ([], None)):
        proc = subprocess.Popen(
            [
                "bash",
                "-c",
                f'exec -a /x/bin/accelerate {sys.executable} -c "{code}" "$@"',
                "_",
                "launch",
                *flags,
            ]
        )
        try:
            time.sleep(0.3)
            assert _launcher_processes(proc.pid) == expected
        finally:
            proc.kill()
            proc.wait()
    assert _launcher_processes(os.getpid()) is None  # pytest is no launcher


def test_check_launch_names_the_fix(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(LaunchError, match="ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu"):
        check_launch(1)
    check_launch(2)
    monkeypatch.delenv("WORLD_SIZE")
    check_launch(1)


def test_stop_requests_from_file_budget_and_signal(tmp_path):
    stop = StopRequest(tmp_path)
    assert not stop.local()
    (tmp_path / "STOP").touch()
    assert stop.local() and "STOP" in stop.reason
    assert StopRequest(tmp_path / "elsewhere", budget_s=1e-6).local()
    stop = StopRequest(tmp_path / "elsewhere").install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.local() and stop.reason == "SIGUSR1"
    finally:
        stop.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL


def _slow_then_stuck(release):
    """1, then 2 once ``release`` is set, then nothing ever (a stalled read)."""
    yield 1
    release.wait()
    yield 2
    threading.Event().wait()


def test_a_reader_waiting_for_data_hears_a_stop_request(tmp_path):
    """A trainer calling next() on its loader itself only saw a stop once the batch came."""
    release = threading.Event()
    stop = StopRequest(tmp_path).install()
    try:
        reader = StoppableReader(_slow_then_stuck(release), stop, poll_s=0.05)
        assert reader.next() == 1
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1)).start()
        start = time.monotonic()
        assert reader.next() is None and stop.reason == "SIGUSR1"
        assert time.monotonic() - start < 2
        # The read goes on: unwatched, the item it was waiting for still comes.
        threading.Timer(0.2, release.set).start()
        assert reader.next(watch=False) == 2
        assert reader.next() is None  # asked to stop: no waiting at all
        reader.close()
    finally:
        stop.uninstall()


def test_a_reader_raises_what_reading_raised(tmp_path):
    def broken():
        yield 1
        raise ValueError("shard 3 cannot be read")

    reader = StoppableReader(broken(), StopRequest(tmp_path))
    assert reader.next() == 1
    with pytest.raises(ValueError, match="shard 3 cannot be read"):
        reader.next()


def test_closing_a_reader_waits_until_its_iterator_is_released(tmp_path):
    """The reader's thread owns the loader's iterator; the process must not exit while that
    thread still shuts the loader down (a SIGABRT at the end of a 2-process demo run)."""
    released = threading.Event()

    def loader():
        try:
            while True:
                yield 1
        finally:
            time.sleep(0.5)  # a loader shutting its workers down
            released.set()

    reader = StoppableReader(loader(), StopRequest(tmp_path))
    assert reader.next() == 1
    reader.close()
    assert released.is_set()


def test_the_launch_record_counts_the_global_batch_and_reads_as_one_line():
    from pare.launch import describe_launch, launch_record

    record = launch_record("launcher", "bf16", 8, 8, 2)
    assert record["global_batch"] == 8 * 8 * 2 == 128
    line = describe_launch(record)
    assert line == (
        "mixed precision bf16 (train.mixed_precision=launcher), 8 processes, global batch 128 = "
        "8 per process x 8 x 2 accumulation"
    )
    assert "1 process," in describe_launch(launch_record("no", "no", 1, 4, 1))


@pytest.mark.parametrize(
    ("configured", "effective", "device", "env", "warns"),
    [
        ("launcher", "no", "cuda", {}, True),  # torchrun / python on a GPU: silent fp32 before
        ("launcher", "no", "cuda", {"ACCELERATE_MIXED_PRECISION": "no"}, False),  # chosen
        ("launcher", "bf16", "cuda", {"ACCELERATE_MIXED_PRECISION": "bf16"}, False),
        ("no", "no", "cuda", {}, False),  # fp32 asked for in the config
        ("launcher", "no", "cpu", {}, False),  # CPU runs are fp32 by design
    ],
)
def test_fp32_on_a_gpu_by_omission_is_warned(configured, effective, device, env, warns):
    from pare.launch import silent_fp32_warning

    message = silent_fp32_warning(configured, effective, device, env)
    assert (message is not None) == warns
    if warns:
        assert "train.mixed_precision=bf16" in message and "accelerate launch" in message
