"""Entry points as users run them: separate processes, real files."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parents[1]


def _run(args, tmp_path):
    env = dict(os.environ)  # carries the test session's PARE_CACHE
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def _check_body_model(tmp_path, *args):
    return _run([sys.executable, str(ROOT / "train" / "check_body_model.py"), *args], tmp_path)


@pytest.mark.slow
def test_body_model_check_reports_and_draws(tmp_path):
    out = _check_body_model(tmp_path, "--out", str(tmp_path / "check"))
    assert out.returncode == 0, out.stderr
    assert "STAND-IN body model" in out.stdout
    assert "vertices=6890, faces=13776, euler=2, components=1, closed_manifold=True" in out.stdout
    assert "batch 64 -> vertices (64, 6890, 3), joints (64, 45, 3)" in out.stdout
    mean_error = float(
        next(line for line in out.stdout.splitlines() if line.startswith("mean")).split()[-1]
    )
    assert mean_error < 0.01  # mm
    # The nine extra joints, MPII's pelvis between the LSP hips.
    lines = out.stdout.split("J_regressor_extra joints at rest")[1].splitlines()[1:10]
    extra = {line.split()[0]: np.array(line.split()[1:], float) for line in lines}
    assert list(extra) == [
        "right_hip", "left_hip", "neck", "head_top", "pelvis", "thorax", "spine", "jaw", "head"
    ]  # fmt: skip
    assert extra["head_top"][1] > extra["neck"][1] > extra["pelvis"][1]
    image = np.asarray(Image.open(tmp_path / "check" / "body_preview.png"))
    assert image.shape == (480, 960, 3)
    body = (np.abs(image.astype(int) - image[0, 0]).sum(-1) > 30).mean()
    assert 0.03 < body < 0.5  # a figure, neither empty nor filling the frame


@pytest.mark.slow
def test_convert_console_script(tmp_path, standin_folder):
    script = Path(sys.executable).with_name("pare-convert-smpl")
    assert script.is_file(), "pare-convert-smpl is not installed; pip install -e . registers it"
    out = _run(
        [str(script), str(standin_folder / "SMPL_FEMALE.pkl"), "--out", str(tmp_path / "f.npz")],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "f.npz", allow_pickle=False) as z:
        assert z["v_template"].shape == (6890, 3) and z["J_regressor"].shape == (24, 6890)


@pytest.mark.slow
def test_check_with_missing_smpl_folder_explains(tmp_path):
    out = _check_body_model(tmp_path, "--model-path", str(tmp_path / "nope"))
    assert out.returncode == 2
    assert out.stderr.startswith("error: SMPL model path does not exist")
    assert "licensed" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_make_synthetic_3dpw_and_mpii(tmp_path):
    script = str(ROOT / "shards" / "make_synthetic.py")
    out = _run(
        [
            sys.executable,
            script,
            "3dpw",
            "--out",
            str(tmp_path / "3dpw"),
            "--sequences",
            "2",
            "--frames",
            "3",
            "--size",
            "96",
            "160",
            "--seed",
            "1",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "3DPW frames" in out.stderr  # the progress bar
    assert len(list((tmp_path / "3dpw" / "sequenceFiles").rglob("*.pkl"))) == 2
    assert len(list((tmp_path / "3dpw" / "imageFiles").rglob("*.jpg"))) == 6
    out = _run(
        [
            sys.executable,
            script,
            "mpii",
            "--out",
            str(tmp_path / "mpii"),
            "--images",
            "4",
            "--image-scale",
            "0.25",
            "--eft",
            "--no-progress",
        ],
        tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mpii" / "mpii_human_pose_v1_u12_1.mat").is_file()
    assert (tmp_path / "mpii" / "MPII_ver01.json").is_file()
    assert len(list((tmp_path / "mpii" / "images").glob("*.jpg"))) == 4
    assert not list(tmp_path.rglob("*.tmp"))
    bad = _run(
        [sys.executable, script, "3dpw", "--out", str(tmp_path / "x"), "--frames", "0"], tmp_path
    )
    assert bad.returncode == 2 and "--frames must be at least 1" in bad.stderr
