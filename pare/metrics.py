"""Pose and shape metrics: MPJPE, PA-MPJPE, PVE, 3D PCK/AUC (ours and the official 3DPW
evaluator's) and MPII's PCKh.

3D metrics take ``(B, N, 3)`` tensors and return float64 per-sample errors ``(B,)`` in the inputs' units
(multiply metres by 1000 for the usual mm). Alignment to the root joint is the caller's step
(evaluation subtracts the pelvis first); PA-MPJPE aligns by itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pare.body.joints import MPII_16


def _mean_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.double() - b.double()).norm(dim=-1).mean(-1)


def mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean per-joint position error (B,): mean L2 distance over the N joints."""
    return _mean_l2(pred, gt)


def pve(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-vertex error (B,): mean L2 distance over the mesh vertices."""
    return _mean_l2(pred, gt)


def similarity_align(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``pred`` (B, N, 3) moved by the similarity transform that best fits it to ``gt`` (float64).

    Least squares over proper rotations (never a reflection), positive scale and translation.
    A point set with zero variance gets scale 0, so every point lands on gt's centroid.
    """
    aligned, _ = _aligned_batch_inner(pred, gt)
    return aligned.permute(2, 1, 0)


def _aligned_batch_inner(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Aligned prediction and ground truth, both (3, N, B) float64.

    Computed in closed form for the whole batch (:func:`_align_horn`); samples where that cannot
    be trusted (a singular eigen-solve, non-finite values) are redone with the SVD solution,
    which is slower but handles anything.
    """
    x, y = pred.double(), gt.double()
    # Batch innermost: on a CPU, elementwise work over contiguous rows is far cheaper than 10^4
    # tiny matmuls or LAPACK calls.
    xs, ys = x.permute(2, 1, 0).contiguous(), y.permute(2, 1, 0).contiguous()  # (3, N, B)
    aligned, ok = _align_horn(xs, ys)
    if not bool(ok.all()):
        # Non-finite inputs give NaN, as the other metrics do; the rest get the SVD route.
        finite = torch.isfinite(x).all(-1).all(-1) & torch.isfinite(y).all(-1).all(-1)
        redo = ~ok & finite
        aligned[..., ~ok & ~finite] = torch.nan
        if bool(redo.any()):
            aligned[..., redo] = _align_svd(x[redo], y[redo]).permute(2, 1, 0)
    return aligned, ys


def _align_svd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Umeyama's solution: R from the SVD of the cross-covariance, reflection flipped away."""
    mu_x, mu_y = x.mean(-2, keepdim=True), y.mean(-2, keepdim=True)
    xc, yc = x - mu_x, y - mu_y  # (B, N, 3)
    u, s, vh = torch.linalg.svd(xc.transpose(-1, -2) @ yc)  # cov = sum_i x_i y_i^T = U S V^T
    d = torch.ones_like(s)
    det = torch.linalg.det(vh.transpose(-1, -2) @ u.transpose(-1, -2))
    d[..., -1] = torch.where(det < 0, -1.0, 1.0)  # R = V D U^T must have det +1
    rot = vh.transpose(-1, -2) @ (d[..., :, None] * u.transpose(-1, -2))  # (B, 3, 3)
    var_x = (xc * xc).sum((-1, -2))
    scale = torch.where(
        var_x > 0, (s * d).sum(-1) / var_x.clamp_min(1e-300), torch.zeros_like(var_x)
    )
    return scale[:, None, None] * xc @ rot.transpose(-1, -2) + mu_y


def _align_horn(xs: torch.Tensor, ys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horn's quaternion solution for (3, N, B) point sets; returns aligned (3, N, B) and ok (B,).

    The best rotation is the unit quaternion q maximising q^T Nq q for a symmetric traceless 4x4
    Nq built from the cross-covariance S; the maximum is Nq's largest eigenvalue, the largest
    root of det(Nq - l I) = l^4 - 2|S|^2 l^2 - 8 det(S) l + det(Nq). Newton's method from the
    upper bound sqrt(|x|^2 |y|^2) converges to that root monotonically, and q is a column of
    adj(Nq - l I), which has rank one when the root is simple. A repeated root (e.g. collinear
    points, where the rotation is not unique) or an unconverged one sets ``ok`` False there,
    and the caller takes the SVD route. Everything after S is closed-form arithmetic on
    (B,) vectors, which costs microseconds per operation.
    """
    mu_x, mu_y = xs.mean(1, keepdim=True), ys.mean(1, keepdim=True)  # (3, 1, B)
    xc, yc = xs - mu_x, ys - mu_y
    gx, gy = (xc * xc).sum((0, 1)), (yc * yc).sum((0, 1))  # (B,)
    s = (xc[:, None] * yc[None, :]).sum(2)  # (3, 3, B): s[a, b] = sum_n x_a y_b
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = s
    nq = (
        (sxx + syy + szz, syz - szy, szx - sxz, sxy - syx),
        (syz - szy, sxx - syy - szz, sxy + syx, szx + sxz),
        (szx - sxz, sxy + syx, syy - sxx - szz, syz + szy),
        (sxy - syx, szx + sxz, syz + szy, szz - sxx - syy),
    )
    det_s = (
        sxx * (syy * szz - syz * szy)
        - sxy * (syx * szz - syz * szx)
        + sxz * (syx * szy - syy * szx)
    )
    c2, c1 = -2 * (s * s).sum((0, 1)), -8 * det_s
    c0 = _det4(nq)

    bound = torch.sqrt(gx * gy)
    lam = bound.clone()
    for it in range(100):
        p, dp = _quartic(lam, c2, c1, c0)
        step = torch.where(dp > 0, p / dp, torch.zeros_like(p))
        lam = lam - step
        if it % 4 == 3 and bool((step.abs() <= 1e-13 * bound).all()):
            break
    # Trust only a converged, simple root: p'(root) is the product of the gaps to the other
    # eigenvalues, so a small p' means a (near-)repeated root and an ill-defined rotation.
    p, dp = _quartic(lam, c2, c1, c0)
    ok = (dp > 1e-6 * bound**3) & (p.abs() <= 1e-8 * bound**4)

    shifted = [[nq[i][j] - lam if i == j else nq[i][j] for j in range(4)] for i in range(4)]
    adj = _adjugate4(shifted)  # adj[i][j]: (B,)
    # adj = c q q^T, so the column with the largest diagonal entry is the best-conditioned.
    best = torch.stack([adj[j][j].abs() for j in range(4)], -1).argmax(-1)  # (B,)
    q = [torch.where(best == 0, row[0], torch.where(best == 1, row[1], torch.where(best == 2, row[2], row[3])))
         for row in adj]  # fmt: skip
    q_norm = torch.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3])
    w, i, j, k = (c / q_norm.clamp_min(1e-300) for c in q)
    rot = (
        (1 - 2 * (j * j + k * k), 2 * (i * j - k * w), 2 * (i * k + j * w)),
        (2 * (i * j + k * w), 1 - 2 * (i * i + k * k), 2 * (j * k - i * w)),
        (2 * (i * k - j * w), 2 * (j * k + i * w), 1 - 2 * (i * i + j * j)),
    )
    rx = torch.stack([r[0] * xc[0] + r[1] * xc[1] + r[2] * xc[2] for r in rot])  # (3, N, B)
    scale = torch.where(gx > 0, (yc * rx).sum((0, 1)) / gx.clamp_min(1e-300), torch.zeros_like(gx))
    ok &= torch.isfinite(scale) & torch.isfinite(q_norm)
    return scale * rx + mu_y, ok


def _quartic(
    lam: torch.Tensor, c2: torch.Tensor, c1: torch.Tensor, c0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """p(l) = l^4 + c2 l^2 + c1 l + c0 and its derivative."""
    return ((lam * lam + c2) * lam + c1) * lam + c0, (4 * lam * lam + 2 * c2) * lam + c1


def _minors4(m) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """2x2 minors of rows 0-1 (s) and rows 2-3 (c) of a 4x4 matrix of (B,) tensors."""
    s = [
        m[0][0] * m[1][1] - m[1][0] * m[0][1],
        m[0][0] * m[1][2] - m[1][0] * m[0][2],
        m[0][0] * m[1][3] - m[1][0] * m[0][3],
        m[0][1] * m[1][2] - m[1][1] * m[0][2],
        m[0][1] * m[1][3] - m[1][1] * m[0][3],
        m[0][2] * m[1][3] - m[1][2] * m[0][3],
    ]
    c = [
        m[2][0] * m[3][1] - m[3][0] * m[2][1],
        m[2][0] * m[3][2] - m[3][0] * m[2][2],
        m[2][0] * m[3][3] - m[3][0] * m[2][3],
        m[2][1] * m[3][2] - m[3][1] * m[2][2],
        m[2][1] * m[3][3] - m[3][1] * m[2][3],
        m[2][2] * m[3][3] - m[3][2] * m[2][3],
    ]
    return s, c  # fmt: skip


def _det4(m) -> torch.Tensor:
    """Determinant of a 4x4 matrix given as nested rows of (B,) tensors (Laplace on 2x2 minors)."""
    s, c = _minors4(m)
    return s[0] * c[5] - s[1] * c[4] + s[2] * c[3] + s[3] * c[2] - s[4] * c[1] + s[5] * c[0]


def _adjugate4(m) -> list[list[torch.Tensor]]:
    """Adjugate (det x inverse) of a 4x4 matrix of (B,) tensors, from the shared 2x2 minors."""
    s, c = _minors4(m)
    return [
        [m[1][1] * c[5] - m[1][2] * c[4] + m[1][3] * c[3], -m[0][1] * c[5] + m[0][2] * c[4] - m[0][3] * c[3],
         m[3][1] * s[5] - m[3][2] * s[4] + m[3][3] * s[3], -m[2][1] * s[5] + m[2][2] * s[4] - m[2][3] * s[3]],
        [-m[1][0] * c[5] + m[1][2] * c[2] - m[1][3] * c[1], m[0][0] * c[5] - m[0][2] * c[2] + m[0][3] * c[1],
         -m[3][0] * s[5] + m[3][2] * s[2] - m[3][3] * s[1], m[2][0] * s[5] - m[2][2] * s[2] + m[2][3] * s[1]],
        [m[1][0] * c[4] - m[1][1] * c[2] + m[1][3] * c[0], -m[0][0] * c[4] + m[0][1] * c[2] - m[0][3] * c[0],
         m[3][0] * s[4] - m[3][1] * s[2] + m[3][3] * s[0], -m[2][0] * s[4] + m[2][1] * s[2] - m[2][3] * s[0]],
        [-m[1][0] * c[3] + m[1][1] * c[1] - m[1][2] * c[0], m[0][0] * c[3] - m[0][1] * c[1] + m[0][2] * c[0],
         -m[3][0] * s[3] + m[3][1] * s[1] - m[3][2] * s[0], m[2][0] * s[3] - m[2][1] * s[1] + m[2][2] * s[0]],
    ]  # fmt: skip


def pa_mpjpe(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """MPJPE after Procrustes (similarity) alignment of each prediction to its ground truth (B,)."""
    aligned, target = _aligned_batch_inner(pred, gt)  # (3, N, B) each
    d = aligned - target
    return torch.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).mean(0)  # (N, B) -> (B,)


def pck_3d(pred: torch.Tensor, gt: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fraction of joints within ``threshold`` (same units as the inputs) per sample (B,)."""
    err = (pred.double() - gt.double()).norm(dim=-1)
    return (err <= threshold).double().mean(-1)


def auc_3d(
    pred: torch.Tensor, gt: torch.Tensor, thresholds: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Area under the PCK curve: mean PCK over ``thresholds`` per sample (B,).

    3DPW's evaluator reports thresholds 0..199 mm; pass them in the inputs' units.
    """
    err = (pred.double() - gt.double()).norm(dim=-1)  # (B, N)
    t = torch.as_tensor(thresholds, dtype=torch.float64, device=err.device)
    return (err[..., None] <= t).double().mean(-2).mean(-1)


# The official 3DPW evaluator's PCK joints (aymenmir1/3dpw-eval, evaluate.py SMPL_MAJOR_JOINTS):
# SMPL's hips, knees, ankles, shoulders, elbows and wrists.
SMPL_MAJOR_12 = (1, 2, 4, 5, 7, 8, 16, 17, 18, 19, 20, 21)


def pck_auc_3dpw(pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official 3DPW evaluator's PCK@50 mm (a fraction) and AUC (a fraction), per sample.

    ``pred`` and ``gt`` are SMPL's 24 kinematic joints (B, 24, 3) in metres. As the evaluator
    (aymenmir1/3dpw-eval, evaluate.py ``compute_errors``, ``compute_pck``, ``compute_auc``):
    both sets are moved so that SMPL's root (joint 0) is at the origin, no Procrustes; the error
    of the 12 joints :data:`SMPL_MAJOR_12` in mm; PCK counts errors <= 50 mm; AUC integrates
    the PCK at the thresholds 0, 1, ..., 199 mm, linearly interpolated, over the thresholds
    scaled to [0, 1] (so a fraction; the trapezoid rule is that integral exactly). Both are
    linear in the samples, so their means over frames are the evaluator's pooled numbers.
    """
    pred = pred.double() - pred[:, :1].double()
    gt = gt.double() - gt[:, :1].double()
    err = 1000.0 * (pred - gt)[:, list(SMPL_MAJOR_12)].norm(dim=-1)  # (B, 12) mm
    thresholds = torch.arange(200, dtype=torch.float64, device=err.device)
    curve = (err[..., None] <= thresholds).double().mean(-2)  # (B, 200)
    auc = torch.trapezoid(curve, thresholds / thresholds[-1], dim=-1)
    return (err <= 50.0).double().mean(-1), auc


PCKH_EXCLUDED = (MPII_16.index("pelvis"), MPII_16.index("thorax"))


def pckh_correct(
    pred: torch.Tensor, gt: torch.Tensor, head_boxes: torch.Tensor, alpha: float = 0.5
) -> torch.Tensor:
    """(B, 16) bool: joint within ``alpha`` x head size, head size = 0.6 x head-box diagonal.

    ``head_boxes`` is (B, 4) as MPII's ``x1 y1 x2 y2``.
    """
    head = 0.6 * (head_boxes[..., 2:].double() - head_boxes[..., :2].double()).norm(dim=-1)
    err = (pred.double() - gt.double()).norm(dim=-1)
    return err <= alpha * head[..., None]


def pckh(
    pred: torch.Tensor,
    gt: torch.Tensor,
    visible: torch.Tensor,
    head_boxes: torch.Tensor,
    alpha: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MPII PCKh over a set of people: per-joint accuracy (16,) and the total.

    Only annotated-visible joints count. The total leaves out pelvis and thorax, as MPII's
    evaluation does, and weighs joints by how many are visible. A joint never visible is NaN.
    """
    return pckh_summary(pckh_correct(pred, gt, head_boxes, alpha), visible)


def pckh_summary(correct: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-joint accuracy (16,) and the total from per-person hits and visibility (B, 16); see
    :func:`pckh`."""
    correct = correct.bool() & visible.bool()
    count = visible.bool().sum(0).double()
    per_joint = correct.sum(0).double() / count  # NaN where count == 0
    keep = torch.ones(correct.shape[-1], dtype=torch.bool, device=correct.device)
    keep[list(PCKH_EXCLUDED)] = False
    total = correct[:, keep].sum().double() / count[keep].sum()
    return per_joint, total
