"""PARE's loss terms and their weighting.

Every term is computed in fp32 whatever the autocast state, and masked per sample by the batch's
``has_*`` flags without boolean indexing (no host-device synchronisation per step). A term with
no supervised sample in the batch is exactly zero and still part of the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pare.body.joints import GT_HIPS, OPENPOSE_SLOTS
from pare.geometry import axis_angle_to_matrix

TERMS = ("keypoints_2d", "joints_3d", "smpl_pose", "smpl_shape", "part_segmentation", "camera")

if TYPE_CHECKING:
    from pare.config import LossConfig


def _masked_mean(errors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``errors`` (B, ...) over the samples where ``mask`` (B,) holds."""
    weights = mask.to(errors.dtype).view(-1, *[1] * (errors.dim() - 1)).expand_as(errors)
    return (errors * weights).sum() / weights.sum().clamp(min=1.0)


def keypoints_2d_loss(
    pred: torch.Tensor, target: torch.Tensor, crop_size: int, openpose_weight: float = 0.0
) -> torch.Tensor:
    """PARE's ``projected_keypoint_loss`` (``pare/losses/losses.py``): the confidence-weighted
    squared error averaged over every batch entry, all 49 slots and both coordinates, with the
    OpenPose-style slots' confidences multiplied by ``openpose_weight`` (ground-truth slots by
    1). ``pred`` (B, 49, 2) in [-1, 1]; ``target`` (B, 49, 3) in input pixels plus confidence,
    normalised here as PARE's dataset normalises it (2 x / S - 1)."""
    target_xy = target[..., :2] * (2.0 / crop_size) - 1.0
    conf = target[..., 2:].clone()
    conf[:, OPENPOSE_SLOTS] *= openpose_weight
    return (conf * (pred.float() - target_xy) ** 2).mean()


def joints_3d_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PARE's ``keypoint_3d_loss``: MSE of SPIN's (B, 24, 3) ground-truth joints after centring
    each set on the midpoint of its hips (joints 2 and 3), over the samples in ``mask``."""
    right, left = GT_HIPS
    pred = pred.float()
    pred = pred - 0.5 * (pred[:, right : right + 1] + pred[:, left : left + 1])
    target = target - 0.5 * (target[:, right : right + 1] + target[:, left : left + 1])
    return _masked_mean((pred - target) ** 2, mask)


def smpl_pose_loss(rotmat: torch.Tensor, pose: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between predicted (B, 24, 3, 3) and ground-truth rotation matrices (pose (B, 72))."""
    target = axis_angle_to_matrix(pose.view(-1, 24, 3))  # (B, 24, 3, 3)
    return _masked_mean((rotmat.float() - target) ** 2, mask)


def smpl_shape_loss(betas: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return _masked_mean((betas.float() - target) ** 2, mask)


def part_segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy over the 25 classes, (B, 25, H, W) logits against (B, P, P) labels, over
    the samples that have a part map. Logits of another size than the labels are upsampled
    bilinearly with aligned corners first, as PARE's ``CrossEntropy``
    (``pare/losses/segmentation.py``) does."""
    logits = logits.float()
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=True)
    per_pixel = F.cross_entropy(logits, labels.long(), reduction="none")  # (B, P, P)
    return _masked_mean(per_pixel, mask)


def camera_loss(camera: torch.Tensor) -> torch.Tensor:
    """PARE's prior against a non-positive scale: mean(exp(-10 s)^2)."""
    return (torch.exp(-10.0 * camera[:, 0].float()) ** 2).mean()


def pare_loss(
    pred: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], weights: LossConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted total (times ``weights.total_scale``, as PARE's code does) and the unweighted
    terms (detached) for logging. ``weights`` is a :class:`pare.config.LossConfig`."""
    crop_size = batch["image"].shape[-1]
    with torch.autocast(batch["image"].device.type, enabled=False):
        terms = _terms(pred, batch, crop_size, weights.openpose_weight)
    total = weights.total_scale * sum(getattr(weights, name) * terms[name] for name in TERMS)
    return total, {name: value.detach() for name, value in terms.items()}


def _terms(pred: dict, batch: dict, crop_size: int, openpose_weight: float) -> dict:
    return {
        "keypoints_2d": keypoints_2d_loss(
            pred["keypoints_2d"], batch["keypoints_2d"], crop_size, openpose_weight
        ),
        "joints_3d": joints_3d_loss(pred["joints_3d"], batch["joints_3d"], batch["has_joints_3d"]),
        "smpl_pose": smpl_pose_loss(pred["rotmat"], batch["pose"], batch["has_smpl"]),
        "smpl_shape": smpl_shape_loss(pred["betas"], batch["betas"], batch["has_smpl"]),
        "part_segmentation": part_segmentation_loss(
            pred["part_logits"], batch["part_labels"], batch["has_part_labels"]
        ),
        "camera": camera_loss(pred["camera"]),
    }
