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
from functools import partial

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import accelerate_launch
from tests.train.conftest import TWO_PROCESS_EXTRA
from tests.train.test_train import (
    ENV,
    RESUME_EXTRA,
    TRAIN,
    _args,
    _concurrently,
    _logged_steps,
    _timed,
    _train,
    _train_into,
)

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
def test_sigterm_to_the_process_group_saves_and_resumes_exactly(packed, tmp_path, launch, request):
    """`timeout`, `kill -TERM -PGID` and SLURM job steps signal every process of the job: the
    loader workers too, which used to die first and crash the trainer before it saved."""
    # The uninterrupted run trains in the background while the interrupted one does.
    if launch == "2 loader workers":
        extra = [*RESUME_EXTRA, "data.num_workers=2"]
        launcher, env = (), ENV
        straight = tmp_path / "straight"
        (reference,) = _concurrently(
            partial(_train_into, straight, _args(packed, straight, *extra))
        )
    else:  # shared with test_train.py's DDP test (tests/train/conftest.py)
        extra = list(TWO_PROCESS_EXTRA)
        launcher, env = accelerate_launch(2, 29541), dict(ENV, ACCELERATE_USE_CPU="1")
        reference = request.getfixturevalue("two_process_run")

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
    assert 3 <= stopped_at < 10, "the signal arrived too late to test a resume"
    assert not (interrupted / "DONE").exists()

    _train(_args(packed, interrupted, *extra, "train.resume=auto"), launcher, env=env)
    assert json.loads((interrupted / "DONE").read_text())["step"] == 10
    straight = reference.result()
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


# ------------------------------------------------------------------ shards that cannot be read


UNREADABLE_FAULTS = ("shards deleted", "shards unreadable", "shards of another size")
EXPECTED = {
    "shards deleted": "none of the",  # at start: the manifest lists files that are gone
    "shards unreadable": "no shard of",  # when read: same sizes, not tar files
    "shards of another size": "bytes but",  # at start: another pack's shards, or cut copies
}
LOADER_WORKERS = (0, 1)


@pytest.fixture(scope="module")
def unreadable_source_runs(packed, tmp_path_factory):
    """Every case of the test below, started side by side (each stops within seconds of
    starting): (fault, workers) -> (the split, a future of (completed run, seconds))."""
    cases = {}
    for fault in UNREADABLE_FAULTS:
        for workers in LOADER_WORKERS:
            tmp_path = tmp_path_factory.mktemp("unreadable")
            split = _copy_split(packed, "3dpw", tmp_path)
            for shard in split.glob("*.tar"):
                if fault == "shards deleted":
                    shard.unlink()
                elif fault == "shards unreadable":  # the size the manifest lists: read fails
                    size = shard.stat().st_size
                    shard.write_bytes((b"\x01not a tar file" * (size // 15 + 1))[:size])
                else:
                    shard.write_bytes(b"\x00not a tar file" * 100)
            args = _only(split, _args(packed, tmp_path / "run", "train.max_steps=2"))
            args = [*args, f"data.num_workers={workers}"]
            cases[fault, workers] = split, partial(_train, args, check=False, timeout=180)
    runs = _concurrently(*(partial(_timed, call) for _, call in cases.values()))
    return {key: (split, run) for (key, (split, _)), run in zip(cases.items(), runs, strict=True)}


@pytest.mark.parametrize("fault", UNREADABLE_FAULTS)
@pytest.mark.parametrize("workers", LOADER_WORKERS)
def test_training_source_without_a_readable_shard_stops_naming_it(
    unreadable_source_runs, fault, workers
):
    """It used to wait forever, printing warnings, deaf to SIGTERM."""
    split, run = unreadable_source_runs[fault, workers]
    out, seconds = run.result()
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(split) in last, out.stderr[-3000:]
    assert EXPECTED[fault] in last, last
    assert seconds < 120


# ------------------------------------------------------------------ damaged samples


def _damage_images(shard, keep_bytes=200):
    """Rewrite ``shard`` with every JPEG cut to its first bytes (a sample that cannot decode),
    zero-padded to its listed size (a shard of another size is refused before training)."""
    size = shard.stat().st_size
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            data = tar.extractfile(m).read()
            members.append((m, data[:keep_bytes] if m.name.endswith(".jpg") else data))
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, data in members:
            m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    with shard.open("ab") as f:  # zero blocks after the archive's end: tar readers skip them
        f.write(bytes(size - shard.stat().st_size))
    assert shard.stat().st_size == size
    return [m.name.split(".")[0] for m, _ in members if m.name.endswith(".jpg")]


def test_damaged_samples_are_skipped_named_and_limited(packed, tmp_path):
    """A corrupt JPEG used to crash training without naming it, and every resume replayed the
    same crash: now each is skipped and logged with its shard and key, up to a limit."""
    split = _copy_split(packed, "3dpw", tmp_path)
    shard = sorted(split.glob("*.tar"))[0]
    keys = _damage_images(shard)
    run = tmp_path / "run"
    args = _only(split, _args(packed, run, "train.max_steps=3", "train.log_every=1"))
    # The run that completes, and (checked below) the strict one, side by side.
    completes, strict = _concurrently(
        partial(_train, args),
        partial(
            _train,
            [*args, "data.max_bad_samples=0", f"train.output_dir={tmp_path / 'strict'}"],
            check=False,
        ),
    )
    completes.result()
    skipped = [x for x in (run / "train.log").read_text().splitlines() if "unreadable" in x]
    assert skipped, "no skipped sample was logged"
    assert all(shard.name in x for x in skipped)
    assert any(key in x for x in skipped for key in keys)
    assert json.loads((run / "DONE").read_text())["step"] == 3

    out = strict.result()
    assert out.returncode == 2, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert "data.max_bad_samples=0" in last and shard.name in last, out.stderr[-3000:]


CUTS = ("inside a member", "at a member boundary")


@pytest.fixture(scope="module")
def damaged_validation_runs(packed, tmp_path_factory):
    """Both cases of the test below, started side by side: cut -> (the damaged shard, the run
    folder, a future of the completed run)."""
    cases = {}
    for cut in CUTS:
        tmp_path = tmp_path_factory.mktemp("damaged_val")
        val = _copy_split(packed, "3dpw_val", tmp_path)
        shard = sorted(val.glob("*.tar"))[0]
        with tarfile.open(shard) as tar:
            members = tar.getmembers()
        # Damage the second sample in place, at the size the manifest lists (a shard of another
        # size is refused before training starts, see above): its npz overwritten, or its npz
        # member lost (the rest of the archive moved up, zeros to the end).
        last = [m for m in members if m.name.endswith(".npz")][1]
        data = bytearray(shard.read_bytes())
        if cut == "inside a member":
            data[last.offset_data : last.offset_data + 64] = b"\xff" * 64
        else:
            end = last.offset_data + -(-last.size // 512) * 512  # past the member's blocks
            data = data[: last.offset] + data[end:] + bytes(end - last.offset)
        shard.write_bytes(bytes(data))
        run = tmp_path / "run"
        args = _args(
            packed, run, "train.max_steps=2", "train.eval_every=2", "train.checkpoint_every=100"
        )
        args = [a for a in args if not a.startswith("data.val=")]
        args = [*args, f"data.val=[{{path: {val}, weight: 1.0}}]"]
        cases[cut] = shard, run, partial(_train, args, check=False)
    runs = _concurrently(*(call for _, _, call in cases.values()))
    return {
        cut: (shard, run, future)
        for (cut, (shard, run, _)), future in zip(cases.items(), runs, strict=True)
    }


@pytest.mark.parametrize("cut", CUTS)
def test_a_damaged_validation_shard_stops_after_saving(damaged_validation_runs, cut):
    """In-loop evaluation used to crash on a truncated validation shard and lose the steps since
    the last checkpoint: the state is saved before evaluating, and the error names the shard."""
    shard, run, future = damaged_validation_runs[cut]
    out = future.result()
    assert out.returncode == 2, out.stderr[-3000:]
    last_line = out.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and shard.name in last_line, out.stderr[-3000:]
    assert (run / "checkpoints" / "step-0000002" / "COMPLETE").is_file()
