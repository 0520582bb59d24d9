"""Evaluation helpers: the mean-pose baseline's parameters, mean-parameter files, sample errors."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare.body.joints import H36M_TO_EVAL14
from pare.evaluation import mean_training_pose, sample_errors
from pare.geometry import matrix_to_rot6d
from pare.models.head import PareHead, read_mean_params, set_mean_params


def _batches(seed=0):
    rng = np.random.default_rng(seed)
    for n in (5, 7):
        yield {
            "pose": torch.as_tensor(rng.normal(0, 0.6, (n, 72)), dtype=torch.float32),
            "betas": torch.as_tensor(rng.normal(0, 1, (n, 10)), dtype=torch.float32),
            "has_smpl": torch.as_tensor(rng.random(n) < 0.7),
        }


def test_mean_training_pose_is_the_chordal_mean_of_scipy():
    batches = list(_batches())
    rotmat, betas = mean_training_pose(batches)
    poses = torch.cat([b["pose"][b["has_smpl"]] for b in batches]).double().numpy()
    for joint in range(24):
        expected = Rotation.from_rotvec(poses[:, 3 * joint : 3 * joint + 3]).mean().as_matrix()
        np.testing.assert_allclose(rotmat[joint].numpy(), expected, atol=1e-5)
    kept = torch.cat([b["betas"][b["has_smpl"]] for b in batches])
    torch.testing.assert_close(betas, kept.mean(0))
    with pytest.raises(ValueError, match="no training sample has SMPL"):
        mean_training_pose([{**batches[0], "has_smpl": torch.zeros(5, dtype=torch.bool)}])


def test_mean_parameter_files_in_6d_or_axis_angle(tmp_path):
    rotations = Rotation.random(24, random_state=1)
    sixd = matrix_to_rot6d(torch.as_tensor(rotations.as_matrix())).flatten().numpy()
    np.savez(tmp_path / "six.npz", pose=sixd, shape=np.arange(10.0), cam=np.array([0.8, 0.1, 0]))
    np.savez(
        tmp_path / "aa.npz", pose=rotations.as_rotvec().ravel(), shape=np.zeros(10), cam=np.zeros(3)
    )
    a, b = read_mean_params(tmp_path / "six.npz"), read_mean_params(tmp_path / "aa.npz")
    torch.testing.assert_close(a["start_6d"], b["start_6d"], atol=1e-5, rtol=0)
    head = PareHead(16, upsample=False, branch_channels=8)
    set_mean_params(head, tmp_path / "six.npz")
    assert torch.equal(head.start_betas, torch.arange(10.0)) and head.mean_camera[0] == 0.8
    assert "start_6d" in head.state_dict()  # saved with the weights
    np.savez(tmp_path / "bad.npz", pose=sixd)
    with pytest.raises(ValueError, match=r"lacks \['cam', 'shape'\]"):
        read_mean_params(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match=r"train/mean_params\.py"):
        read_mean_params(tmp_path / "missing.npz")


def test_sample_errors_against_a_loop():
    g = torch.Generator().manual_seed(0)
    pred = {
        "h36m_3d": torch.randn(3, 17, 3, generator=g),
        "vertices": torch.randn(3, 50, 3, generator=g),
    }
    gt = {
        "h36m_3d": torch.randn(3, 17, 3, generator=g),
        "vertices": torch.randn(3, 50, 3, generator=g),
    }
    errors = sample_errors(pred, gt)
    for b in range(3):
        p = pred["h36m_3d"][b].double().numpy()
        t = gt["h36m_3d"][b].double().numpy()
        pj, tj = (p - p[0])[list(H36M_TO_EVAL14)], (t - t[0])[list(H36M_TO_EVAL14)]
        assert errors["mpjpe"][b] == pytest.approx(
            1000 * np.linalg.norm(pj - tj, axis=1).mean(), rel=1e-5
        )
        pv = pred["vertices"][b].double().numpy() - p[0]
        tv = gt["vertices"][b].double().numpy() - t[0]
        assert errors["pve"][b] == pytest.approx(
            1000 * np.linalg.norm(pv - tv, axis=1).mean(), rel=1e-5
        )
        assert errors["pa_mpjpe"][b] <= errors["mpjpe"][b] + 1e-6
