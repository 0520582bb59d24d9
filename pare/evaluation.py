"""3DPW-protocol evaluation: MPJPE, PA-MPJPE and two PVEs in millimetres, PCK@50 mm and AUC in
percent, and the official 3DPW evaluator's PCK and AUC, per sample.

Joints: the H36M regressor on the mesh, pelvis (H36M joint 0) subtracted, the 14 evaluation
joints. Ground truth comes from the *gendered* SMPL with the sample's pose and betas. PVE
(pelvis-aligned, ``pve``): all 6890 vertices, both meshes moved so their H36M pelvis is at the
origin, no Procrustes. PARE's PVE (``pve_pare``): the mean vertex distance between the two SMPL
outputs as they come, without translation or any alignment (both bodies at SMPL's own origin),
as PARE's ``pare/core/trainer.py`` ``validation_step`` computes ``v2v`` with
``pare/utils/eval_utils.py`` ``compute_error_verts``; it is the number PARE's paper reports as
PVE. PCK and AUC count the Procrustes-aligned joints within 50 mm, and within each threshold 0,
1, ..., 199 mm averaged (the official 3DPW evaluator's thresholds); reports label them PA-PCK@50
and PA-AUC. ``pck50_official`` and ``auc_official`` are the official evaluator's own definitions
(:func:`pare.metrics.pck_auc_3dpw`: 12 SMPL joints, root-aligned, AUC as a fraction), on SMPL's
kinematic joints of the same two bodies. Samples without SMPL ground truth (MPII) are left out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from pare.body import SMPLBody
from pare.body.joints import H36M_TO_EVAL14, MPII16_TO_49
from pare.data.packing.keys import parse_3dpw_key
from pare.data.streaming.batch import normalize_images
from pare.distributed import fail_together, gather_objects, gather_per_sample
from pare.metrics import (
    auc_3d,
    mpjpe,
    pa_mpjpe,
    pck_3d,
    pck_auc_3dpw,
    pckh_summary,
    pve,
    similarity_align,
)

METRICS = ("mpjpe", "pa_mpjpe", "pve", "pve_pare", "pck50", "auc", "pck50_official", "auc_official")
UNITS = {
    "mpjpe": "mm",
    "pa_mpjpe": "mm",
    "pve": "mm",
    "pve_pare": "mm",
    "pck50": "%",
    "auc": "%",
    "pck50_official": "%",
    "auc_official": "fraction",  # as the official evaluator prints it
}
AUC_THRESHOLDS_M = [t / 1000.0 for t in range(200)]


def metric_key(name: str) -> str:
    """The logged name of a metric, with its unit: ``pa_mpjpe_mm``, ``pck50_pct``,
    ``auc_official_fraction``."""
    return f"{name}_{'pct' if UNITS[name] == '%' else UNITS[name]}"


def sample_errors(pred: dict, gt: dict) -> dict[str, np.ndarray]:
    """Per-sample metrics (see :data:`UNITS`) from predicted and ground-truth ``vertices``
    (B, 6890, 3), ``h36m_3d`` (B, 17, 3) and ``smpl_joints`` (B, 24, 3) in metres, as the body
    model outputs them (no translation: ``pve_pare`` compares them as they are)."""
    pred_pelvis, gt_pelvis = pred["h36m_3d"][:, :1].float(), gt["h36m_3d"][:, :1].float()
    pred_j = (pred["h36m_3d"].float() - pred_pelvis)[:, list(H36M_TO_EVAL14)]  # (B, 14, 3)
    gt_j = (gt["h36m_3d"].float() - gt_pelvis)[:, list(H36M_TO_EVAL14)]
    pred_v = pred["vertices"].float() - pred_pelvis  # (B, V, 3)
    gt_v = gt["vertices"].float() - gt_pelvis
    aligned = similarity_align(pred_j, gt_j)  # (B, 14, 3) float64
    official_pck, official_auc = pck_auc_3dpw(pred["smpl_joints"], gt["smpl_joints"])  # (B,) each
    return {
        "mpjpe": 1000.0 * mpjpe(pred_j, gt_j).double().cpu().numpy(),
        "pa_mpjpe": 1000.0 * pa_mpjpe(pred_j, gt_j).double().cpu().numpy(),
        "pve": 1000.0 * pve(pred_v, gt_v).double().cpu().numpy(),
        # PARE's: the raw SMPL outputs, no translation or alignment (see the module docstring).
        "pve_pare": 1000.0
        * pve(pred["vertices"].float(), gt["vertices"].float()).double().cpu().numpy(),
        "pck50": 100.0 * pck_3d(aligned, gt_j, 0.05).cpu().numpy(),
        "auc": 100.0 * auc_3d(aligned, gt_j, AUC_THRESHOLDS_M).cpu().numpy(),
        "pck50_official": 100.0 * official_pck.cpu().numpy(),
        "auc_official": official_auc.cpu().numpy(),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader,
    gt_bodies: SMPLBody,
    device,
    extra: Callable[[dict, dict], dict[str, np.ndarray]] | None = None,
) -> dict:
    """Run ``model`` over an evaluation loader (each sample once across ranks) and gather the
    per-sample errors of every rank. Returns ``keys`` and one array per metric (all ranks),
    plus their means under ``mean``.

    ``extra(pred, batch)``, given the predictions and the batch of the samples with SMPL ground
    truth, returns more per-sample arrays to gather alongside (e.g. what an export needs)."""
    was_training = model.training
    model.eval()
    keys: list[str] = []
    rows: dict[str, list] = {m: [] for m in METRICS}
    with fail_together():  # a damaged shard on one rank must not leave the others waiting
        for batch in loader:
            keep = batch["has_smpl"]
            if not keep.any():
                continue
            kept = {k: v[keep] for k, v in batch.items() if torch.is_tensor(v)}
            pred = model(normalize_images(kept["image"].to(device, non_blocking=True)))
            gt = gt_bodies(
                kept["pose"].to(device), kept["betas"].to(device), kept["gender"].to(device)
            )
            values = sample_errors(pred, gt) | (extra(pred, kept) if extra else {})
            values["_nonfinite"] = _nonfinite_source(kept, pred)
            for name, value in values.items():
                rows.setdefault(name, []).append(value)
            keys += [k for k, kept in zip(batch["__key__"], keep.tolist(), strict=True) if kept]
    model.train(was_training)
    local = {m: np.concatenate(v) if v else np.zeros(0) for m, v in rows.items()}
    keys, values = gather_per_sample(keys, local)
    # Every rank holds every row, so every rank raises the same error (none waits in a collective).
    check_finite(keys, values.pop("_nonfinite", np.zeros(0)), values)
    return {
        "keys": keys,
        **values,
        "mean": {m: float(values[m].mean()) if len(keys) else float("nan") for m in METRICS},
    }


class NonFiniteSample(ValueError):
    """A sample whose ground truth or prediction holds NaN or inf: it would make every mean NaN."""


def _nonfinite_source(batch: dict, pred: dict) -> np.ndarray:
    """Per sample (B,) int8: 0 finite, 1 non-finite ground truth (pose, betas), 2 non-finite
    prediction (vertices, joints)."""
    gt_ok = torch.isfinite(batch["pose"]).all(1) & torch.isfinite(batch["betas"]).all(1)
    pred_ok = torch.isfinite(pred["vertices"].flatten(1)).all(1) & torch.isfinite(
        pred["h36m_3d"].flatten(1)
    ).all(1)
    source = torch.where(~gt_ok.cpu(), 1, torch.where(~pred_ok.cpu(), 2, 0))
    return source.numpy().astype(np.int8)


def check_finite(keys: list[str], source: np.ndarray, values: dict[str, np.ndarray]) -> None:
    """Raise :class:`NonFiniteSample` naming the first sample whose ground truth or prediction
    (``source``: 1 or 2, see :func:`_nonfinite_source`) or any metric is not finite."""
    bad_metric = np.zeros(len(keys), bool)
    for name in METRICS:
        if name in values and len(values[name]):
            bad_metric |= ~np.isfinite(values[name])
    if not (bad_metric.any() or (source != 0).any()):
        return
    i = int(np.flatnonzero((source != 0) | bad_metric)[0])
    count = int(((source != 0) | bad_metric).sum())
    if len(source) and source[i] == 1:
        what = (
            "its ground-truth pose or betas are not finite; packers now reject such samples: "
            "repack the split (shards/verify.py names them)"
        )
    elif len(source) and source[i] == 2:
        what = "the model's prediction is not finite (diverged weights?); check the checkpoint"
    else:
        what = "a metric is not finite"
    raise NonFiniteSample(f"evaluation sample {keys[i]} ({count} such): {what}")


def per_sequence(result: dict) -> dict[str, dict[str, float]]:
    """Metric means and sample counts per 3DPW sequence of an :func:`evaluate` result, sorted by
    sequence name; the sequence comes from each sample's key (ValueError for a non-3DPW key)."""
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(result["keys"]):
        groups.setdefault(parse_3dpw_key(key)[0], []).append(i)
    return {
        name: {m: float(result[m][rows].mean()) for m in METRICS} | {"samples": len(rows)}
        for name, rows in sorted(groups.items())
    }


@torch.no_grad()
def evaluate_pckh(model: nn.Module, loader, device, alpha: float = 0.5) -> dict:
    """MPII PCKh@alpha of the projected 2D joints, over the samples with a head size (MPII
    shards), each once across ranks. Returns ``keys``, per-sample ``correct`` and ``visible``
    (N, 16) in MPII's joint order, ``per_joint`` (16,) and ``total`` in percent."""
    was_training = model.training
    model.eval()
    keys: list[str] = []
    correct, visible = [], []
    # The predicted joints in the slots MPII's annotations fill (as SPIN/PARE map them).
    to_mpii = MPII16_TO_49.tolist()
    with fail_together():
        for batch in loader:
            keep = batch["head_size"] > 0
            if not keep.any():
                continue
            size = batch["image"].shape[-1]
            pred = model(normalize_images(batch["image"][keep].to(device)))
            pixels = (pred["keypoints_2d"].float().cpu() + 1.0) * (size / 2.0)  # [-1, 1] -> px
            gt = batch["keypoints_2d"][keep]
            head = batch["head_size"][keep].double()  # 0.6 x head-box diagonal, input pixels
            err = (pixels[:, to_mpii].double() - gt[:, to_mpii, :2].double()).norm(dim=-1)
            hit = err <= alpha * head[:, None]  # (B, 16)
            correct.append(hit.numpy())
            visible.append((gt[:, to_mpii, 2] > 0).numpy())
            keys += [k for k, kept in zip(batch["__key__"], keep.tolist(), strict=True) if kept]
    model.train(was_training)
    local = {
        "correct": np.concatenate(correct) if correct else np.zeros((0, 16), bool),
        "visible": np.concatenate(visible) if visible else np.zeros((0, 16), bool),
    }
    keys, values = gather_per_sample(keys, local)
    if not keys:
        raise ValueError(
            "no sample has a head size: PCKh needs MPII shards packed by this version "
            "(shards/pack_mpii.py stores head_size)"
        )
    per_joint, total = pckh_summary(
        torch.as_tensor(values["correct"]), torch.as_tensor(values["visible"])
    )
    return {
        "keys": keys,
        **values,
        "per_joint": (100.0 * per_joint).tolist(),
        "total": 100.0 * float(total),
    }


def mean_training_pose(loader) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean-pose baseline's parameters from the training samples with SMPL: per joint the
    rotation nearest (Frobenius) to the mean rotation matrix, and the mean betas."""
    from pare.geometry import axis_angle_to_matrix

    rot_sum, beta_sum, count = (
        torch.zeros(24, 3, 3, dtype=torch.float64),
        torch.zeros(10, dtype=torch.float64),
        0,
    )
    for batch in loader:
        keep = batch["has_smpl"]
        rot_sum += axis_angle_to_matrix(batch["pose"][keep].double().view(-1, 24, 3)).sum(0)
        beta_sum += batch["betas"][keep].double().sum(0)
        count += int(keep.sum())
    # Under several processes each rank read a share of the samples: add them all up.
    parts = gather_objects((rot_sum, beta_sum, count))
    rot_sum, beta_sum = sum(p[0] for p in parts), sum(p[1] for p in parts)
    count = sum(p[2] for p in parts)
    if count == 0:
        raise ValueError(
            "no training sample has SMPL parameters: the mean-pose baseline needs some"
        )
    u, _, vt = torch.linalg.svd(rot_sum / count)
    sign = torch.sign(torch.linalg.det(u @ vt))  # a proper rotation, never a reflection
    vt = torch.cat([vt[:, :2], vt[:, 2:] * sign[:, None, None]], dim=1)
    return (u @ vt).float(), (beta_sum / count).float()


class ConstantPrediction(nn.Module):
    """A 'model' that predicts the same SMPL body for every image (the mean-pose baseline)."""

    def __init__(self, rotmat: torch.Tensor, betas: torch.Tensor, smpl: SMPLBody) -> None:
        super().__init__()
        self.register_buffer("rotmat", rotmat)  # (24, 3, 3)
        self.register_buffer("betas", betas)  # (10,)
        self.smpl = smpl

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(images)
        return self.smpl(self.rotmat.expand(n, -1, -1, -1), self.betas.expand(n, -1))
