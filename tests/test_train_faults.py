"""Faults at cluster scale (#15), injected into real training runs: a full disk during a
checkpoint save, a cut or foreign backbone weight file, a damaged RNG state in the checkpoint a
run resumes from, validation splits without a sample, and a stop request while the trainer
waits for data that does not come. Each test failed (or hung) before its fix.

Run as a script, this file is train/train.py with the faults its environment asks for (as
tests/train/nonfinite_train.py is for NaN losses), so a test can inject them without a hook in
the training code:

    PARE_FAULT_DISK_FULL=step-0000005 python tests/test_train_faults.py [train.py arguments]

- ``PARE_FAULT_DISK_FULL=TEXT``: writing a file whose path contains TEXT (torch.save, safetensors)
  writes a few bytes, then fails with ENOSPC, as a full disk does.
- ``PARE_FAULT_STALL_AFTER=N``: making the batch after the N-th of a loader process (a worker,
  or the trainer itself with data.num_workers=0) blocks for an hour, as a read on a stalled
  network filesystem does; ``PARE_FAULT_STALL_RANK=R`` limits it to rank R, and
  ``PARE_FAULT_STALLED=FILE`` is created when the stall begins.
"""

import errno
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parents[1]
TRAIN = ROOT / "train" / "train.py"


# ---------------------------------------------------------------------- the script: faults in


def _disk_full(text: str) -> None:
    import accelerate.utils.other
    import safetensors.torch

    def failing(write):
        def write_or_fail(obj, target, *args, **kwargs):
            if text in str(target):
                Path(target).write_bytes(b"\0" * 64)  # what fitted before the disk was full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
            return write(obj, target, *args, **kwargs)

        return write_or_fail

    torch.save = failing(torch.save)  # accelerate's optimizer, scheduler and RNG files
    accelerate.utils.other.safe_save_file = failing(accelerate.utils.other.safe_save_file)
    safetensors.torch.save_file = failing(safetensors.torch.save_file)  # exported weights


def _stall(after: int, rank: str, marker: str) -> None:
    from pare.data.streaming import stream

    collate, batches = stream.collate, [0]

    def collate_or_stall(samples):
        if rank in ("", os.environ.get("RANK", "0")):
            batches[0] += 1
            if batches[0] > after:
                if marker:
                    Path(marker).touch()
                time.sleep(3600)
        return collate(samples)

    stream.collate = collate_or_stall  # train_loader batches with it


def _run_train_with_faults(argv: list[str]) -> None:
    spec = importlib.util.spec_from_file_location("train_with_faults", TRAIN)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    if os.environ.get("PARE_FAULT_DISK_FULL"):
        _disk_full(os.environ["PARE_FAULT_DISK_FULL"])
    if os.environ.get("PARE_FAULT_STALL_AFTER"):
        _stall(
            int(os.environ["PARE_FAULT_STALL_AFTER"]),
            os.environ.get("PARE_FAULT_STALL_RANK", ""),
            os.environ.get("PARE_FAULT_STALLED", ""),
        )
    from pare.launch import run_entry_point

    run_entry_point(lambda: train.main(argv), train.ENTRY_ERRORS)


# ---------------------------------------------------------------------- the tests

pytestmark = pytest.mark.slow
ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
ENV = {k: v for k, v in ENV.items() if not k.startswith("PARE_FAULT_")}


def _args(packed, out, *extra):
    """A tiny run (64 px crops, batches of 2): seconds per step on a busy 2-core machine."""
    return [
        "model.backbone=hrnet_w18_small",
        "model.branch_channels=16",
        "model.branch_layers=1",
        f"data.train=[{{path: {packed / '3dpw'}, weight: 0.5}}, "
        f"{{path: {packed / 'mpii'}, weight: 0.5}}]",
        f"data.val=[{{path: {packed / '3dpw_val'}, weight: 1.0}}]",
        "data.crop_size=64",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.shuffle_buffer=10",
        "data.steps_per_epoch=5",
        "optim.lr=1e-3",
        f"train.output_dir={out}",
        "train.eval_every=1000",
        "train.image_every=0",
        "train.log_every=1",
        "logging.wandb_mode=disabled",
        *extra,
    ]


def _command(args, launcher=(), faults=True):
    """train/train.py itself, or with ``faults`` this file as the script that injects them."""
    script = Path(__file__) if faults else TRAIN
    return [*(launcher or [sys.executable]), str(script), *args]


def _run(args, faults=None, check=True, timeout=600):
    env = dict(ENV, **(faults or {}))
    command = _command(args, faults=bool(faults))
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


def _error_line(out) -> str:
    """The one ``error:`` line a failed run must end with (and no traceback before it)."""
    assert out.returncode == 2, out.stderr[-4000:]
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), out.stderr[-4000:]
    return last


def _checkpoints(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def straight(packed, tmp_path_factory):
    """An uninterrupted 4-step run with a checkpoint after every step: what interrupted and
    resumed runs must reproduce, and checkpoints to resume from."""
    run = tmp_path_factory.mktemp("faults") / "straight"
    _run(
        _args(
            packed, run, "train.max_steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=9"
        )
    )
    assert _checkpoints(run) == [f"step-000000{i}" for i in (1, 2, 3, 4)]
    return run


def _copy_run(straight, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight, run)
    (run / "DONE").unlink()
    return run


# ------------------------------------------------------------------ a full disk while saving


def test_a_full_disk_while_saving_names_the_cause_and_leaves_nothing_behind(
    packed, straight, tmp_path
):
    """It used to stop with torch's "unexpected pos ..." traceback and leave a half-written
    step-*.tmp folder, whose space the next save needed too."""
    run = _copy_run(straight, tmp_path)
    # What saves and prunes killed mid-way leave; a restart must clear them, not trip on them.
    (run / "checkpoints" / "step-0000009.tmp").mkdir()
    (run / "checkpoints" / "step-0000009.tmp" / "optimizer.bin").write_bytes(b"\0" * 1000)
    (run / "checkpoints" / "step-0000007").mkdir()
    (run / "checkpoints" / "step-0000007" / "model.safetensors").write_bytes(b"\0" * 1000)
    args = _args(packed, run, "train.max_steps=5", "train.resume=auto", "train.keep_checkpoints=9")
    out = _run(args, {"PARE_FAULT_DISK_FULL": "step-0000005"}, check=False)
    last = _error_line(out)
    assert "no space left on device while saving checkpoint" in last
    assert str(run / "checkpoints" / "step-0000005") in last and "MiB free on" in last
    assert "train.output_dir" in last and "train.keep_checkpoints" in last
    assert f"the last complete checkpoint, {run / 'checkpoints' / 'step-0000004'}, is kept" in last
    assert _checkpoints(run) == [f"step-000000{i}" for i in (1, 2, 3, 4)]  # nothing half-written
    assert (run / "checkpoints" / "step-0000004" / "COMPLETE").is_file()

    _run(args)  # with space again, the run goes on from the kept checkpoint
    assert json.loads((run / "DONE").read_text())["step"] == 5
    assert _checkpoints(run)[-1] == "step-0000005"


# ------------------------------------------------------------------ backbone weight files


def _cut(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("damage", ["cut zip", "cut legacy pickle", "not a checkpoint"])
def test_a_damaged_backbone_weight_file_is_named_in_one_line(packed, tmp_path, damage):
    """A cut .pth used to end train.py with a torch traceback."""
    weights = tmp_path / "pose_hrnet_w18_small.pth"
    state = {"conv1.weight": torch.randn(64, 3, 3, 3), "bn1.running_mean": torch.zeros(64)}
    if damage == "cut zip":
        torch.save(state, weights)
        _cut(weights)
    elif damage == "cut legacy pickle":  # torch < 1.6's format: only loading can tell
        torch.save(state, weights, _use_new_zipfile_serialization=False)
        _cut(weights)
    else:
        weights.write_text("<html>404 Not Found</html>\n")  # a failed download
    args = _args(packed, tmp_path / "run", "train.max_steps=1", f"model.backbone_weights={weights}")
    last = _error_line(_run(args, check=False))
    assert f"backbone weights {weights} (model.backbone_weights)" in last
    assert "model.backbone_weights=random" in last
    assert ("not a readable" if damage == "not a checkpoint" else "truncated") in last


def test_a_missing_occluder_folder_stops_the_run_before_it_builds(packed, tmp_path):
    """Checked when training starts (run configs load elsewhere without the folder)."""
    folder = tmp_path / "no_occluders"
    args = _args(packed, tmp_path / "run", "train.max_steps=1", f"data.augment.occluders={folder}")
    last = _error_line(_run(args, check=False, timeout=120))
    assert str(folder) in last and "make_occluders.py" in last
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ a damaged RNG state


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_rng_state_stops_the_resume_naming_the_file(packed, straight, tmp_path, damage):
    """Accelerate used to note it at info level and resume with other random states."""
    run = _copy_run(straight, tmp_path)
    rng = run / "checkpoints" / "step-0000004" / "random_states_0.pkl"
    if damage == "truncated":
        _cut(rng)
    else:
        rng.write_bytes(os.urandom(2000))
    args = _args(packed, run, "train.max_steps=5", "train.resume=auto")
    last = _error_line(_run(args, check=False))
    assert f"{rng} is truncated or damaged" in last
    assert f"train.resume={run / 'checkpoints' / 'step-0000003'}" in last
    assert not (run / "checkpoints" / "step-0000005").exists()


# ------------------------------------------------------------------ validation without samples


def _empty_split(packed, tmp_path):
    split = tmp_path / "3dpw_val_empty"
    split.mkdir()
    manifest = json.loads((packed / "3dpw_val" / "manifest.json").read_text())
    manifest.update(num_samples=0, num_bytes=0, shardlist=[])  # a split packed from nothing
    (split / "manifest.json").write_text(json.dumps(manifest))
    return split


def test_validation_splits_that_hold_no_sample_stop_the_run(packed, tmp_path):
    """Evaluation used to turn itself off without a word: no val/* metrics, no best/ weights."""
    empty = _empty_split(packed, tmp_path)
    args = [a for a in _args(packed, tmp_path / "run", "train.max_steps=1") if "data.val=" not in a]
    out = _run([*args, f"data.val=[{{path: {empty}, weight: 1.0}}]"], check=False)
    last = _error_line(out)
    assert f"every data.val source holds 0 samples ({empty})" in last and "data.val=[]" in last


def test_an_empty_validation_split_among_others_is_named_and_skipped(packed, tmp_path):
    spec = importlib.util.spec_from_file_location("train_script", TRAIN)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    from pare.config import ConfigError, DatasetSource

    empty, full = str(_empty_split(packed, tmp_path)), str(packed / "3dpw_val")
    urls, skipped = train.validation_sources([DatasetSource(empty), DatasetSource(full)])
    assert skipped == [empty] and urls and all(u.startswith(full) for u in urls)
    with pytest.raises(ConfigError, match=r"every data\.val source holds 0 samples"):
        train.validation_sources([DatasetSource(empty)])
    assert train.validation_sources([]) == ([], [])  # data.val=[]: no evaluation, asked for


# ------------------------------------------------------------------ a stop while data stalls


def _train_until_stalled(args, stalled, faults, launcher=(), env=ENV):
    """Start a run whose data stalls after 3 batches, wait until it trained them and waits for
    the 4th, then SIGTERM its process group. (exit status, stderr, when the signal was sent
    (wall clock), seconds until the process exited)."""
    proc = subprocess.Popen(
        _command(args, launcher),
        env=dict(env, **faults),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a job step has
    )
    run = Path(next(a.split("=", 1)[1] for a in args if a.startswith("train.output_dir=")))
    log, deadline = run / "train.log", time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        if stalled.exists() and log.is_file() and " INFO step 3 " in log.read_text():
            break
        time.sleep(0.2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"the run did not train 3 steps and stall:\n{proc.communicate()[1][-3000:]}")
    time.sleep(2)  # the trainer is now inside its wait for the 4th batch (it will never come)
    assert proc.poll() is None, proc.communicate()[1][-4000:]
    start, signalled_at = time.monotonic(), time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        pytest.fail(f"the stop request waited for the stalled data:\n{stderr[-3000:]}")
    return proc.returncode, stderr, signalled_at, time.monotonic() - start


def _assert_saved_soon(run, signalled_at, took):
    """The stop saved the last completed step within seconds of the signal (the process then
    takes a few more to tear down: torch's unloading, the launcher's)."""
    complete = run / "checkpoints" / "step-0000003" / "COMPLETE"
    assert complete.is_file(), f"no checkpoint of step 3: {_checkpoints(run)}"
    saved_after = complete.stat().st_mtime - signalled_at
    assert saved_after < 5, f"saved {saved_after:.1f} s after the signal"
    assert took < 30, f"exited {took:.1f} s after the signal"


def _assert_same_checkpoint(got, expected):
    """Two checkpoints of the same step of the same run: weights, stream position, RNG."""
    a, b = load_file(str(expected / "model.safetensors")), load_file(str(got / "model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name
    want, have = (json.loads((c / "trainer_state.json").read_text()) for c in (expected, got))
    assert have["stream"] == want["stream"] and have["train"]["step"] == want["train"]["step"]
    rng = [torch.load(c / "random_states_0.pkl", weights_only=False) for c in (expected, got)]
    assert torch.equal(rng[0]["torch_manual_seed"], rng[1]["torch_manual_seed"])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_stop_request_acts_while_the_trainer_waits_for_data(packed, straight, tmp_path, workers):
    """The trainer used to wait for the next batch before it looked at the request: with a
    stalled source, until SLURM killed it without a checkpoint."""
    run = tmp_path / "run"
    extra = ["train.max_steps=4", "train.checkpoint_every=100", f"data.num_workers={workers}"]
    stalled = tmp_path / "stalled"
    faults = {"PARE_FAULT_STALL_AFTER": "3", "PARE_FAULT_STALLED": str(stalled)}
    status, stderr, signalled_at, took = _train_until_stalled(
        _args(packed, run, *extra), stalled, faults
    )
    assert status == 0, stderr[-4000:]
    _assert_saved_soon(run, signalled_at, took)
    assert "stopped (SIGTERM) at step 3" in (run / "train.log").read_text()
    # The last completed step's state, as the uninterrupted run saved it there.
    assert _checkpoints(run) == ["step-0000003"]
    _assert_same_checkpoint(
        run / "checkpoints" / "step-0000003", straight / "checkpoints" / "step-0000003"
    )

    if workers:  # resuming reaches the uninterrupted run's weights
        _run(_args(packed, run, *extra, "train.resume=auto"))
        a, b = (
            load_file(str(straight / "model.safetensors")),
            load_file(str(run / "model.safetensors")),
        )
        for name in a:
            torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_a_stop_request_acts_while_one_rank_waits_for_data(packed, tmp_path):
    """Two processes, rank 1's data stalled: rank 0 waits in the step's first collective, rank
    1 for its batch; both must stop together at the last completed step (not hang)."""
    from pare.launch import accelerate_launch_command

    run = tmp_path / "run"
    extra = ["train.max_steps=4", "train.checkpoint_every=100", "data.num_workers=1"]
    stalled = tmp_path / "stalled"
    faults = {
        "PARE_FAULT_STALL_AFTER": "3",
        "PARE_FAULT_STALL_RANK": "1",
        "PARE_FAULT_STALLED": str(stalled),
    }
    launcher = accelerate_launch_command(2, 29547)
    _, stderr, signalled_at, took = _train_until_stalled(
        _args(packed, run, *extra), stalled, faults, launcher, dict(ENV, ACCELERATE_USE_CPU="1")
    )
    assert "killed by signal" not in stderr, stderr[-4000:]
    assert _checkpoints(run) == ["step-0000003"], stderr[-4000:]
    _assert_saved_soon(run, signalled_at, took)
    state = json.loads((run / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["train"]["step"] == 3 and state["stream"]["batches"] == 3


if __name__ == "__main__":
    _run_train_with_faults(sys.argv[1:])
