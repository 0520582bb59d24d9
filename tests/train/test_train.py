"""The training entry point end to end: checkpoints, offline W&B, non-finite steps, exact resume
after SIGTERM, two-process DDP, and the launch checks. Each run is a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pare.body import SMPLBody
from pare.checkpoint import COMPLETE, load_weights
from pare.config import load_config
from pare.data.streaming.stream import eval_loader, shard_urls
from pare.evaluation import evaluate
from pare.models import build_model
from pare.tracking import read_wandb_run
from tests.conftest import accelerate_launch

ROOT = Path(__file__).parents[2]
TRAIN = ROOT / "train" / "train.py"
# train.py with NaN losses at given steps (the first argument), for the non-finite guard.
NONFINITE_TRAIN = Path(__file__).with_name("nonfinite_train.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true")
# A run interrupted by SIGTERM after step 3 and resumed, against an uninterrupted one (here, and
# per launch in test_faults.py).
RESUME_EXTRA = ("train.max_steps=10", "train.log_every=1", "train.checkpoint_every=100")
pytestmark = pytest.mark.slow


def _args(packed, out, *extra):
    return [
        "model.backbone=hrnet_w18_small",
        "model.branch_channels=32",
        "model.branch_layers=1",
        f"data.train=[{{path: {packed / '3dpw'}, weight: 0.5}}, "
        f"{{path: {packed / 'mpii'}, weight: 0.5}}]",
        f"data.val=[{{path: {packed / '3dpw_val'}, weight: 1.0}}]",
        # 128 rather than 224: a step takes a fifth of the time; nothing tested here is
        # about the input size.
        "data.crop_size=128",
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


def _train(args, launcher=(), check=True, timeout=600, env=None, nan_at=()):
    if nan_at:  # one process only
        cmd = [sys.executable, str(NONFINITE_TRAIN), ",".join(map(str, nan_at)), *args]
    elif launcher:
        cmd = [*launcher, str(TRAIN), *args]
    else:
        cmd = [sys.executable, str(TRAIN), *args]
    out = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr[-4000:]
    return out


def _script(name, *args):
    """Run one of train/'s scripts; the completed process."""
    cmd = [sys.executable, str(ROOT / "train" / name), *map(str, args)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True)


# Pools of _concurrently, waited for after each test (tests/train/conftest.py): no run started
# by a test that failed early goes on competing with the next tests.
POOLS: list[ThreadPoolExecutor] = []


def _concurrently(*calls):
    """Start each of ``calls`` (functions of no argument) in the background, two at a time;
    their futures, in order (``.result()`` waits, and re-raises what the call raised). The CI
    machine has two cores and a one-process run keeps one busy: runs a test needs that do not
    depend on each other go side by side."""
    pool = ThreadPoolExecutor(max_workers=2)
    POOLS.append(pool)
    return [pool.submit(call) for call in calls]


def _timed(call):
    """``call()`` and the seconds it took."""
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def _train_into(out, args, launcher=(), env=None):
    """Train (``args`` write to ``out``) and return ``out``."""
    _train(args, launcher, env=env)
    return out


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
        "logging.wandb_mode=offline",
    ]
    # As under a sweep agent, which creates the W&B run and passes its id.
    _train(_args(packed, out, *extra), env=dict(ENV, WANDB_RUN_ID="sweep0001"), nan_at=[1])
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
    # Trained on the stand-in: the run says so in its config and tags.
    assert run["config"]["body_model"].startswith("STAND-IN") and "STAND-IN" in run["tags"]
    assert run["summary"]["best/pa_mpjpe_mm"] == min(by_step[s]["val/pa_mpjpe_mm"] for s in (3, 6))
    assert run["summary"]["nonfinite_steps"] == 1
    assert run["config"]["launch"] == {
        "mixed_precision": "no",
        "configured_precision": "launcher",
        "num_processes": 1,
        "batch_per_process": 4,
        "gradient_accumulation_steps": 1,
        "global_batch": 4,
    }
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
    final = load_weights(model, offline_run / "model.safetensors")
    assert meta["body_model"].startswith("STAND-IN") and final["body_model"].startswith("STAND-IN")
    first = (offline_run / "train.log").read_text().splitlines()[0]
    assert "STAND-IN body model (generated; not SMPL): standin" in first
    # ... and, in the same first line, what the launch gave: one plain-python process, fp32.
    launch = "mixed precision no (train.mixed_precision=launcher), 1 process, global batch 4 ="
    assert launch in first
    config_text = (offline_run / "config.yaml").read_text()
    assert config_text.startswith("# launch: " + launch)
    assert (offline_run / "overlays" / "step-0000003.png").is_file()
    assert "non-finite loss at step 1: skipped" in (offline_run / "train.log").read_text()


def test_non_finite_steps_are_skipped_and_too_many_abort(packed, tmp_path):
    # Every step non-finite but under the limit; and past it (two runs, side by side).
    out, abort_out = tmp_path / "skipped", tmp_path / "abort"
    extra = ["train.max_steps=3", "train.max_nonfinite_steps=5"]
    abort_extra = [
        "train.max_steps=8",
        "train.checkpoint_every=2",
        "train.max_nonfinite_steps=3",
    ]
    skipped, aborted = _concurrently(
        partial(_train, _args(packed, out, *extra), nan_at=[0, 1, 2]),
        partial(
            _train, _args(packed, abort_out, *abort_extra), check=False, nan_at=[3, 4, 5, 6, 7]
        ),
    )
    # Under the limit: no parameter moves (BatchNorm statistics do).
    skipped.result()
    cfg = load_config([out / "config.yaml"], [])
    torch.manual_seed(0)
    from accelerate.utils import set_seed

    set_seed(0)
    initial = dict(build_model(cfg.model, cfg.body).named_parameters())
    final = load_file(str(out / "model.safetensors"))
    for name, value in initial.items():
        assert torch.equal(final[name], value.detach()), name
    # Past the limit: a clear error, a non-zero exit, and the last good checkpoint kept.
    result = aborted.result()
    assert result.returncode != 0
    assert "3 non-finite losses in a row" in result.stderr
    # Steps 4-6 are non-finite: the abort comes after step 6 and saves nothing; the checkpoints
    # already written (a skipped step leaves the weights as they were) stay.
    saved = sorted(p.name for p in (abort_out / "checkpoints").iterdir())
    assert saved == ["step-0000002", "step-0000004"]


def test_resume_after_sigterm_matches_an_uninterrupted_run(packed, tmp_path):
    extra = RESUME_EXTRA
    # The uninterrupted run, in the background while the interrupted one trains.
    (reference,) = _concurrently(
        partial(_train_into, tmp_path / "straight", _args(packed, tmp_path / "straight", *extra))
    )

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
    assert 3 <= stopped_at < 10, "the signal arrived too late to test a resume"
    assert "stopped (SIGTERM)" in (interrupted / "train.log").read_text()
    assert not (interrupted / "DONE").exists()  # a job script would requeue this run

    _train(_args(packed, interrupted, *extra, "train.resume=auto"))
    assert json.loads((interrupted / "DONE").read_text())["step"] == 10
    assert _logged_steps(interrupted) == list(range(1, 11))  # no step lost or repeated
    straight = reference.result()
    a = load_file(str(straight / "model.safetensors"))
    b = load_file(str(interrupted / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=0, msg=name)


def test_two_cpu_processes_match_one_process_with_the_same_global_batch(packed, tmp_path):
    from pare.data.streaming.stream import eval_loader, shard_urls

    batch = next(iter(eval_loader(shard_urls(str(packed / "3dpw")), batch_size=4)))
    torch.save({k: v for k, v in batch.items() if torch.is_tensor(v)}, tmp_path / "batch.pt")
    worker = Path(__file__).parent / "ddp_equivalence_worker.py"
    launcher = accelerate_launch(2, 29531)
    env = dict(ENV, ACCELERATE_USE_CPU="1")
    two, one = tmp_path / "two", tmp_path / "one"  # every launch writes params_initial.pt
    two.mkdir()
    one.mkdir()
    runs = _concurrently(
        *(
            partial(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=600)
            for cmd in (
                [*launcher, str(worker), str(tmp_path / "batch.pt"), str(two)],
                [sys.executable, str(worker), str(tmp_path / "batch.pt"), str(one)],
            )
        )
    )
    for run in runs:
        out = run.result()
        assert out.returncode == 0, out.stderr[-3000:]
    rank0, rank1, single, initial = (
        torch.load(path, weights_only=True)
        for path in (
            two / "params_rank0_of2.pt",
            two / "params_rank1_of2.pt",
            one / "params_rank0_of1.pt",
            one / "params_initial.pt",
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


def test_train_py_under_two_cpu_processes_stays_in_sync(packed, two_process_run):
    # The uninterrupted two-process run test_faults.py resumes against (tests/train/conftest.py):
    # it evaluates once, after its last step (train.max_steps=10).
    out = two_process_run.result()
    text = (out / "train.log").read_text()
    assert "parameters identical on all 2 ranks" in text
    manifest = json.loads((packed / "3dpw_val" / "manifest.json").read_text())
    total = sum(s["nsamples"] for s in manifest["shardlist"])
    assert f"({total} samples)" in text  # evaluated across both ranks, each sample once
    # Both ranks evaluated rank 0's model (BatchNorm statistics included), the one exported:
    # the in-loop result equals one process evaluating the exported weights.
    line = next(x for x in text.splitlines() if "eval step 10:" in x)
    logged = json.loads(line.split("eval step 10: ", 1)[1].rsplit(" (", 1)[0])
    cfg = load_config([out / "config.yaml"], [])
    model = build_model(cfg.model, cfg.body)
    load_weights(model, out / "best" / "model.safetensors")
    urls = shard_urls(str(packed / "3dpw_val"))
    alone = evaluate(model, eval_loader(urls, 4, 0, cfg.data.crop_size), SMPLBody(), "cpu")["mean"]
    for name, value in logged.items():
        assert abs(alone[name] - value) < 1e-3, (name, alone[name], value)


MIS_LAUNCHES = {"--cpu": 29535, "--multi_gpu": 29536}  # flag: port


def test_compiled_runs_in_one_and_two_processes_write_plain_weights(packed, tmp_path):
    """``train.compile`` (one process) and the launcher's ``--dynamo_backend`` (two processes,
    DDP around the compiled model) used to leave torch.compile's ``_orig_mod.`` keys in the
    files. The eager backend wraps and names the model as inductor does, and dynamo traces the
    same graphs (split for DDP alike), without generating kernels: half a minute of tracing on
    ResNet-18 rather than minutes of compiling. Resuming across compiled and plain models is
    tested in process (tests/test_checkpoint.py)."""
    from pare.checkpoint import load_trained_model

    common = (
        "model.backbone=resnet18",
        "train.max_steps=2",
        "train.checkpoint_every=2",
        "train.log_every=1",
    )
    one, two = tmp_path / "one", tmp_path / "two"
    launcher = accelerate_launch(2, 29551)
    launcher[launcher.index("--dynamo_backend") + 1] = "eager"
    runs = _concurrently(
        partial(
            _train_into,
            one,
            _args(packed, one, *common, "train.compile=true", "train.compile_backend=eager"),
        ),
        partial(
            _train_into,
            two,
            _args(packed, two, *common),
            launcher,
            dict(ENV, ACCELERATE_USE_CPU="1"),
        ),
    )
    for run in (future.result() for future in runs):
        for path in (run / "model.safetensors", run / "checkpoints/step-0000002/model.safetensors"):
            keys = list(load_file(str(path)))
            assert keys and not [k for k in keys if "_orig_mod" in k], path
        model, _, meta = load_trained_model(run, "final")  # as evaluate.py and predict.py do
        assert meta["step"] == 2 and not hasattr(model, "_orig_mod")


@pytest.fixture(scope="module")
def mis_launches(packed, tmp_path_factory):
    """Both launches of the test below, started side by side (each spends its time importing
    torch and stops): flag -> future of the completed launch."""
    root = tmp_path_factory.mktemp("mis_launch")
    # On a GPU machine --multi_gpu without ACCELERATE_USE_CPU is a valid launch (not run).
    flags = [f for f in MIS_LAUNCHES if f == "--cpu" or not torch.cuda.is_available()]
    runs = _concurrently(
        *(
            partial(
                _train,
                _args(packed, root / flag.strip("-"), "train.max_steps=1"),
                accelerate_launch(2, MIS_LAUNCHES[flag], flag),
                check=False,
            )
            for flag in flags
        )
    )
    return dict(zip(flags, runs, strict=True))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cpu"], "asked for 2 processes but started 1"),
        (["--multi_gpu"], "formed a group of 1"),
    ],
)
def test_silent_mis_launches_fail_loudly(mis_launches, flags, message):
    if torch.cuda.is_available() and "--multi_gpu" in flags:
        pytest.skip("on a GPU machine --multi_gpu without ACCELERATE_USE_CPU is a valid launch")
    out = mis_launches[flags[0]].result()
    assert out.returncode != 0
    assert message in out.stderr and "ACCELERATE_USE_CPU=1" in out.stderr


def test_pare_config_without_its_backbone_file_stops_at_once_and_random_trains(packed, tmp_path):
    config = ROOT / "configs" / "hrnet_w32.yaml"
    # From tmp_path, so data/pretrained/ is absent even where the repository has the file.
    start = time.monotonic()
    out = subprocess.run(
        [
            sys.executable,
            str(TRAIN),
            "--config",
            str(config),
            f"train.output_dir={tmp_path / 'run'}",
        ],
        env=dict(ENV, PYTHONPATH=str(ROOT)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - start
    assert out.returncode == 2, out.stderr[-2000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(
        "error: backbone weights not found: data/pretrained/pose_hrnet_w32_256x192.pth"
    )
    assert "HRNet project's COCO pose models" in line and "model.backbone_weights=random" in line
    assert not (tmp_path / "run").exists()
    # The check comes before train.py imports torch, accelerate and timm (about 0.4 s here).
    assert elapsed < 5, elapsed

    run = tmp_path / "random"
    args = _args(packed, run, "train.max_steps=2", "train.checkpoint_every=2")
    hrnet_w32 = ["model.backbone=hrnet_w32", "model.backbone_weights=random", "data.crop_size=64"]
    hrnet_w32.append("body.model_path=standin")  # the config names the real SMPL files
    _train(["--config", str(config), *args, *hrnet_w32, "data.batch_size=2"])
    saved = load_config([run / "config.yaml"])
    assert (saved.model.backbone, saved.model.backbone_weights) == ("hrnet_w32", "random")
    assert (run / "model.safetensors").is_file()


def test_evaluate_show_run_and_mean_params_entry_points(offline_run, packed, tmp_path):
    # Six independent launches, side by side; checked in order below.
    out, impossible, shown, missing, made, bad = (
        run.result()
        for run in _concurrently(
            partial(
                _script, "evaluate.py", "--run", offline_run, "--baseline", "--out", tmp_path / "e"
            ),
            partial(
                _script,
                "evaluate.py",
                *("--run", offline_run, "--out", tmp_path / "f", "--require-gain", 2),
            ),
            partial(_script, "show_run.py", offline_run),
            partial(_script, "show_run.py", tmp_path),
            partial(_script, "mean_params.py", "--out", tmp_path / "mean.npz", packed / "3dpw"),
            partial(_script, "mean_params.py", "--out", tmp_path / "x.npz", tmp_path / "nothing"),
        )
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "mean-pose baseline" in out.stdout and "STAND-IN" in out.stdout
    result = json.loads((tmp_path / "e" / "eval.json").read_text())
    manifest = json.loads((packed / "3dpw_val" / "manifest.json").read_text())
    total = sum(s["nsamples"] for s in manifest["shardlist"])
    rows = [r["overall"] for r in result["3dpw"].values()]
    assert [r["samples"] for r in rows] == [total, total]
    ours, baseline = (r["pa_mpjpe"] for r in rows)
    assert 1.0 - ours / baseline == pytest.approx(result["pa_mpjpe_gain"])
    assert impossible.returncode == 1 and "is below 2.00" in impossible.stderr

    assert shown.returncode == 0 and "wandb sync" in shown.stdout and "overlay" in shown.stdout
    assert missing.returncode == 2 and "not a run folder" in missing.stderr

    assert made.returncode == 0, made.stderr
    from pare.models.head import read_mean_params

    assert read_mean_params(tmp_path / "mean.npz")["start_6d"].shape == (24, 6)
    assert bad.returncode == 2 and "nothing not found" in bad.stderr


def test_evaluate_checkpoint_on_3dpw_and_mpii_with_export_and_wandb(
    offline_run, packed, raw, tmp_path
):
    import csv

    from pare.data.packing.keys import parse_3dpw_key
    from pare.data.streaming.batch import normalize_images
    from pare.export import export_fields, ground_truth_frames, read_3dpw_predictions

    weights = offline_run / "model.safetensors"
    common = [
        *("--shards", packed / "3dpw_val", packed / "mpii_val"),
        *("--checkpoint", weights, "--baseline"),
    ]
    # One process, and two (checked at the end), side by side.
    one_run, two_run = _concurrently(
        partial(
            _script,
            "evaluate.py",
            *common,
            "--out",
            tmp_path / "one",
            "--export-3dpw",
            tmp_path / "pred",
            "--dataset-root",
            raw / "3dpw",
            "--wandb",
            "offline",
        ),
        partial(
            subprocess.run,
            [
                *accelerate_launch(2, 29537),
                str(ROOT / "train" / "evaluate.py"),
                *map(str, common),
                "--out",
                str(tmp_path / "two"),
            ],
            env=dict(ENV, ACCELERATE_USE_CPU="1"),
            capture_output=True,
            text=True,
            timeout=600,
        ),
    )
    out = one_run.result()
    assert out.returncode == 0, out.stderr[-3000:]
    assert "3DPW-protocol evaluation" in out.stdout and "PCKh@0.5" in out.stdout
    report = json.loads((tmp_path / "one" / "eval.json").read_text())
    result, baseline = report["3dpw"].values()
    manifest = json.loads((packed / "3dpw_val" / "manifest.json").read_text())
    total = sum(s["nsamples"] for s in manifest["shardlist"])
    assert result["overall"]["samples"] == total
    assert sum(s["samples"] for s in result["per_sequence"].values()) == total
    (mpii,) = report["mpii"].values()
    assert mpii["samples"] > 0 and 0 <= mpii["pckh"] <= 100
    with open(tmp_path / "one" / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert {
        r["sequence"] for r in rows if r["dataset"] == "3dpw" and r["model"].startswith("PARE")
    } == {
        "all",
        *result["per_sequence"],
    }
    assert float(rows[0]["pa_mpjpe_mm"]) == pytest.approx(result["overall"]["pa_mpjpe"], abs=1e-3)
    (wandb_dir,) = (tmp_path / "one" / "wandb").glob("offline-run-*")
    summary = read_wandb_run(wandb_dir)["summary"]
    assert any(k.endswith("/pa_mpjpe_mm") for k in summary)

    # The export: one file per ground-truth sequence, shaped like it, holding for each sample the
    # joints the model predicts for it (recomputed here).
    truth = ground_truth_frames(raw / "3dpw", "validation")
    assert report["export"]["files"] == len(truth)
    assert report["export"]["tracks"] == {"validation": sum(len(v) for v in truth.values())}
    assert report["export"]["scored_frames_missing"] >= 0
    # The evaluator's input folder: res/ and ref/ per split, and how to score it printed.
    res = tmp_path / "pred" / "res" / "validation"
    files = sorted(res.glob("*.pkl"))
    assert [f.stem for f in files] == sorted(truth)
    ref = tmp_path / "pred" / "ref" / "validation"
    assert ref.resolve() == (raw / "3dpw" / "sequenceFiles" / "validation").resolve()
    assert "python evaluate.py" in out.stdout and "NUM_SEQS = " in out.stdout
    cfg = load_config([offline_run / "config.yaml"])
    model = build_model(cfg.model, cfg.body)
    load_weights(model, weights)
    model.eval()
    urls = shard_urls(str(packed / "3dpw_val"))
    batch = next(iter(eval_loader(urls, 2, 0, cfg.data.crop_size)))

    with torch.no_grad():
        fields = export_fields(model(normalize_images(batch["image"])), batch)
    for row, key in enumerate(batch["__key__"]):
        sequence, actor, frame = parse_3dpw_key(key)
        exported = read_3dpw_predictions(res / f"{sequence}.pkl")
        assert exported["jointPositions"].shape[:2] == truth[sequence].shape
        np.testing.assert_allclose(
            exported["jointPositions"][actor, frame], fields["joint_positions"][row], atol=1e-4
        )
        np.testing.assert_allclose(
            exported["orientations"][actor, frame], fields["orientations"][row], atol=1e-5
        )

    # Under two processes every sample counts once and the numbers are the same.
    two = two_run.result()
    assert two.returncode == 0, two.stderr[-3000:]
    result2, baseline2 = json.loads((tmp_path / "two" / "eval.json").read_text())["3dpw"].values()
    assert result2["overall"]["samples"] == total
    for metric, value in result["overall"].items():
        assert result2["overall"][metric] == pytest.approx(value, rel=1e-5), metric
        # the baseline's mean pose too: each rank read a share of the training samples
        assert baseline2["overall"][metric] == pytest.approx(baseline["overall"][metric], rel=1e-5)
    (mpii2,) = json.loads((tmp_path / "two" / "eval.json").read_text())["mpii"].values()
    assert mpii2["samples"] == mpii["samples"] and mpii2["pckh"] == pytest.approx(mpii["pckh"])


def _box_iou(a, b):
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[2:], b[2:])
    inter = np.prod(np.clip(hi - lo, 0, None))
    return inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter)


def test_predict_on_images_folders_and_video(offline_run, raw, tmp_path, test_output):
    import imageio.v3 as iio
    from PIL import Image

    from pare.safe_pickle import load_pickle

    (seq_file,) = list((raw / "3dpw" / "sequenceFiles" / "validation").glob("*.pkl"))[:1]
    seq = load_pickle(seq_file)
    frames = raw / "3dpw" / "imageFiles" / seq_file.stem
    image = frames / "image_00000.jpg"
    keypoints = [np.asarray(p[0], float).T for p in seq["poses2d"]]  # per actor (18, 3)
    people = tmp_path / "people.json"
    people.write_text(json.dumps({image.name: [k.tolist() for k in keypoints]}))
    # The inputs of all four launches first: they run side by side, checked in order below.
    # A folder without people: one centred crop per image; a video: every second frame.
    video = tmp_path / "clip.mp4"
    stack = np.stack(
        [np.asarray(Image.open(f).convert("RGB")) for f in sorted(frames.glob("*.jpg"))[:3]]
    )
    iio.imwrite(video, stack[:, : stack.shape[1] // 16 * 16, : stack.shape[2] // 16 * 16], fps=10)
    twin = tmp_path / "twin"
    twin.mkdir()
    (twin / image.name).write_bytes(image.read_bytes())
    runs = _concurrently(
        partial(
            _script,
            "predict.py",
            image,
            "--checkpoint",
            offline_run,
            "--out",
            tmp_path / "a",
            "--people",
            people,
        ),
        partial(
            _script,
            "predict.py",
            *(frames, video, "--checkpoint", offline_run, "--out", tmp_path / "b"),
            *("--video-step", "2", "--batch-size", "4"),
        ),
        partial(
            _script,
            "predict.py",
            *(tmp_path / "nope.jpg", "--checkpoint", offline_run, "--out", tmp_path / "c"),
        ),
        partial(
            _script,
            "predict.py",
            *(image, twin / image.name, "--checkpoint", offline_run, "--out", tmp_path / "d"),
        ),
    )
    out = runs[0].result()
    assert out.returncode == 0, out.stderr[-3000:]
    overlay = np.asarray(Image.open(tmp_path / "a" / "image_00000_overlay.png"))
    Image.fromarray(overlay).save(test_output / "predict_overlay.png")  # to look at
    original = np.asarray(Image.open(image).convert("RGB"))
    assert overlay.shape == original.shape
    for p, kp in enumerate(keypoints):
        arrays = np.load(tmp_path / "a" / f"image_00000_p{p}.npz")
        saved = json.loads((tmp_path / "a" / f"image_00000_p{p}.json").read_text())
        assert set(saved) >= {"pose", "betas", "camera", "translation", "smpl_joints", "vertices"}
        np.testing.assert_allclose(saved["translation"], arrays["translation"], atol=1e-5)
        # The mesh, projected with the saved intrinsics, covers the person's keypoint box.
        uvw = arrays["vertices"] @ arrays["intrinsics"].T
        uv = uvw[:, :2] / uvw[:, 2:]
        mesh_box = np.concatenate([uv.min(0), uv.max(0)])
        ok = kp[:, 2] > 0
        person_box = np.concatenate([kp[ok, :2].min(0), kp[ok, :2].max(0)])
        assert _box_iou(mesh_box, person_box) > 0.3, (mesh_box, person_box)
        # and the overlay changed the pixels there.
        x0, y0, x1, y1 = np.clip(person_box, 0, [*original.shape[1::-1]] * 2).astype(int)
        changed = np.abs(overlay[y0:y1, x0:x1].astype(int) - original[y0:y1, x0:x1]).sum(-1) > 30
        assert changed.mean() > 0.1

    # The folder and the video.
    out = runs[1].result()
    assert out.returncode == 0, out.stderr[-3000:]
    n_images = len(list(frames.glob("*.jpg")))
    assert len(list((tmp_path / "b").glob("image_*_p0.npz"))) == n_images
    assert sorted(p.name for p in (tmp_path / "b").glob("clip_*_overlay.png")) == [
        "clip_f000000_overlay.png",
        "clip_f000002_overlay.png",
    ]
    missing = runs[2].result()
    assert missing.returncode == 2 and "input not found" in missing.stderr
    clash = runs[3].result()
    assert clash.returncode == 2 and "two inputs would write image_00000_*" in clash.stderr


def test_compare_trains_both_variants_from_one_initialisation(packed, tmp_path):
    out = tmp_path / "cmp"
    # At _args' 128-pixel crops the part maps are 32 x 32: attention pools them to 16 x 16 (as
    # the default 28 does PARE's 56 x 56).
    args = _args(
        packed,
        out,
        "train.max_steps=4",
        "train.log_every=1",
        "logging.wandb_mode=offline",
        "model.attention.resolution=16",
    )
    cmd = [sys.executable, str(ROOT / "train" / "compare.py"), "--out", str(out), *args]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "self-attention" in done.stdout and "difference" in done.stdout
    results = json.loads((out / "comparison.json").read_text())
    with open(out / "comparison.csv") as f:
        rows = {r["metric"]: r for r in __import__("csv").DictReader(f)}
    for label, key in (("PA-MPJPE (mm)", "pa_mpjpe"), ("parameters (M)", "parameters_m")):
        a, b = results["vanilla"][key], results["attention"][key]
        assert float(rows[label]["difference"]) == pytest.approx(b - a, rel=1e-4, abs=1e-6)
    assert results["attention"]["parameters_m"] > results["vanilla"]["parameters_m"]
    assert results["vanilla"]["samples"] == results["attention"]["samples"] > 0
    assert all(results[v]["step_time_s"] > 0 and results[v]["peak_memory_mb"] > 0 for v in results)
    # Same seed, data, budget and initialisation; only the attention switch differs.
    cfgs = {v: load_config([out / v / "config.yaml"]) for v in ("vanilla", "attention")}
    assert cfgs["vanilla"].train.init_weights == cfgs["attention"].train.init_weights
    assert cfgs["vanilla"].train.init_weights == str(out / "init.safetensors")
    assert cfgs["vanilla"].train.seed == cfgs["attention"].train.seed
    assert cfgs["vanilla"].data == cfgs["attention"].data
    assert (cfgs["vanilla"].model.attention.enabled, cfgs["attention"].model.attention.enabled) == (
        False,
        True,
    )
    groups = {
        read_wandb_run(next((out / v / "wandb").glob("offline-run-*")))["group"]
        for v in ("vanilla", "attention")
    }
    assert len(groups) == 1 and groups.pop().startswith("compare-")
    # The variant logs what its attention does (W&B: the per-part gates too); vanilla does not.
    logged = {v: (out / v / "train.log").read_text() for v in ("vanilla", "attention")}
    for key in ("attention/gate_abs_mean", "attention/entropy_nats", "attention/relative_change"):
        assert key in logged["attention"] and key not in logged["vanilla"]
    history = read_wandb_run(next((out / "attention" / "wandb").glob("offline-run-*")))
    assert "attention/gate/left_knee" in history["summary"]
