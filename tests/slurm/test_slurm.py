"""slurm/train.sbatch on a real two-node SLURM cluster (localhost, tests/slurm/cluster.py):
2 nodes x 1 CPU process, a preemption signal to the batch shell, the requeue and the resume."""

import hashlib
import json
import os
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


def _wait_for(condition, timeout, what, cluster, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log is not None and log.is_file() else ""
    raise TimeoutError(f"{what}\n{tail}\n{cluster.logs()}")


def _config(packed, path):
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
train: {{max_steps: {STEPS}, log_every: 1, eval_every: 1000, checkpoint_every: 1000, image_every: 0}}
logging: {{wandb_mode: offline, project: pare-slurm-test}}
"""
    )
    return path


def test_train_sbatch_requeues_after_preemption_and_resumes(cluster, packed, tmp_path):
    run_dir = tmp_path / "run"
    config = _config(packed, tmp_path / "tiny.yaml")
    env = _job_env(
        cluster,
        CONFIG=str(config),
        RUN_DIR=str(run_dir),
        GPUS_PER_NODE="0",
        PROCS_PER_NODE="1",
        ACCELERATE=str(Path(sys.executable).parent / "accelerate"),
    )
    job_log = tmp_path / "job.log"
    job = _sbatch(cluster, "train.sbatch", job_log, env, "--nodes=2", "--time=20")

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
    assert "signal received: asking the trainer to stop" in text
    assert f"requeueing {job}" in text
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
