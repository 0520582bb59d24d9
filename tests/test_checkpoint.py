"""Checkpoint folders: which are complete, which one a resume picks."""

import pytest

from pare.checkpoint import COMPLETE, checkpoint_dir, complete_checkpoints, resolve_resume


def test_only_complete_checkpoints_are_resumed(tmp_path):
    for step in (5, 10, 20):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
    (checkpoint_dir(tmp_path, 5) / COMPLETE).touch()
    (checkpoint_dir(tmp_path, 10) / COMPLETE).touch()  # 20 was killed while saving
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-0000005", "step-0000010"]
    assert resolve_resume(tmp_path, "auto") == checkpoint_dir(tmp_path, 10)
    assert resolve_resume(tmp_path, "") is None
    assert resolve_resume(tmp_path / "fresh", "auto") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, 20)))
