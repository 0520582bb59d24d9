"""3DPW-protocol evaluation: MPJPE, PA-MPJPE and PVE in millimetres, per sample.

Joints: the H36M regressor on the mesh, pelvis (H36M joint 0) subtracted, the 14 evaluation
joints. Ground truth comes from the *gendered* SMPL with the sample's pose and betas. PVE: all
6890 vertices, pelvis-aligned, no Procrustes. Samples without SMPL ground truth (MPII) are left
out.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pare.body import build_body_model, load_eval_assets
from pare.body.joints import H36M_TO_EVAL14
from pare.data.batch import normalize_images
from pare.distributed import gather_per_sample
from pare.metrics import mpjpe, pa_mpjpe, pve

GENDERS = ("neutral", "male", "female")  # the batch's gender codes 0, 1, 2
METRICS = ("mpjpe", "pa_mpjpe", "pve")


class GroundTruthBodies(nn.Module):
    """Ground-truth meshes from (pose, betas, gender), one smplx model per gender."""

    def __init__(self, model_path: str = "standin") -> None:
        super().__init__()
        self.models = nn.ModuleList(
            build_body_model(
                model_path,
                g,
                create_betas=False,
                create_global_orient=False,
                create_body_pose=False,
                create_transl=False,
            )
            for g in GENDERS
        )
        h36m = torch.as_tensor(load_eval_assets(model_path).h36m_regressor, dtype=torch.float32)
        self.register_buffer("h36m_regressor", h36m)  # (17, V)

    @torch.no_grad()
    def forward(self, pose: torch.Tensor, betas: torch.Tensor, gender: torch.Tensor) -> dict:
        vertices = torch.zeros(len(pose), self.h36m_regressor.shape[1], 3, device=pose.device)
        for code, model in enumerate(self.models):
            chosen = gender == code
            if chosen.any():
                out = model(
                    betas=betas[chosen],
                    global_orient=pose[chosen, :3],
                    body_pose=pose[chosen, 3:],
                )
                vertices[chosen] = out.vertices
        h36m = torch.einsum("jv,bvc->bjc", self.h36m_regressor, vertices)  # (B, 17, 3)
        return {"vertices": vertices, "h36m_3d": h36m}


def sample_errors(pred: dict, gt: dict) -> dict[str, np.ndarray]:
    """Per-sample errors in mm from predicted and ground-truth ``vertices`` and ``h36m_3d`` (m)."""
    pred_pelvis, gt_pelvis = pred["h36m_3d"][:, :1].float(), gt["h36m_3d"][:, :1].float()
    pred_j = (pred["h36m_3d"].float() - pred_pelvis)[:, list(H36M_TO_EVAL14)]  # (B, 14, 3)
    gt_j = (gt["h36m_3d"].float() - gt_pelvis)[:, list(H36M_TO_EVAL14)]
    pred_v = pred["vertices"].float() - pred_pelvis  # (B, V, 3)
    gt_v = gt["vertices"].float() - gt_pelvis
    return {
        "mpjpe": 1000.0 * mpjpe(pred_j, gt_j).double().cpu().numpy(),
        "pa_mpjpe": 1000.0 * pa_mpjpe(pred_j, gt_j).double().cpu().numpy(),
        "pve": 1000.0 * pve(pred_v, gt_v).double().cpu().numpy(),
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader, gt_bodies: GroundTruthBodies, device) -> dict:
    """Run ``model`` over an evaluation loader (each sample once across ranks) and gather the
    per-sample errors of every rank. Returns ``keys`` and one array per metric (all ranks),
    plus their means under ``mean``."""
    was_training = model.training
    model.eval()
    keys: list[str] = []
    errors: dict[str, list] = {m: [] for m in METRICS}
    for batch in loader:
        keep = batch["has_smpl"]
        if not keep.any():
            continue
        images = normalize_images(batch["image"][keep].to(device, non_blocking=True))
        pred = model(images)
        gt = gt_bodies(
            batch["pose"][keep].to(device),
            batch["betas"][keep].to(device),
            batch["gender"][keep].to(device),
        )
        for name, values in sample_errors(pred, gt).items():
            errors[name].append(values)
        keys += [k for k, kept in zip(batch["__key__"], keep.tolist(), strict=True) if kept]
    model.train(was_training)
    local = {m: np.concatenate(v) if v else np.zeros(0) for m, v in errors.items()}
    keys, values = gather_per_sample(keys, local)
    return {
        "keys": keys,
        **values,
        "mean": {m: float(values[m].mean()) if len(keys) else float("nan") for m in METRICS},
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

    def __init__(self, rotmat: torch.Tensor, betas: torch.Tensor, smpl: nn.Module) -> None:
        super().__init__()
        self.register_buffer("rotmat", rotmat)  # (24, 3, 3)
        self.register_buffer("betas", betas)  # (10,)
        self.smpl = smpl

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n = len(images)
        return self.smpl(self.rotmat.expand(n, -1, -1, -1), self.betas.expand(n, -1))
