"""The converted PARE checkpoint through the entry points: train.py fine-tunes from it
(`--config DIR/config.yaml`), evaluate.py takes the folder or the .ckpt + YAML. (The conversion
itself is tested against PARE's definitions in tests/test_convert_pare.py; here the checkpoint
only has to be well-formed.)"""

import json
import subprocess
import sys
from functools import partial

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pare.config import load_config
from pare.convert import pare_name
from pare.models import build_model
from tests.train.test_train import ROOT, _args, _concurrently, _train

pytestmark = pytest.mark.slow

# A small PARE: ResNet-18 body, 3 x 32-channel deconvolution branches, 16 shape/camera features.
PARE_YAML = {
    "METHOD": "pare",
    "DATASET": {"USE_HEATMAPS": "part_segm", "IMG_RES": 224, "FOCAL_LENGTH": 5000.0},
    "PARE": {
        "BACKBONE": "resnet18",
        "NUM_DECONV_LAYERS": 3,
        "NUM_DECONV_FILTERS": 32,
        "NUM_FEATURES_SMPL": 16,
        "USE_KEYPOINT_ATTENTION": True,
    },
}


def _pare_state(seed: int) -> dict[str, torch.Tensor]:
    """Our model's random weights under PARE's names and layouts (pose_mlp as a
    LocallyConnected2d weight, channel-major shape/camera inputs, 6-major init_pose)."""
    cfg = load_config(
        [],
        [
            "model.backbone=resnet18",
            "model.branch_layers=3",
            "model.branch_channels=32",
            "model.shape_cam_channels=16",
            "body.model_path=standin",
        ],
    )
    torch.manual_seed(seed)
    state = {}
    for key, value in build_model(cfg.model, cfg.body).state_dict().items():
        name = pare_name(key)
        if name == "model.head.pose_mlp.weight":
            value = value.permute(2, 1, 0)[None, ..., None, None]  # (1, 6, C, 24, 1, 1)
        elif name in ("model.head.shape_mlp.weight", "model.head.cam_mlp.weight"):
            value = value.unflatten(1, (24, 16)).transpose(1, 2).flatten(1)
        elif name == "model.head.init_pose":
            value = value.t().reshape(1, 144)
        elif name in ("model.head.init_shape", "model.head.init_cam"):
            value = value[None]
        state[name] = value
    return state


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-style checkpoint and its YAML, and their conversion (both tests below read
    them, neither writes to them): (ckpt, yaml, converted folder)."""
    tmp_path = tmp_path_factory.mktemp("released")
    ckpt, pare_yaml, converted = tmp_path / "p.ckpt", tmp_path / "p.yaml", tmp_path / "converted"
    torch.save({"state_dict": _pare_state(3), "epoch": 1, "global_step": 7}, ckpt)
    pare_yaml.write_text(yaml.safe_dump(PARE_YAML))
    cmd = [sys.executable, str(ROOT / "train" / "convert_pare.py"), "--ckpt", str(ckpt)]
    cmd += ["--cfg", str(pare_yaml), "--out", str(converted), "body.model_path=standin"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return ckpt, pare_yaml, converted


def test_train_fine_tunes_from_a_converted_checkpoint(packed, released, tmp_path):
    _, _, converted = released
    # Training at learning rate 0 for two steps leaves every parameter where it started, so the
    # run's final weights show what it started from.
    run = tmp_path / "run"
    args = _args(packed, run, "train.max_steps=2", "optim.lr=0", "data.crop_size=128")
    args = [a for a in args if not a.startswith("model.")]  # the architecture is the converted one
    _train(["--config", str(converted / "config.yaml"), *args])
    start, final = load_file(converted / "model.safetensors"), load_file(run / "model.safetensors")
    assert set(start) == set(final)
    cfg = load_config([converted / "config.yaml"])
    model = build_model(cfg.model, cfg.body)
    parameters = {name for name, _ in model.named_parameters()}
    assert parameters and parameters <= set(start)
    for name in parameters:
        assert torch.equal(start[name], final[name]), name
    # And it is not the fresh initialisation: a model built from the same config differs.
    assert not torch.equal(model.state_dict()["head.pose_weight"], start["head.pose_weight"])


def test_evaluate_takes_the_converted_folder_or_the_ckpt_and_yaml(packed, released, tmp_path):
    ckpt, pare_yaml, converted = released
    evaluate = [
        sys.executable,
        str(ROOT / "train" / "evaluate.py"),
        "--shards",
        packed / "3dpw_val",
    ]
    runs = {
        "folder": ["--checkpoint", converted],
        "ckpt": ["--checkpoint", ckpt, "--config", pare_yaml],
    }
    overrides = ["body.model_path=standin", "data.num_workers=0"]
    cmds = [
        [*evaluate, *args, "--out", tmp_path / f"eval-{name}", *overrides]
        for name, args in runs.items()
    ]
    # And without the YAML (checked last): the three launches side by side.
    cmds.append([*evaluate, "--checkpoint", ckpt, "body.model_path=standin"])
    *results, no_yaml = (
        run.result()
        for run in _concurrently(
            *(
                partial(
                    subprocess.run, list(map(str, cmd)), capture_output=True, text=True, cwd=ROOT
                )
                for cmd in cmds
            )
        )
    )
    reports = {}
    for name, result in zip(runs, results, strict=True):
        out = tmp_path / f"eval-{name}"
        assert result.returncode == 0, result.stderr[-3000:]
        assert "PARE released (p.ckpt, resnet18)" in result.stdout
        reports[name] = json.loads((out / "eval.json").read_text())["3dpw"]
    (folder,), (direct,) = reports["folder"].values(), reports["ckpt"].values()
    assert folder["overall"]["samples"] > 0
    assert folder["overall"] == direct["overall"]
    # Without the YAML a .ckpt cannot be read: one line, exit 2.
    assert no_yaml.returncode == 2
    assert "pass the YAML released with it" in no_yaml.stderr
