"""The training entry point end to end: checkpoints, offline W&B, non-finite steps, exact resume
after SIGTERM, two-process DDP, and the launch checks. Each run is a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pare.config import load_config
from pare.data.stream import eval_loader, shard_urls
from pare.evaluation import GroundTruthBodies, evaluate
from pare.models import build_model
from pare.runtime import COMPLETE, load_weights
from pare.tracking import read_wandb_run
from tests.conftest import accelerate_launch

ROOT = Path(__file__).parents[2]
TRAIN = ROOT / "train" / "train.py"
ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
pytestmark = pytest.mark.slow


def _args(packed, out, *extra):
    return [
        "model.backbone=hrnet_w18_small",
        "model.branch_channels=32",
        "model.branch_layers=1",
        f"data.train=[{{name: 3dpw, path: {packed / '3dpw'}, weight: 0.5}}, "
        f"{{name: mpii, path: {packed / 'mpii'}, weight: 0.5}}]",
        f"data.val=[{{name: 3dpw, path: {packed / '3dpw_val'}, weight: 1.0}}]",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.shuffle_buffer=20",
        "data.steps_per_epoch=5",
        "optim.lr=1e-3",
        f"train.output_dir={out}",
        "train.eval_every=1000",
        "train.image_every=0",
        "logging.wandb_mode=disabled",
        *extra,
    ]


def _train(args, launcher=(), check=True, timeout=600, env=None):
    cmd = [*launcher, str(TRAIN), *args] if launcher else [sys.executable, str(TRAIN), *args]
    out = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


def _script(name, *args):
    """Run one of train/'s scripts; the completed process."""
    cmd = [sys.executable, str(ROOT / "train" / name), *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True)


def _logged_steps(run_dir):
    lines = (run_dir / "train.log").read_text().splitlines()
    return [int(line.split(" step ")[1].split()[0]) for line in lines if " INFO step " in line]


@pytest.fixture(scope="module")
def offline_run(packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "offline"
    extra = [
        "train.max_steps=6",
        "train.log_every=2",
        "train.eval_every=3",
        "train.image_every=3",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=1",
        "train.inject_nonfinite_at=[1]",
        "logging.wandb_mode=offline",
    ]
    # As under a sweep agent, which creates the W&B run and passes its id.
    _train(_args(packed, out, *extra), env=dict(ENV, WANDB_RUN_ID="sweep0001"))
    return out


def test_offline_wandb_run_holds_losses_metrics_config_and_an_image(offline_run):
    (run_folder,) = (offline_run / "wandb").glob("offline-run-*")
    assert run_folder.name.endswith("-sweep0001")  # the agent's run id, not a new one
    run = read_wandb_run(run_folder)
    by_step = {}
    for row in run["history"]:
        by_step.setdefault(row["_step"], {}).update(row)
    assert all(np.isfinite(by_step[s]["loss/total"]) for s in (2, 4, 6))
    assert {"loss/part_segmentation", "lr", "grad_norm", "samples_per_s", "time/data_s"} <= set(
        by_step[2]
    )
    assert "loss/total" not in by_step.get(3, {})  # logged every 2 steps only
    for step in (3, 6):
        assert by_step[step]["val/pa_mpjpe_mm"] > 0 and by_step[step]["val/pve_mm"] > 0
        assert by_step[step]["overlay/_type"] == "image-file"
    image = run_folder / "files" / by_step[3]["overlay/path"]
    assert image.is_file() and image.stat().st_size > 1000
    assert run["config"]["model"]["backbone"] == "hrnet_w18_small"
    assert run["config"]["train"]["max_steps"] == 6
    assert run["summary"]["best/pa_mpjpe_mm"] == min(by_step[s]["val/pa_mpjpe_mm"] for s in (3, 6))
    assert run["summary"]["nonfinite_steps"] == 1
    assert "WANDB_API_KEY" not in (offline_run / "config.yaml").read_text()


def test_checkpoints_are_complete_pruned_and_weights_load(offline_run):
    folders = sorted((offline_run / "checkpoints").iterdir())
    assert [f.name for f in folders] == ["step-0000006"]  # keep_checkpoints=1
    assert (folders[0] / COMPLETE).is_file()
    state = json.loads((folders[0] / "trainer_state.json").read_text())
    assert state["train"]["step"] == 6 and state["stream"]["epoch"] == 1
    assert state["train"]["nonfinite_steps"] == 1
    cfg = load_config([offline_run / "config.yaml"], [])
    model = build_model(cfg.model, cfg.body)
    meta = load_weights(model, offline_run / "best" / "model.safetensors")
    assert meta["step"] in (3, 6) and meta["pa_mpjpe"] == state["train"]["best_pa_mpjpe"]
    load_weights(model, offline_run / "model.safetensors")
    assert (offline_run / "overlays" / "step-0000003.png").is_file()
    assert "non-finite loss at step 1: skipped" in (offline_run / "train.log").read_text()


def test_non_finite_steps_are_skipped_and_too_many_abort(packed, tmp_path):
    # Every step non-finite but under the limit: no parameter moves (BatchNorm statistics do).
    out = tmp_path / "skipped"
    extra = [
        "train.max_steps=3",
        "train.inject_nonfinite_at=[0,1,2]",
        "train.max_nonfinite_steps=5",
    ]
    _train(_args(packed, out, *extra))
    cfg = load_config([out / "config.yaml"], [])
    torch.manual_seed(0)
    from accelerate.utils import set_seed

    set_seed(0)
    initial = dict(build_model(cfg.model, cfg.body).named_parameters())
    final = load_file(str(out / "model.safetensors"))
    for name, value in initial.items():
        assert torch.equal(final[name], value.detach()), name
    # Past the limit: a clear error, a non-zero exit, and the last good checkpoint kept.
    out = tmp_path / "abort"
    extra = [
        "train.max_steps=8",
        "train.checkpoint_every=2",
        "train.inject_nonfinite_at=[3,4,5,6,7]",
        "train.max_nonfinite_steps=3",
    ]
    result = _train(_args(packed, out, *extra), check=False)
    assert result.returncode != 0
    assert "3 non-finite losses in a row" in result.stderr
    # Steps 4-6 are non-finite: the abort comes after step 6 and saves nothing; the checkpoints
    # already written (a skipped step leaves the weights as they were) stay.
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert saved == ["step-0000002", "step-0000004"]


def test_resume_after_sigterm_matches_an_uninterrupted_run(packed, tmp_path):
    extra = ["train.max_steps=8", "train.log_every=1", "train.checkpoint_every=100"]
    straight = tmp_path / "straight"
    _train(_args(packed, straight, *extra))

    interrupted = tmp_path / "interrupted"
    cmd = [sys.executable, str(TRAIN), *_args(packed, interrupted, *extra)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        log = interrupted / "train.log"
        if log.is_file() and any(s >= 3 for s in _logged_steps(interrupted)):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.2)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    (checkpoint,) = (interrupted / "checkpoints").iterdir()
    stopped_at = int(checkpoint.name.split("-")[1])
    assert 3 <= stopped_at < 8, "the signal arrived too late to test a resume"
    assert "stopped (SIGTERM)" in (interrupted / "train.log").read_text()
    assert not (interrupted / "DONE").exists()  # a job script would requeue this run

    _train(_args(packed, interrupted, *extra, "train.resume=auto"))
    assert json.loads((interrupted / "DONE").read_text())["step"] == 8
    assert _logged_steps(interrupted) == list(range(1, 9))  # no step lost or repeated
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(packed, tmp_path):
    from pare.data.stream import eval_loader, shard_urls

    batch = next(iter(eval_loader(shard_urls(str(packed / "3dpw")), batch_size=4)))
    torch.save({k: v for k, v in batch.items() if torch.is_tensor(v)}, tmp_path / "batch.pt")
    worker = Path(__file__).parent / "ddp_equivalence_worker.py"
    launcher = accelerate_launch(2, 29531)
    env = dict(ENV, ACCELERATE_USE_CPU="1")
    for cmd in (
        [*launcher, str(worker), str(tmp_path / "batch.pt"), str(tmp_path)],
        [sys.executable, str(worker), str(tmp_path / "batch.pt"), str(tmp_path)],
    ):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    rank0, rank1, single, initial = (
        torch.load(tmp_path / name, weights_only=True)
        for name in (
            "params_rank0_of2.pt",
            "params_rank1_of2.pt",
            "params_rank0_of1.pt",
            "params_initial.pt",
        )
    )
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name  # identical across ranks
        # Equal to one process within fp32 summation noise, relative to the update itself,
        # plus the rounding of `param - step` (a couple of ulps of the parameter's magnitude).
        update = float((single[name] - initial[name]).abs().max())
        gap = float((rank0[name] - single[name]).abs().max())
        ulp = torch.finfo(torch.float32).eps * float(single[name].abs().max())
        assert gap <= 1e-3 * update + 2 * ulp + 1e-12, (name, gap, update, ulp)
    moved = sum(float((single[n] - p).abs().max() > 0) for n, p in initial.items())
    assert moved > 0.9 * len(initial)


def test_train_py_under_two_cpu_processes_stays_in_sync(packed, tmp_path):
    launcher = accelerate_launch(2, 29533)
    out = tmp_path / "ddp"
    args = _args(packed, out, "train.max_steps=3", "train.eval_every=3")
    _train(args, launcher, env=dict(ENV, ACCELERATE_USE_CPU="1"))
    text = (out / "train.log").read_text()
    assert "parameters identical on all 2 ranks" in text
    manifest = json.loads((packed / "3dpw_val" / "manifest.json").read_text())
    total = sum(s["nsamples"] for s in manifest["shardlist"])
    assert f"({total} samples)" in text  # evaluated across both ranks, each sample once
    # Both ranks evaluated rank 0's model (BatchNorm statistics included), the one exported:
    # the in-loop result equals one process evaluating the exported weights.
    line = next(x for x in text.splitlines() if "eval step 3:" in x)
    logged = json.loads(line.split("eval step 3: ", 1)[1].rsplit(" (", 1)[0])
    cfg = load_config([out / "config.yaml"], [])
    model = build_model(cfg.model, cfg.body)
    load_weights(model, out / "best" / "model.safetensors")
    urls = shard_urls(str(packed / "3dpw_val"))
    alone = evaluate(model, eval_loader(urls, 4), GroundTruthBodies(), "cpu")["mean"]
    for name, value in logged.items():
        assert abs(alone[name] - value) < 1e-3, (name, alone[name], value)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cpu"], "asked for 2 processes but started 1"),
        (["--multi_gpu"], "formed a group of 1"),
    ],
)
def test_silent_mis_launches_fail_loudly(packed, tmp_path, flags, message):
    if torch.cuda.is_available() and "--multi_gpu" in flags:
        pytest.skip("on a GPU machine --multi_gpu without ACCELERATE_USE_CPU is a valid launch")
    launcher = accelerate_launch(2, 29535, *flags)
    out = _train(_args(packed, tmp_path / "bad", "train.max_steps=1"), launcher, check=False)
    assert out.returncode != 0
    assert message in out.stderr and "ACCELERATE_USE_CPU=1" in out.stderr


def test_evaluate_show_run_and_mean_params_entry_points(offline_run, packed, tmp_path):
    out = _script("evaluate.py", "--run", offline_run, "--out", tmp_path / "e.json")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean-pose baseline" in out.stdout and "STAND-IN" in out.stdout
    result = json.loads((tmp_path / "e.json").read_text())
    manifest = json.loads((packed / "3dpw_val" / "manifest.json").read_text())
    total = sum(s["nsamples"] for s in manifest["shardlist"])
    assert [r["samples"] for r in result["rows"].values()] == [total, total]
    ours, baseline = (r["pa_mpjpe"] for r in result["rows"].values())
    assert 1.0 - ours / baseline == pytest.approx(result["pa_mpjpe_gain"])
    impossible = _script(
        "evaluate.py", "--run", offline_run, "--out", tmp_path / "f.json", "--require-gain", 2
    )
    assert impossible.returncode == 1 and "below the required" in impossible.stderr

    shown = _script("show_run.py", offline_run)
    assert shown.returncode == 0 and "wandb sync" in shown.stdout and "overlay" in shown.stdout
    missing = _script("show_run.py", tmp_path)
    assert missing.returncode == 2 and "not a run folder" in missing.stderr

    made = _script("mean_params.py", "--out", tmp_path / "mean.npz", packed / "3dpw")
    assert made.returncode == 0, made.stderr
    from pare.models.head import read_mean_params

    assert read_mean_params(tmp_path / "mean.npz")["start_6d"].shape == (24, 6)
    bad = _script("mean_params.py", "--out", tmp_path / "x.npz", tmp_path / "nothing")
    assert bad.returncode == 2 and "nothing not found" in bad.stderr
