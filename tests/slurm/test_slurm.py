"""slurm/train.sbatch on a real two-node SLURM cluster (localhost, tests/slurm/cluster.py):
2 nodes x 1 CPU process, a preemption signal to the batch shell or to every process of the job,
the requeue and the resume."""

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from pare.config import load_config
from tests.train.test_train import _logged_steps

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.slow
STEPS = 10


def _job_env(cluster, **extra):
    bin_dir = str(Path(sys.executable).parent)
    env = dict(cluster.env, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}", **extra)
    env.update(OMP_NUM_THREADS="1", WANDB_SILENT="true", PYTHONPATH=str(ROOT))
    env.pop("ACCELERATE_USE_CPU", None)
    return env


def _sbatch(cluster, script, log, env, *flags) -> str:
    """Submit slurm/<script> from the repository root on one CPU per task; the job id."""
    return cluster.run(
        "sbatch",
        "--parsable",
        "--cpus-per-task=1",
        *flags,
        f"--output={log}",
        f"--chdir={ROOT}",
        str(ROOT / "slurm" / script),
        env=env,
    ).stdout.strip()


def _submit_training(cluster, config, run_dir, log) -> str:
    """slurm/train.sbatch on 2 nodes x 1 CPU process with the installed accelerate; the job id."""
    env = _job_env(
        cluster,
        CONFIG=str(config),
        RUN_DIR=str(run_dir),
        GPUS_PER_NODE="0",
        PROCS_PER_NODE="1",
        ACCELERATE=str(Path(sys.executable).parent / "accelerate"),
    )
    return _sbatch(cluster, "train.sbatch", log, env, "--nodes=2", "--time=20")


def _wait_for(condition, timeout, what, cluster, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log is not None and log.is_file() else ""
    raise TimeoutError(f"{what}\n{tail}\n{cluster.logs()}")


def _config(packed, path, checkpoint_every=1000):
    path.write_text(
        f"""
model: {{backbone: hrnet_w18_small, branch_channels: 16, branch_layers: 1}}
data:
  train:
    - {{path: {packed / "3dpw"}, weight: 0.5}}
    - {{path: {packed / "mpii"}, weight: 0.5}}
  val: [{{path: {packed / "3dpw_val"}, weight: 1.0}}]
  crop_size: 128
  batch_size: 2
  num_workers: 0
  shuffle_buffer: 10
  steps_per_epoch: 4
train: {{max_steps: {STEPS}, log_every: 1, eval_every: 1000, checkpoint_every: {checkpoint_every}, image_every: 0}}
logging: {{wandb_mode: offline, project: pare-slurm-test}}
"""
    )
    return path


def test_train_sbatch_requeues_after_preemption_and_resumes(cluster, packed, tmp_path):
    run_dir = tmp_path / "run"
    config = _config(packed, tmp_path / "tiny.yaml")
    job_log = tmp_path / "job.log"
    job = _submit_training(cluster, config, run_dir, job_log)

    # Preempt: the batch shell alone gets USR1 (as with --signal=B:USR1@T) once training runs.
    train_log = run_dir / "train.log"
    _wait_for(
        lambda: train_log.is_file() and any(s >= 3 for s in _logged_steps(run_dir)),
        300,
        "training did not reach step 3",
        cluster,
        job_log,
    )
    cluster.run("scancel", "--batch", "--signal=USR1", job)

    def finished():
        state = cluster.job_state(job).get("JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), job_log.read_text()
        return state == "COMPLETED" and (run_dir / "DONE").is_file()

    _wait_for(finished, 420, "the requeued job did not finish", cluster, job_log)

    text = job_log.read_text()
    assert "USR1 to the batch shell: asking the trainer to stop" in text
    assert f"requeueing {job}: a stop was requested (exit 0)" in text
    assert "restart 1:" in text and "2 node(s), 2 process(es)" in text
    assert "run complete" in text
    log = train_log.read_text()
    stopped = [line for line in log.splitlines() if "stopped (" in line and "STOP exists" in line]
    assert len(stopped) == 1, log[-3000:]
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 1
    resumed_at = int(resumed[0].rsplit("at step ", 1)[1])
    assert 3 <= resumed_at < STEPS
    # Every step trained and logged exactly once: no restart from 0, nothing skipped.
    assert _logged_steps(run_dir) == list(range(1, STEPS + 1))
    assert json.loads((run_dir / "DONE").read_text())["step"] == STEPS
    final = run_dir / "checkpoints" / f"step-{STEPS:07d}"
    assert (final / "COMPLETE").is_file()
    run_id = json.loads((final / "trainer_state.json").read_text())["train"]["wandb_run_id"]
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # one per attempt ...
    assert {p.name.rsplit("-", 1)[1] for p in offline} == {run_id}  # ... of the same W&B run
    # Uploaded together, oldest attempt first (one command with the installed wandb).
    from pare.tracking import sync_commands

    assert sync_commands(run_dir / "wandb", append=False) == [
        f"wandb sync --id {run_id} {offline[0]} {offline[1]}"
    ]


def test_train_sbatch_requeues_after_sigterm_to_every_process_and_resumes(
    cluster, packed, tmp_path
):
    """`scancel --signal=TERM --full` (how many clusters preempt): the batch shell, srun and every
    task get TERM at once, and srun answers its own TERM by SIGKILLing the tasks, possibly
    mid-checkpoint. The run folder decides: a stop was asked, so the job requeues and resumes from
    the newest complete checkpoint, never from a half-written one."""
    run_dir, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    config = _config(packed, tmp_path / "tiny.yaml", checkpoint_every=2)
    job_log = tmp_path / "job.log"
    job = _submit_training(cluster, config, run_dir, job_log)
    _wait_for(
        lambda: (
            (checkpoints / "step-0000002" / "COMPLETE").is_file()
            and any(s >= 3 for s in _logged_steps(run_dir))
        ),
        300,
        "training did not save step 2",
        cluster,
        job_log,
    )
    cluster.run("scancel", "--signal=TERM", "--full", job)
    _wait_for(
        lambda: f"requeueing {job}" in job_log.read_text(), 120, "no requeue", cluster, job_log
    )
    text = job_log.read_text()
    assert "TERM to the batch shell: asking the trainer to stop" in text
    assert "a stop was requested (exit 137)" in text, text[-3000:]  # tasks SIGKILLed by srun
    resume_from = Path(text.split("resumes from ", 1)[1].split()[0])
    assert resume_from.parent == checkpoints and (resume_from / "COMPLETE").is_file()
    # What a kill mid-save leaves (every file but the marker), newer than any complete one.
    half = checkpoints / "step-0000009"
    shutil.copytree(resume_from, half, ignore=shutil.ignore_patterns("COMPLETE"))

    def finished():
        state = cluster.job_state(job).get("JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), job_log.read_text()
        return state == "COMPLETED" and (run_dir / "DONE").is_file()

    _wait_for(finished, 300, "the requeued job did not finish", cluster, job_log)
    assert "restart 1:" in job_log.read_text() and "run complete" in job_log.read_text()
    log = (run_dir / "train.log").read_text()
    assert f"removed {half}" in log
    step = int(resume_from.name.split("-")[1])
    assert f"resumed from {resume_from} at step {step}" in log
    # Steps after the checkpoint were trained again (the kill lost them); none was skipped.
    steps = _logged_steps(run_dir)
    second_attempt = steps[len(steps) - (STEPS - step) :]
    assert second_attempt == list(range(step + 1, STEPS + 1)), steps
    assert sorted(set(steps)) == list(range(1, STEPS + 1))
    assert json.loads((run_dir / "DONE").read_text())["step"] == STEPS


FAKE_LAUNCHER = """#!/bin/bash
# Stands in for `accelerate launch`: like torchrun's agent, a TERM ends it with exit 1 (its
# workers save first); after a requeue it crashes (exit 3). It gives up after two minutes, so a
# failed test leaves nothing running.
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]]; then exit 3; fi
trap 'exit 1' TERM
touch "$PARE_RUN_DIR/started-$SLURM_NODEID"
echo "started on node $SLURM_NODEID"
while ((SECONDS < 120)); do sleep 0.2; done
exit 4
"""


def test_train_sbatch_requeues_after_sigterm_to_the_steps_but_not_after_a_crash(cluster, tmp_path):
    """TERM to the job steps only (preemption with GraceTime, plain `scancel --signal=TERM`): the
    batch shell sees no signal and the launcher exits 1, but each node's task leaves STOP in
    the run folder, so the job requeues. A launcher that fails on its own is not requeued."""
    run_dir = tmp_path / "run"
    launcher = tmp_path / "launcher.sh"
    launcher.write_text(FAKE_LAUNCHER)
    launcher.chmod(0o755)
    env = _job_env(cluster, RUN_DIR=str(run_dir), GPUS_PER_NODE="0", ACCELERATE=str(launcher))
    job_log = tmp_path / "job.log"
    job = _sbatch(cluster, "train.sbatch", job_log, env, "--nodes=2", "--time=5")
    started = [run_dir / f"started-{node}" for node in (0, 1)]
    _wait_for(lambda: all(p.is_file() for p in started), 120, "no task", cluster, job_log)
    cluster.run("scancel", "--signal=TERM", job)
    _wait_for(
        lambda: cluster.job_state(job).get("JobState") == "FAILED", 120, "no end", cluster, job_log
    )
    text = job_log.read_text()
    assert "TERM to the task on node 0: asking the trainer to stop" in text, text
    # Until it requeued, the batch shell saw no signal (the requeue itself then TERMs it, and
    # its trap, kept so that signal cannot kill it mid-requeue, may log that).
    assert "TERM to the batch shell" not in text.split(f"requeueing {job}:")[0], text
    # Exit 1 from the launcher; srun reports the worst task (one may be killed as the step ends).
    assert f"requeueing {job}: a stop was requested (exit " in text, text
    assert "starts over (no complete checkpoint yet)" in text
    assert "restart 1:" in text
    # The crash on restart: srun TERMs the other node's task, which is no stop.
    assert text.rstrip().endswith("the trainer failed (exit 3): not requeueing"), text
    assert not list(run_dir.glob("STOP.node-*"))
    assert cluster.job_state(job)["Restarts"] == "1"

    # A plain scancel also TERMs the batch shell, but the job is ending: it stays cancelled.
    job_log = tmp_path / "cancelled.log"
    job = _sbatch(cluster, "train.sbatch", job_log, env, "--nodes=2", "--time=5")
    _wait_for(
        lambda: job_log.is_file() and "started" in job_log.read_text(), 60, "no task", cluster
    )
    cluster.run("scancel", job)
    _wait_for(lambda: "not requeueing" in job_log.read_text(), 60, "no end", cluster, job_log)
    assert "the job is COMPLETING (cancelled or out of time)" in job_log.read_text()
    time.sleep(2)
    assert cluster.job_state(job)["JobState"] == "CANCELLED"


def test_pack_array_job_and_merge_equal_one_process(cluster, raw, packed, tmp_path):
    out = tmp_path / "3dpw"
    env = _job_env(
        cluster,
        PACK=f"shards/pack_3dpw.py --root {raw / '3dpw'} --split train --out {out} --maxcount 6",
    )
    submitted = cluster.run(
        str(ROOT / "slurm" / "pack.sh"),
        "2",
        "--cpus-per-task=1",
        f"--output={tmp_path}/pack-%A_%a.log",
        env=env,
    )
    array, merge = (int(w.rstrip(",")) for w in submitted.stdout.split() if w.rstrip(",").isdigit())

    def merged():
        state = cluster.job_state(str(merge)).get("JobState")
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT"), _job_logs(tmp_path)
        return state == "COMPLETED"

    _wait_for(merged, 300, f"the merge did not finish\n{_job_logs(tmp_path)}", cluster)
    for task in (0, 1):
        assert cluster.job_state(f"{array}_{task}").get("JobState") == "COMPLETED"
    expected = json.loads((packed / "3dpw" / "manifest.json").read_text())
    assert json.loads((out / "manifest.json").read_text()) == expected
    for shard in expected["shardlist"]:
        assert hashlib.sha256((out / shard["url"]).read_bytes()).hexdigest() == shard["sha256"]


def test_array_job_runs_every_config_seed_pair(cluster, packed, tmp_path):
    config = _config(packed, tmp_path / "tiny.yaml")
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace(f"max_steps: {STEPS}", "max_steps: 2"))
    config.write_text(config.read_text().replace(f"max_steps: {STEPS}", "max_steps: 3"))
    env = _job_env(
        cluster,
        CONFIGS=f"{config} {other}",
        SEEDS="7",
        RUN_ROOT=str(tmp_path / "runs"),
        GROUP="array-test",
        GPUS_PER_NODE="0",
        ACCELERATE=str(Path(sys.executable).parent / "accelerate"),
    )
    # One task too many: it must refuse with the right range.
    array = _sbatch(cluster, "array.sbatch", f"{tmp_path}/array-%A_%a.log", env, "--array=0-2")
    states = {}

    def ended():
        for task in range(3):
            states[task] = cluster.job_state(f"{array}_{task}").get("JobState")
        return all(s in ("COMPLETED", "FAILED") for s in states.values())

    _wait_for(ended, 300, f"the array did not finish: {states}", cluster)
    assert states == {0: "COMPLETED", 1: "COMPLETED", 2: "FAILED"}
    assert "submit --array=0-1" in (tmp_path / f"array-{array}_2.log").read_text()
    for name, steps in (("tiny-seed7", 3), ("other-seed7", 2)):
        run = tmp_path / "runs" / name
        assert json.loads((run / "DONE").read_text())["step"] == steps
        saved = load_config([run / "config.yaml"], [])
        assert saved.train.seed == 7
        assert (saved.logging.run_name, saved.logging.group) == (name, "array-test")


def test_sweep_job_without_a_sweep_id_says_how_to_get_one(cluster, tmp_path):
    env = _job_env(cluster)
    env.pop("SWEEP_ID", None)
    job = _sbatch(cluster, "sweep.sbatch", f"{tmp_path}/sweep-%j.log", env)
    _wait_for(
        lambda: cluster.job_state(job).get("JobState") in ("COMPLETED", "FAILED"),
        120,
        "the sweep job did not end",
        cluster,
    )
    assert cluster.job_state(job)["JobState"] == "FAILED"
    assert "wandb sweep configs/sweep.yaml" in (tmp_path / f"sweep-{job}.log").read_text()


def _job_logs(folder):
    return "\n".join(p.read_text()[-1500:] for p in sorted(folder.glob("pack-*.log")))


def test_job_scripts_pass_shellcheck():
    import shutil
    import subprocess

    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (make slurm-deps installs it)")
    scripts = sorted(str(p) for p in (ROOT / "slurm").iterdir() if p.suffix in (".sh", ".sbatch"))
    result = subprocess.run(
        ["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
