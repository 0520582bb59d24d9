"""Evaluation: the mean-pose baseline's parameters, mean-parameter files, sample errors against
loops and analytic values (oracle and known perturbations), per-sequence tables, MPII PCKh."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare.body.joints import H36M_TO_EVAL14, MPII16_TO_49, MPII_16
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
        "smpl_joints": torch.randn(3, 24, 3, generator=g),
    }
    gt = {
        "h36m_3d": torch.randn(3, 17, 3, generator=g),
        "vertices": torch.randn(3, 50, 3, generator=g),
        "smpl_joints": torch.randn(3, 24, 3, generator=g),
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
        # PARE's PVE: the vertices as they are (compute_error_verts in PARE's eval_utils.py).
        raw = pred["vertices"][b].double().numpy() - gt["vertices"][b].double().numpy()
        assert errors["pve_pare"][b] == pytest.approx(
            1000 * np.linalg.norm(raw, axis=1).mean(), rel=1e-5
        )


# --------------------------------------------------------------------------- oracle checks


def _ground_truth(n=6, seed=0):
    from pare.body import SMPLBody

    g = torch.Generator().manual_seed(seed)
    pose = 0.3 * torch.randn(n, 72, generator=g)
    betas = torch.randn(n, 10, generator=g)
    gender = torch.arange(n) % 3
    return SMPLBody("standin")(pose, betas, gender)


def _about_pelvis(gt, fn):
    pelvis = gt["h36m_3d"][:, :1]
    return {k: fn(gt[k] - pelvis) + pelvis for k in ("h36m_3d", "vertices", "smpl_joints")}


def test_oracle_predictions_score_zero_error_and_full_pck():
    gt = _ground_truth()
    errors = sample_errors({k: v.clone() for k, v in gt.items()}, gt)
    for name in ("mpjpe", "pa_mpjpe", "pve", "pve_pare"):
        assert np.abs(errors[name]).max() < 1e-3, name  # mm
    assert (errors["pck50"] == 100).all()
    # Every threshold counts but 0 mm, where float noise of the alignment decides (1 of 200).
    assert (errors["auc"] >= 99.5).all()
    assert (errors["pck50_official"] == 100).all() and np.allclose(errors["auc_official"], 1.0)


def test_known_perturbations_give_the_analytic_errors():
    gt = _ground_truth()
    pelvis = gt["h36m_3d"][:, :1].double().numpy()
    joints = gt["h36m_3d"].double().numpy()[:, list(H36M_TO_EVAL14)] - pelvis  # (B, 14, 3)
    verts = gt["vertices"].double().numpy() - pelvis

    # A rotation by theta about an axis through the pelvis moves a point at distance r from the
    # axis by 2 r sin(theta / 2); Procrustes undoes it entirely.
    theta, axis = 0.7, np.array([0.0, 1.0, 0.0])
    r = torch.as_tensor(Rotation.from_rotvec(theta * axis).as_matrix(), dtype=torch.float32)
    errors = sample_errors(_about_pelvis(gt, lambda x: x @ r.T), gt)
    radial = np.linalg.norm(joints - (joints @ axis)[..., None] * axis, axis=-1)
    np.testing.assert_allclose(
        errors["mpjpe"], 1000 * (2 * np.sin(theta / 2) * radial).mean(-1), rtol=1e-4
    )
    assert errors["pa_mpjpe"].max() < 0.01 and (errors["pck50"] == 100).all()

    # A scale k about the pelvis: every point moves by |k - 1| times its distance.
    k = 1.1
    errors = sample_errors(_about_pelvis(gt, lambda x: k * x), gt)
    np.testing.assert_allclose(
        errors["mpjpe"], 1000 * (k - 1) * np.linalg.norm(joints, axis=-1).mean(-1), rtol=1e-4
    )
    np.testing.assert_allclose(
        errors["pve"], 1000 * (k - 1) * np.linalg.norm(verts, axis=-1).mean(-1), rtol=1e-4
    )
    assert errors["pa_mpjpe"].max() < 0.01

    # A translation: the metrics are pelvis-aligned, so nothing changes, but PARE's PVE, which
    # aligns nothing, is the length of the shift for every sample.
    shift = torch.tensor([0.3, -0.2, 2.0])
    errors = sample_errors({k: gt[k] + shift for k in ("h36m_3d", "vertices", "smpl_joints")}, gt)
    for name in ("mpjpe", "pa_mpjpe", "pve"):
        assert errors[name].max() < 1e-3, name
    assert (errors["pck50_official"] == 100).all()  # root-aligned too
    np.testing.assert_allclose(
        errors["pve_pare"], 1000 * np.sqrt(0.3**2 + 0.2**2 + 2.0**2), rtol=1e-5
    )


def test_pck_and_auc_count_aligned_joints_against_a_loop():
    gt = _ground_truth(n=4, seed=1)
    g = torch.Generator().manual_seed(2)
    noisy = {k: v + 0.04 * torch.randn(v.shape, generator=g) for k, v in gt.items()}
    errors = sample_errors(noisy, gt)
    from pare.metrics import similarity_align

    for b in range(4):
        p = noisy["h36m_3d"][b].double()
        t = gt["h36m_3d"][b].double()
        pj, tj = (p - p[0])[list(H36M_TO_EVAL14)], (t - t[0])[list(H36M_TO_EVAL14)]
        d = (similarity_align(pj[None], tj[None])[0] - tj).norm(dim=-1).numpy() * 1000
        assert errors["pck50"][b] == pytest.approx(100 * np.mean(d <= 50))
        assert errors["auc"][b] == pytest.approx(
            100 * np.mean([np.mean(d <= t) for t in range(200)])
        )


def test_per_sequence_groups_keys_and_parse_rejects_foreign_keys():
    from pare.data.packing.keys import parse_3dpw_key
    from pare.evaluation import METRICS, per_sequence

    keys = ["3dpw_a_b_00_a0_f00001", "3dpw_a_b_00_a1_f00001", "3dpw_c_01_a0_f00009"]
    result = {"keys": keys} | {m: np.array([1.0, 3.0, 10.0]) for m in METRICS}
    table = per_sequence(result)
    assert table["a_b_00"]["samples"] == 2 and table["a_b_00"]["mpjpe"] == 2.0
    assert table["c_01"]["pa_mpjpe"] == 10.0
    assert parse_3dpw_key("3dpw_downtown_walk_00_a1_f00012") == ("downtown_walk_00", 1, 12)
    with pytest.raises(ValueError, match="not a packed 3DPW key"):
        parse_3dpw_key("mpii_000001_r0")


# --------------------------------------------------------------------------- MPII PCKh


class _KeypointOracle(torch.nn.Module):
    """Predicts each image's ground-truth 2D joints (looked up by the image), moved by a
    per-image offset in input pixels."""

    def __init__(self, table: dict, size: int) -> None:
        super().__init__()
        self.table, self.size = table, size

    def forward(self, images):
        rows = [self.table[img.numpy().tobytes()] for img in images]
        pixels = torch.stack([kp[:, :2] + offset for kp, offset in rows])
        return {"keypoints_2d": pixels / (self.size / 2.0) - 1.0}


def test_pckh_of_an_oracle_with_known_offsets(packed):
    from pare.data.streaming.batch import normalize_images
    from pare.data.streaming.stream import eval_loader, shard_urls
    from pare.evaluation import evaluate_pckh

    loader = eval_loader(shard_urls(str(packed / "mpii_val")), 4)
    table, expected_hits, expected_count = {}, 0, 0
    to_mpii = MPII16_TO_49.tolist()
    for i, batch in enumerate(loader):
        for j in range(len(batch["__key__"])):
            head = float(batch["head_size"][j])
            assert head > 0
            # Alternate people: every joint 0.45 head sizes away (inside 0.5) or 0.55 (outside).
            inside = (i + j) % 2 == 0
            offset = torch.tensor([0.6, 0.8]) * (0.45 if inside else 0.55) * head
            image = normalize_images(batch["image"][j : j + 1])[0]
            table[image.numpy().tobytes()] = (batch["keypoints_2d"][j], offset)
            visible = batch["keypoints_2d"][j, to_mpii, 2] > 0
            counted = visible.clone()
            counted[[MPII_16.index("pelvis"), MPII_16.index("thorax")]] = False
            expected_count += int(counted.sum())
            expected_hits += int(counted.sum()) if inside else 0
    result = evaluate_pckh(_KeypointOracle(table, 224), loader, "cpu")
    assert result["total"] == pytest.approx(100 * expected_hits / expected_count)
    assert len(result["keys"]) == len(table)


def test_head_size_is_the_head_box_diagonal_in_input_pixels(raw, packed):
    from pare.data.packing.readers import Skips, read_mpii
    from pare.data.streaming.stream import eval_loader, shard_urls

    people = {
        f"mpii_{Path(p.image).stem}_r{p.rect}": p
        for p in read_mpii(raw / "mpii" / "mpii_human_pose_v1_u12_1.mat", Skips())
    }
    batch = next(iter(eval_loader(shard_urls(str(packed / "mpii_val")), 8, crop_size=160)))
    for j, key in enumerate(batch["__key__"]):
        person = people[key]
        # The crop's scale from two annotated joints: input pixels per image pixel.
        seen = np.flatnonzero(person.keypoints[:, 2] > 0)[:2]
        slots = MPII16_TO_49[seen].tolist()
        a_img, b_img = person.keypoints[seen, :2]
        a_in, b_in = batch["keypoints_2d"][j, slots, :2].double().numpy()
        scale = np.linalg.norm(a_in - b_in) / np.linalg.norm(a_img - b_img)
        diag = np.hypot(*(person.head_box[2:] - person.head_box[:2]))
        assert float(batch["head_size"][j]) == pytest.approx(0.6 * diag * scale, rel=1e-3)


def _official_3dpw_pck_auc(pred: np.ndarray, gt: np.ndarray) -> tuple[float, float]:
    """The official 3DPW evaluator's PCK (%) and AUC over a set of frames, written from its
    evaluate.py (aymenmir1/3dpw-eval): root-aligned joints in mm, a per-frame loop, errors of
    SMPL_MAJOR_JOINTS, PCK at 50 mm, and AUC as scipy's quad over np.interp of the PCK at
    0..199 mm against the thresholds divided by 199."""
    from scipy import integrate

    major = [1, 2, 4, 5, 7, 8, 16, 17, 18, 19, 20, 21]
    errors = []
    for p, t in zip(pred * 1000.0, gt * 1000.0, strict=True):
        errors.append(np.sqrt(np.sum(((t - t[0]) - (p - p[0])) ** 2, axis=1))[major])
    errors = np.stack(errors)

    def pck(threshold):
        return np.mean(np.mean(errors <= threshold, axis=1))

    xs = np.arange(0.0, 200.0)
    ys = [pck(x) for x in xs]
    auc = integrate.quad(lambda x: np.interp(x, xs / xs.max(), ys), 0.0, 1.0, limit=500)[0]
    return 100.0 * pck(50.0), auc


def test_official_pck_and_auc_match_the_3dpw_evaluators_definitions():
    gt = _ground_truth(n=8, seed=3)
    g = torch.Generator().manual_seed(4)
    # Errors spread over the whole 0..200 mm curve, plus a translation the root alignment removes
    # and a rotation it does not (the official PCK has no Procrustes).
    rot = torch.as_tensor(Rotation.from_rotvec([0.0, 0.04, 0.0]).as_matrix(), dtype=torch.float32)
    noisy = {
        k: v @ rot.T + 0.02 * torch.randn(v.shape, generator=g) + torch.tensor([0.2, 0.0, 3.0])
        for k, v in gt.items()
    }
    errors = sample_errors(noisy, gt)
    pck, auc = _official_3dpw_pck_auc(
        noisy["smpl_joints"].double().numpy(), gt["smpl_joints"].double().numpy()
    )
    assert 5 < pck < 95 and 0.05 < auc < 0.95  # the example exercises both ends
    assert errors["pck50_official"].mean() == pytest.approx(pck, abs=1e-9)
    assert errors["auc_official"].mean() == pytest.approx(auc, abs=1e-6)
    # Not our Procrustes-aligned numbers on the 14 H36M joints: the rotation counts here.
    assert errors["pck50"].mean() > errors["pck50_official"].mean()
