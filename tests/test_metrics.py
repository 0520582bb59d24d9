"""Metrics against independent references: scipy's Wahba solver, brute-force loops."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare import metrics as M
from pare.body.joints import MPII_16


def _reference_pa_mpjpe(pred, gt):
    """Per-sample similarity Procrustes with scipy's proper-rotation solver (Wahba/Kabsch)."""
    out = []
    for p, g in zip(pred, gt, strict=True):
        pc, gc = p - p.mean(0), g - g.mean(0)
        if np.allclose(pc, 0):
            aligned = np.broadcast_to(g.mean(0), g.shape)
        elif np.allclose(gc, 0):
            aligned = g
        else:
            rot, _ = Rotation.align_vectors(gc, pc)  # argmin_R sum |gc_i - R pc_i|^2, det R = +1
            rp = rot.apply(pc)
            scale = (gc * rp).sum() / (pc * pc).sum()
            aligned = scale * rp + g.mean(0)
        out.append(np.linalg.norm(aligned - g, axis=1).mean())
    return np.array(out)


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _random_cases(rng, n=300, joints=14):
    pred = rng.normal(size=(n, joints, 3))
    gt = rng.normal(size=(n, joints, 3))
    rot = Rotation.random(n, random_state=1).as_matrix()
    # Half: gt is a noisy similarity transform of pred (a realistic, near-aligned case).
    near = np.einsum("bij,bnj->bni", rot, pred) * rng.uniform(0.5, 2, (n, 1, 1)) + rng.normal(
        size=(n, 1, 3)
    )
    gt[: n // 2] = near[: n // 2] + 0.01 * rng.normal(size=(n // 2, joints, 3))
    return pred, gt


def test_mpjpe_and_pve_match_brute_force():
    rng = np.random.default_rng(0)
    pred, gt = rng.normal(size=(2, 50, 6890 // 10, 3))
    ref = np.array(
        [
            np.mean([np.sqrt(((p - g) ** 2).sum()) for p, g in zip(a, b, strict=True)])
            for a, b in zip(pred, gt, strict=True)
        ]
    )
    np.testing.assert_allclose(M.mpjpe(_t(pred), _t(gt)).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(M.pve(_t(pred), _t(gt)).numpy(), ref, rtol=1e-12)


def test_pa_mpjpe_matches_scipy_on_random_inputs():
    pred, gt = _random_cases(np.random.default_rng(1))
    np.testing.assert_allclose(
        M.pa_mpjpe(_t(pred), _t(gt)).numpy(), _reference_pa_mpjpe(pred, gt), atol=1e-6
    )


def test_pa_mpjpe_recovers_exact_similarity_transforms():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(100, 14, 3))
    rot = Rotation.random(100, random_state=2).as_matrix()
    gt = 1.7 * np.einsum("bij,bnj->bni", rot, pred) + np.array([0.3, -2.0, 5.0])
    assert M.pa_mpjpe(_t(pred), _t(gt)).abs().max() < 1e-9


def test_pa_mpjpe_never_aligns_by_reflection():
    rng = np.random.default_rng(3)
    pred = rng.normal(size=(50, 14, 3))
    mirrored = pred * np.array([-1.0, 1.0, 1.0])  # a reflection, not reachable by a rotation
    ours = M.pa_mpjpe(_t(pred), _t(mirrored)).numpy()
    np.testing.assert_allclose(ours, _reference_pa_mpjpe(pred, mirrored), atol=1e-6)
    assert ours.min() > 0.05  # a reflection-allowing Procrustes would report 0


@pytest.mark.filterwarnings("ignore:Optimal rotation is not uniquely")  # scipy, on rank-1 sets
@pytest.mark.parametrize(
    "case",
    ["pred_collapsed", "gt_collapsed", "both_collapsed", "collinear", "planar", "two_joints"],
)
def test_pa_mpjpe_degenerate_point_sets(case):
    rng = np.random.default_rng(4)
    pred, gt = rng.normal(size=(2, 8, 14, 3))
    if case == "pred_collapsed":
        pred[:] = rng.normal(size=(8, 1, 3))
    elif case == "gt_collapsed":
        gt[:] = rng.normal(size=(8, 1, 3))
    elif case == "both_collapsed":
        pred[:], gt[:] = 1.0, 2.0
    elif case == "collinear":
        pred = rng.normal(size=(8, 14, 1)) * np.array([1.0, 2.0, 3.0])
    elif case == "planar":
        pred[..., 2] = 0
        gt[..., 2] = 0
    elif case == "two_joints":
        pred, gt = pred[:, :2], gt[:, :2]
    ours = M.pa_mpjpe(_t(pred), _t(gt)).numpy()
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, _reference_pa_mpjpe(pred, gt), atol=1e-6)


def test_pa_mpjpe_float32_input_is_computed_in_float64():
    pred, gt = _random_cases(np.random.default_rng(5), n=50)
    ours = M.pa_mpjpe(_t(pred).float(), _t(gt).float())
    assert ours.dtype == torch.float64
    np.testing.assert_allclose(
        ours.numpy(), _reference_pa_mpjpe(pred.astype(np.float32), gt.astype(np.float32)), atol=1e-6
    )


def test_pck_and_auc_match_brute_force():
    rng = np.random.default_rng(6)
    pred, gt = rng.normal(scale=0.1, size=(2, 40, 14, 3))
    thresholds = np.arange(0, 0.2, 0.001)
    err = np.linalg.norm(pred - gt, axis=-1)
    ref_pck = np.array([[sum(e <= 0.15 for e in row) / 14 for row in err]])[0]
    ref_auc = np.array([np.mean([np.mean(row <= t) for t in thresholds]) for row in err])
    np.testing.assert_allclose(M.pck_3d(_t(pred), _t(gt), 0.15).numpy(), ref_pck, atol=1e-12)
    np.testing.assert_allclose(M.auc_3d(_t(pred), _t(gt), thresholds).numpy(), ref_auc, atol=1e-12)


def test_pckh_matches_brute_force():
    rng = np.random.default_rng(7)
    n = 60
    gt = rng.uniform(0, 500, size=(n, 16, 2))
    pred = gt + rng.normal(scale=15, size=(n, 16, 2))
    visible = rng.uniform(size=(n, 16)) > 0.2
    visible[:, 9] = False  # a joint never visible gives NaN, and must not poison the total
    x1y1 = rng.uniform(0, 400, size=(n, 2))
    boxes = np.concatenate([x1y1, x1y1 + rng.uniform(20, 80, size=(n, 2))], 1)
    per_joint, total = M.pckh(_t(pred), _t(gt), _t(visible), _t(boxes))
    correct = np.zeros((n, 16), bool)
    for i in range(n):
        head = 0.6 * np.hypot(boxes[i, 2] - boxes[i, 0], boxes[i, 3] - boxes[i, 1])
        for j in range(16):
            correct[i, j] = np.hypot(*(pred[i, j] - gt[i, j])) <= 0.5 * head
    for j in range(16):
        if j == 9:
            assert torch.isnan(per_joint[j])
        else:
            assert per_joint[j].item() == pytest.approx(correct[visible[:, j], j].mean(), abs=1e-12)
    keep = [j for j, name in enumerate(MPII_16) if name not in ("pelvis", "thorax")]
    ref_total = correct[:, keep][visible[:, keep]].mean()
    assert total.item() == pytest.approx(ref_total, abs=1e-12)


def test_svd_fallback_route_matches_scipy_too():
    """The route taken for degenerate samples is itself exact on ordinary ones."""
    pred, gt = _random_cases(np.random.default_rng(8), n=100)
    aligned = M._align_svd(_t(pred), _t(gt))
    ours = np.linalg.norm(aligned.numpy() - gt, axis=-1).mean(-1)
    np.testing.assert_allclose(ours, _reference_pa_mpjpe(pred, gt), atol=1e-6)


def test_similarity_align_shape_and_mixed_batches():
    """A batch mixing ordinary and degenerate samples: each gets the right answer."""
    rng = np.random.default_rng(9)
    pred, gt = rng.normal(size=(2, 6, 14, 3))
    pred[1] = rng.normal(size=(14, 1)) * np.array([1.0, -1.0, 0.5])  # collinear
    pred[3] = 0.0  # collapsed
    aligned = M.similarity_align(_t(pred), _t(gt))
    assert aligned.shape == (6, 14, 3) and aligned.dtype == torch.float64
    ours = np.linalg.norm(aligned.numpy() - gt, axis=-1).mean(-1)
    with pytest.warns(UserWarning, match="Optimal rotation"):
        ref = _reference_pa_mpjpe(pred, gt)
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_non_finite_and_empty_inputs():
    rng = np.random.default_rng(10)
    pred, gt = rng.normal(size=(2, 4, 14, 3))
    pred[1, 3, 0] = np.nan
    gt[2, 0, 1] = np.inf
    ours = M.pa_mpjpe(_t(pred), _t(gt)).numpy()
    assert np.isnan(ours[1]) and np.isnan(ours[2])
    keep = [0, 3]
    np.testing.assert_allclose(ours[keep], _reference_pa_mpjpe(pred[keep], gt[keep]), atol=1e-6)
    assert np.isnan(M.mpjpe(_t(pred), _t(gt)).numpy()[1])
    assert M.pa_mpjpe(torch.zeros(0, 14, 3), torch.zeros(0, 14, 3)).shape == (0,)
