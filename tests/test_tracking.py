"""The upload procedure printed for offline W&B runs, against the folders a requeued job leaves."""

import shlex
from pathlib import Path

import pytest

from pare.tracking import sync_commands

# A run requeued twice (three segments of id abc12345, made out of order on disk) and a second,
# unrelated run started between its segments.
FOLDERS = [
    "offline-run-20261129_101500-abc12345",
    "offline-run-20261129_090000-abc12345",
    "offline-run-20261129_093000-zzz99999",
    "offline-run-20261129_120000-abc12345",
]


@pytest.fixture
def wandb_dir(tmp_path):
    for name in FOLDERS:
        (tmp_path / name).mkdir()
    (tmp_path / "latest-run").mkdir()  # wandb's own link/folder: not a run
    (tmp_path / "debug.log").write_text("")
    return tmp_path


def _segments(wandb_dir, *names):
    return [str(wandb_dir / n) for n in names]


def test_newer_wandb_gets_one_command_per_run_with_segments_oldest_first(wandb_dir):
    a, b, c = _segments(
        wandb_dir,
        "offline-run-20261129_090000-abc12345",
        "offline-run-20261129_101500-abc12345",
        "offline-run-20261129_120000-abc12345",
    )
    other = str(wandb_dir / "offline-run-20261129_093000-zzz99999")
    assert sync_commands(wandb_dir, append=False) == [
        f"wandb sync --id abc12345 {a} {b} {c}",
        f"wandb sync {other}",
    ]


def test_older_wandb_appends_each_later_segment_to_the_first(wandb_dir):
    a, b, c = _segments(
        wandb_dir,
        "offline-run-20261129_090000-abc12345",
        "offline-run-20261129_101500-abc12345",
        "offline-run-20261129_120000-abc12345",
    )
    commands = sync_commands(wandb_dir, append=True)
    assert commands[:3] == [
        f"wandb sync --id abc12345 {a}",
        f"wandb sync --id abc12345 --append {b}",
        f"wandb sync --id abc12345 --append {c}",
    ]
    assert commands[3] == f"wandb sync {wandb_dir / 'offline-run-20261129_093000-zzz99999'}"


def test_the_installed_wandb_decides_and_paths_are_quoted(tmp_path):
    from wandb.cli import cli

    (tmp_path / "my runs").mkdir()
    names = ["offline-run-20261129_090000-id1", "offline-run-20261129_100000-id1"]
    for name in names:
        (tmp_path / "my runs" / name).mkdir()
    commands = [shlex.split(c) for c in sync_commands(tmp_path / "my runs")]
    if any(p.name == "append" for p in cli.sync.params):  # older wandb: one folder per command
        assert [c[:4] for c in commands] == [["wandb", "sync", "--id", "id1"]] * 2
        assert commands[1][4] == "--append"
    else:  # newer wandb: one command, oldest segment first
        assert len(commands) == 1 and commands[0][:4] == ["wandb", "sync", "--id", "id1"]
    # Every segment once, oldest first, as one shell word each (the folder has a space).
    paths = [Path(a) for c in commands for a in c if "offline-run-" in a]
    assert [p.name for p in paths] == names and {p.parent for p in paths} == {tmp_path / "my runs"}


def test_no_offline_runs_no_commands(tmp_path):
    assert sync_commands(tmp_path) == []
    assert sync_commands(tmp_path / "missing") == []
