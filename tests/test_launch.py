"""Launch checks and stop requests."""

import os
import signal
import subprocess
import sys
import time

import pytest

from pare.launch import LaunchError, StopRequest, _launcher_processes, check_launch


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
