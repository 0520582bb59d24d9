"""Faults a cluster produces daily, injected into real training runs: a signal to the whole
process group, training shards that cannot be read, damaged samples. Each test failed (or hung)
before its fix."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import accelerate_launch
from tests.train.test_train import ENV, TRAIN, _args, _logged_steps, _train

pytestmark = pytest.mark.slow


def _copy_split(packed, name, tmp_path):
    target = tmp_path / name
    shutil.copytree(packed / name, target)
    return target


def _only(source, args):
    """``args`` with the training mix replaced by one source."""
    args = [a for a in args if not a.startswith("data.train=")]
    return [*args, f"data.train=[{{path: {source}, weight: 1.0}}]"]


# ------------------------------------------------------------------ a signal to the whole group


@pytest.mark.parametrize("launch", ["2 loader workers", "2 processes"])
def test_sigterm_to_the_process_group_saves_and_resumes_exactly(packed, tmp_path, launch):
    """`timeout`, `kill -TERM -PGID` and SLURM job steps signal every process of the job: the
    loader workers too, which used to die first and crash the trainer before it saved."""
    extra = ["train.max_steps=8", "train.log_every=1", "train.checkpoint_every=100"]
    extra.append("data.num_workers=2" if launch == "2 loader workers" else "data.num_workers=1")
    launcher, env = (), ENV
    if launch == "2 processes":
        launcher, env = accelerate_launch(2, 29541), dict(ENV, ACCELERATE_USE_CPU="1")
    straight = tmp_path / "straight"
    _train(_args(packed, straight, *extra), launcher, env=env)

    interrupted = tmp_path / "interrupted"
    cmd = [*(launcher or [sys.executable]), str(TRAIN), *_args(packed, interrupted, *extra)]
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job step has
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log = interrupted / "train.log"
        if log.is_file() and any(s >= 3 for s in _logged_steps(interrupted)):
            os.killpg(proc.pid, signal.SIGTERM)
            break
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=300)
    checkpoints = list((interrupted / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1, stderr[-3000:]
    assert "killed by signal" not in stderr, stderr[-3000:]
    if not launcher:  # the launcher itself reports the signal with its own exit status
        assert proc.returncode == 0, stderr[-3000:]
    stopped_at = int(checkpoints[0].name.split("-")[1])
    assert 3 <= stopped_at < 8, "the signal arrived too late to test a resume"
    assert not (interrupted / "DONE").exists()

    _train(_args(packed, interrupted, *extra, "train.resume=auto"), launcher, env=env)
    assert json.loads((interrupted / "DONE").read_text())["step"] == 8
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


# ------------------------------------------------------------------ shards that cannot be read


@pytest.mark.parametrize("fault", ["shards deleted", "shards unreadable"])
@pytest.mark.parametrize("workers", [0, 1])
def test_training_source_without_a_readable_shard_stops_naming_it(packed, tmp_path, fault, workers):
    """It used to wait forever, printing warnings, deaf to SIGTERM."""
    split = _copy_split(packed, "3dpw", tmp_path)
    for shard in split.glob("*.tar"):
        if fault == "shards deleted":
            shard.unlink()
        else:
            shard.write_bytes(b"\x00not a tar file" * 100)
    args = _only(split, _args(packed, tmp_path / "run", "train.max_steps=2"))
    start = time.monotonic()
    out = _train([*args, f"data.num_workers={workers}"], check=False, timeout=180)
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(split) in last, out.stderr[-3000:]
    assert ("none of the" if fault == "shards deleted" else "no shard of") in last
    assert time.monotonic() - start < 120


# ------------------------------------------------------------------ damaged samples


def _damage_images(shard, keep_bytes=200):
    """Rewrite ``shard`` with every JPEG cut to its first bytes (a sample that cannot decode)."""
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            members.append((m, data[:keep_bytes] if m.name.endswith(".jpg") else data))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    return [m.name.split(".")[0] for m, _ in members if m.name.endswith(".jpg")]


def test_damaged_samples_are_skipped_named_and_limited(packed, tmp_path):
    """A corrupt JPEG used to crash training without naming it, and every resume replayed the
    same crash: now each is skipped and logged with its shard and key, up to a limit."""
    split = _copy_split(packed, "3dpw", tmp_path)
    shard = sorted(split.glob("*.tar"))[0]
    keys = _damage_images(shard)
    run = tmp_path / "run"
    args = _only(split, _args(packed, run, "train.max_steps=3", "train.log_every=1"))
    _train(args)  # completes
    skipped = [x for x in (run / "train.log").read_text().splitlines() if "unreadable" in x]
    assert skipped, "no skipped sample was logged"
    assert all(shard.name in x for x in skipped)
    assert any(key in x for x in skipped for key in keys)
    assert json.loads((run / "DONE").read_text())["step"] == 3

    out = _train(
        [*args, "data.max_bad_samples=0", f"train.output_dir={tmp_path / 'strict'}"], check=False
    )
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "data.max_bad_samples=0" in last and shard.name in last, out.stderr[-3000:]


@pytest.mark.parametrize("cut", ["inside a member", "at a member boundary"])
def test_a_damaged_validation_shard_stops_after_saving(packed, tmp_path, cut):
    """In-loop evaluation used to crash on a truncated validation shard and lose the steps since
    the last checkpoint: the state is saved before evaluating, and the error names the shard."""
    val = _copy_split(packed, "3dpw_val", tmp_path)
    shard = sorted(val.glob("*.tar"))[0]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    # Cut inside the second sample's last member, or just before it (its npz lost).
    last = [m for m in members if m.name.endswith(".npz")][1]
    end = last.offset_data + (last.size // 2 if cut == "inside a member" else 0)
    end = end if cut == "inside a member" else last.offset
    shard.write_bytes(shard.read_bytes()[:end])
    run = tmp_path / "run"
    args = _args(
        packed, run, "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=100"
    )
    args = [a for a in args if not a.startswith("data.val=")]
    out = _train([*args, f"data.val=[{{path: {val}, weight: 1.0}}]"], check=False)
    assert out.returncode == 2, out.stderr[-3000:]
    last_line = out.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and shard.name in last_line, out.stderr[-3000:]
    assert (run / "checkpoints" / "step-0000002" / "COMPLETE").is_file()
