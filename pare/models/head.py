"""PARE's head: two unshared branches, part attention pooling, per-part SMPL regression.

Legend: B batch, J = 24 parts, C branch channels, S the crop size, H = W = S / 4 the heatmap
grid (PARE's default: 224 -> 56).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from pare.geometry import axis_angle_to_matrix, matrix_to_rot6d
from pare.models.attention import PartSelfAttention

NUM_PARTS = 24
# Predictions are offsets from a neutral start, as SPIN/PARE start from their mean parameters:
# identity joint rotations, a global rotation of 180 degrees about x (SMPL's y-up body upright in
# the y-down camera frame, as in SPIN's mean pose), zero betas, and a camera scale of 0.9 (SPIN's
# mean camera: the person fills most of the crop). 6D layout of pare.geometry.rot6d_to_matrix.
IDENTITY_6D = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)
UPRIGHT_6D = (1.0, 0.0, 0.0, -1.0, 0.0, 0.0)  # diag(1, -1, -1)
MEAN_CAMERA = (0.9, 0.0, 0.0)


def conv_branch(in_channels: int, channels: int, layers: int) -> nn.Sequential:
    """HRNet branch: ``layers`` x [3x3 conv, BN, ReLU] at the input resolution."""
    blocks = []
    for i in range(layers):
        blocks += [
            nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*blocks)


def deconv_branch(in_channels: int, channels: int, layers: int) -> nn.Sequential:
    """ResNet branch: ``layers`` x [4x4 transposed conv stride 2, BN, ReLU] (S/32 -> S/4 for 3:
    7 -> 56 at S = 224)."""
    blocks = []
    for i in range(layers):
        blocks += [
            nn.ConvTranspose2d(
                in_channels if i == 0 else channels, channels, 4, stride=2, padding=1, bias=False
            ),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*blocks)


class PareHead(nn.Module):
    """Backbone features (B, C_in, H, W) at 1/4 of the crop, or at 1/32 with ``upsample`` ->
    part logits, per-part rotations, betas and the crop camera (see :meth:`forward`)."""

    def __init__(
        self,
        in_channels: int,
        upsample: bool,
        branch_layers: int = 2,
        branch_channels: int = 128,
        shape_cam_channels: int = 64,
        attention: PartSelfAttention | None = None,
    ) -> None:
        super().__init__()
        branch = deconv_branch if upsample else conv_branch
        # Two branches, nothing shared: 2D part attention and 3D features.
        self.branch_2d = branch(in_channels, branch_channels, branch_layers)
        self.branch_3d = branch(in_channels, branch_channels, branch_layers)
        self.part_logits = nn.Conv2d(branch_channels, NUM_PARTS + 1, 1)  # channel 0: background
        self.shape_cam_features = nn.Conv2d(branch_channels, shape_cam_channels, 1)
        self.attention = attention
        # 24 unshared per-part linear maps C -> 6 (no bias), as one (J, C, 6) weight.
        self.pose_weight = nn.Parameter(torch.empty(NUM_PARTS, branch_channels, 6))
        self.shape = nn.Linear(NUM_PARTS * shape_cam_channels, 10)
        self.camera = nn.Linear(NUM_PARTS * shape_cam_channels, 3)
        for weight in (self.pose_weight, self.shape.weight, self.camera.weight):
            nn.init.xavier_uniform_(weight, gain=0.01)  # small offsets from the neutral start
        nn.init.zeros_(self.shape.bias)
        nn.init.zeros_(self.camera.bias)
        # The start is saved with the weights: a model trained from mean parameters (see
        # set_mean_params) evaluates the same wherever its weights are loaded.
        start = torch.tensor([UPRIGHT_6D] + [IDENTITY_6D] * (NUM_PARTS - 1))  # (J, 6)
        self.register_buffer("start_6d", start)
        self.register_buffer("start_betas", torch.zeros(10))
        self.register_buffer("mean_camera", torch.tensor(MEAN_CAMERA))

    def regressor_parameters(self) -> list[nn.Parameter]:
        """The final per-part pose map and the shape and camera layers: the parameters that turn
        pooled features into SMPL offsets (an optimiser may give them their own learning rate)."""
        return [self.pose_weight, *self.shape.parameters(), *self.camera.parameters()]

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        part_logits = self.part_logits(self.branch_2d(features))  # (B, J+1, H, W)
        features_3d = self.branch_3d(features)  # (B, C, H, W)
        shape_cam = self.shape_cam_features(features_3d)  # (B, 64, H, W)

        heatmaps = part_logits[:, 1:]  # (B, J, H, W), background dropped
        if self.attention is not None:
            heatmaps = self.attention(heatmaps)
        weights = heatmaps.flatten(2).softmax(-1)  # (B, J, H*W), each part sums to 1
        pose_feats = weights @ features_3d.flatten(2).transpose(1, 2)  # (B, J, C)
        shape_cam_feats = weights @ shape_cam.flatten(2).transpose(1, 2)  # (B, J, 64)

        pose_6d = torch.einsum("bjc,jcd->bjd", pose_feats, self.pose_weight)  # (B, J, 6)
        pose_6d = pose_6d + self.start_6d
        flat = shape_cam_feats.flatten(1)  # (B, J*64)
        return {
            "part_logits": part_logits,
            "part_attention": weights.unflatten(-1, heatmaps.shape[-2:]),  # (B, J, H, W)
            "pose_6d": pose_6d,  # to rotations in fp32 beside the SMPL layer
            "betas": self.shape(flat) + self.start_betas,  # (B, 10)
            "camera": self.camera(flat) + self.mean_camera,  # (B, 3) weak perspective [s, tx, ty]
        }


def read_mean_params(path: str | Path) -> dict[str, torch.Tensor]:
    """SPIN's ``smpl_mean_params.npz`` layout: ``pose`` (144,) 6D per joint (or (72,) axis-angle),
    ``shape`` (10,), ``cam`` (3,). Read without pickle."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"mean parameters not found: {path}. Use SPIN's smpl_mean_params.npz, or write one from "
            "your training shards with train/mean_params.py"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = {"pose", "shape", "cam"} - set(data.files)
        if missing:
            raise ValueError(
                f"{path} lacks {sorted(missing)} (expected SPIN's mean-parameter keys)"
            )
        pose = torch.as_tensor(data["pose"], dtype=torch.float32).flatten()
        shape = torch.as_tensor(data["shape"], dtype=torch.float32).flatten()[:10]
        cam = torch.as_tensor(data["cam"], dtype=torch.float32).flatten()
    if pose.numel() == 72:
        pose = matrix_to_rot6d(axis_angle_to_matrix(pose.view(24, 3)))
    return {"start_6d": pose.view(NUM_PARTS, 6), "start_betas": shape, "mean_camera": cam}


def set_mean_params(head: PareHead, path: str | Path) -> None:
    """Start the head's predictions from mean parameters (SPIN/PARE start from their mean pose)."""
    with torch.no_grad():
        for name, value in read_mean_params(path).items():
            getattr(head, name).copy_(value)
