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


# Widths of the regressors' extra inputs with iterative regression (PARE's input_type_dim in
# pare/models/head/pare_head.py): the joint's own 6D rotation, all 24 (6-major, as PARE flattens
# its (N, 6, J) pose), the betas, the camera.
INPUT_WIDTHS = {"feats": 0, "self_pose": 6, "all_pose": NUM_PARTS * 6, "shape": 10, "cam": 3}


class PareHead(nn.Module):
    """Backbone features (B, C_in, H, W) at 1/4 of the crop, or at 1/32 with ``upsample`` ->
    part logits, per-part rotations, betas and the crop camera (see :meth:`forward`).

    The options follow PARE's PareHead (mkocabas/PARE pare/models/head/pare_head.py) with
    ``use_heatmaps='part_segm'`` and keypoint attention: ``iterative`` (ITERATIVE_REGRESSION,
    ``num_iterations``, ``residual`` = ITER_RESIDUAL, ``pose_inputs`` / ``shape_inputs`` the
    input-type lists), ``use_mean_pose`` / ``use_mean_camshape``, and the keypoint attention's
    ``attention_act``, ``scale_attention`` and ``postconv``. Layouts differ from PARE's where
    noted; pare/convert.py maps PARE's tensors onto them.
    """

    def __init__(
        self,
        in_channels: int,
        upsample: bool,
        branch_layers: int = 2,
        branch_channels: int = 128,
        shape_cam_channels: int = 64,
        attention: PartSelfAttention | None = None,
        *,
        iterative: bool = False,
        num_iterations: int = 3,
        residual: bool = False,
        pose_inputs: tuple[str, ...] = ("feats",),
        shape_inputs: tuple[str, ...] = ("feats",),
        use_mean_pose: bool = True,
        use_mean_camshape: bool = True,
        attention_act: str = "softmax",
        scale_attention: bool = False,
        postconv: bool = False,
    ) -> None:
        super().__init__()
        branch = deconv_branch if upsample else conv_branch
        # Two branches, nothing shared: 2D part attention and 3D features.
        self.branch_2d = branch(in_channels, branch_channels, branch_layers)
        self.branch_3d = branch(in_channels, branch_channels, branch_layers)
        self.part_logits = nn.Conv2d(branch_channels, NUM_PARTS + 1, 1)  # channel 0: background
        self.shape_cam_features = nn.Conv2d(branch_channels, shape_cam_channels, 1)
        self.attention = attention
        self.iterative, self.num_iterations, self.residual = iterative, num_iterations, residual
        self.pose_inputs = tuple(pose_inputs) if iterative else ("feats",)
        self.shape_inputs = tuple(shape_inputs) if iterative else ("feats",)
        self.use_mean_pose, self.use_mean_camshape = use_mean_pose, use_mean_camshape
        self.attention_act, self.scale_attention = attention_act, scale_attention
        # KeypointAttention's use_conv: a 1x1 convolution over channels, per part, after pooling.
        self.pose_postconv = nn.Conv1d(branch_channels, branch_channels, 1) if postconv else None
        self.shape_cam_postconv = (
            nn.Conv1d(shape_cam_channels, shape_cam_channels, 1) if postconv else None
        )
        pose_width = branch_channels + sum(INPUT_WIDTHS[x] for x in self.pose_inputs)
        shape_width = NUM_PARTS * shape_cam_channels + sum(
            INPUT_WIDTHS[x] for x in self.shape_inputs
        )
        # 24 unshared per-part linear maps -> 6 (no bias; PARE's LocallyConnected2d), as one
        # (J, C, 6) weight.
        self.pose_weight = nn.Parameter(torch.empty(NUM_PARTS, pose_width, 6))
        # Input layout: the pooled shape/camera features flattened joint-major (j * F + f; PARE
        # flattens channel-major), then the extra inputs in their list's order.
        self.shape = nn.Linear(shape_width, 10)
        self.camera = nn.Linear(shape_width, 3)
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

    def attention_weights(self, heatmaps: torch.Tensor) -> torch.Tensor:
        """(B, J, H, W) part logits -> (B, J, H*W) pooling weights (PARE's KeypointAttention):
        a softmax over each part's map (each sums to 1), or a per-pixel sigmoid; with
        ``scale_attention`` the logits are first divided by sqrt(H * W)."""
        if self.scale_attention:
            heatmaps = heatmaps / (heatmaps.shape[-2] * heatmaps.shape[-1]) ** 0.5
        logits = heatmaps.flatten(2)
        return logits.softmax(-1) if self.attention_act == "softmax" else logits.sigmoid()

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        part_logits = self.part_logits(self.branch_2d(features))  # (B, J+1, H, W)
        features_3d = self.branch_3d(features)  # (B, C, H, W)
        shape_cam = self.shape_cam_features(features_3d)  # (B, F, H, W)

        heatmaps = part_logits[:, 1:]  # (B, J, H, W), background dropped
        if self.attention is not None:
            heatmaps = self.attention(heatmaps)
        weights = self.attention_weights(heatmaps)  # (B, J, H*W)
        pose_feats = weights @ features_3d.flatten(2).transpose(1, 2)  # (B, J, C)
        shape_cam_feats = weights @ shape_cam.flatten(2).transpose(1, 2)  # (B, J, F)
        if self.pose_postconv is not None:
            pose_feats = self.pose_postconv(pose_feats.transpose(1, 2)).transpose(1, 2)
            shape_cam_feats = self.shape_cam_postconv(shape_cam_feats.transpose(1, 2)).transpose(
                1, 2
            )
        pose_6d, betas, camera = self.regress(pose_feats, shape_cam_feats.flatten(1))
        return {
            "part_logits": part_logits,
            "part_attention": weights.unflatten(-1, heatmaps.shape[-2:]),  # (B, J, H, W)
            "pose_6d": pose_6d,  # (B, J, 6); to rotations in fp32 beside the SMPL layer
            "betas": betas,  # (B, 10)
            "camera": camera,  # (B, 3) weak perspective [s, tx, ty]
        }

    def regress(
        self, pose_feats: torch.Tensor, shape_feats: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pooled features -> (pose_6d (B, J, 6), betas (B, 10), camera (B, 3)), as PARE's
        ``_pare_get_final_preds``. ``pose_feats`` (B, J, C); ``shape_feats`` (B, J * F)."""
        b = pose_feats.shape[0]
        if not self.iterative:
            pose_6d = torch.einsum("bjc,jcd->bjd", pose_feats, self.pose_weight)  # (B, J, 6)
            betas, camera = self.shape(shape_feats), self.camera(shape_feats)
            if self.use_mean_pose:
                pose_6d = pose_6d + self.start_6d
            if self.use_mean_camshape:
                betas, camera = betas + self.start_betas, camera + self.mean_camera
            return pose_6d, betas, camera
        pose_6d = self.start_6d.expand(b, -1, -1)
        betas = self.start_betas.expand(b, -1)
        camera = self.mean_camera.expand(b, -1)
        for _ in range(self.num_iterations):
            pose_in = self._inputs(self.pose_inputs, pose_feats, pose_6d, betas, camera, True)
            shape_in = self._inputs(self.shape_inputs, shape_feats, pose_6d, betas, camera, False)
            new_pose = torch.einsum("bjc,jcd->bjd", pose_in, self.pose_weight)
            new_betas, new_camera = self.shape(shape_in), self.camera(shape_in)
            if self.residual:
                pose_6d, betas, camera = pose_6d + new_pose, betas + new_betas, camera + new_camera
            else:
                # PARE: only the betas stay offsets from the mean when not residual.
                pose_6d, betas, camera = new_pose, new_betas + self.start_betas, new_camera
        return pose_6d, betas, camera

    @staticmethod
    def _inputs(
        names: tuple[str, ...],
        feats: torch.Tensor,
        pose_6d: torch.Tensor,
        betas: torch.Tensor,
        camera: torch.Tensor,
        per_joint: bool,
    ) -> torch.Tensor:
        """A regressor's input with iterative regression, concatenated in ``names``' order (as
        PARE's ``_prepare_{pose,shape}_mlp_inp``): per joint (B, J, width) for the pose
        regressor, else (B, width)."""
        b = pose_6d.shape[0]
        all_pose = pose_6d.transpose(1, 2).reshape(b, -1)  # (B, 6 * J), 6-major as PARE's
        parts = {"feats": feats, "self_pose": pose_6d, "all_pose": all_pose, "shape": betas}
        parts["cam"] = camera
        chosen = [parts[name] for name in names]
        if per_joint:  # the whole-body inputs repeated for every joint
            chosen = [x if x.dim() == 3 else x[:, None].expand(b, NUM_PARTS, -1) for x in chosen]
        return torch.cat(chosen, -1)


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
