"""The full model: backbone -> PARE head (optionally with part self-attention) -> SMPL (fp32).

Legend: B batch, J = 24 parts, V = 6890 vertices, S the crop size (data.crop_size), H = W = S / 4
the heatmap size (PARE's default: 224 -> 56).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from pare.body import SMPLBody
from pare.geometry import (
    CAMERA_REFERENCE_SIZE,
    FOCAL_LENGTH,
    perspective_projection,
    rot6d_to_matrix,
    weak_perspective_to_translation,
)
from pare.models.attention import PartSelfAttention
from pare.models.backbones import build_backbone
from pare.models.head import NUM_PARTS, PareHead, set_mean_params

if TYPE_CHECKING:  # types only: the model package does not import the config module
    from pare.config import BodyConfig, ModelConfig


class PARE(nn.Module):
    """Normalised images (B, 3, S, S) -> PARE's predictions, see :meth:`forward`."""

    def __init__(self, backbone: nn.Module, head: PareHead, smpl: SMPLBody) -> None:
        super().__init__()
        self.backbone, self.head, self.smpl = backbone, head, smpl

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``part_logits`` (B, 25, H, W), ``part_attention`` (B, 24, H, W),
        ``pose_6d`` (B, 24, 6), ``rotmat`` (B, 24, 3, 3), ``betas`` (B, 10), ``camera``
        (B, 3) [s, tx, ty], ``translation`` (B, 3), the body's outputs (:class:`SMPLBody`:
        ``vertices`` (B, 6890, 3), ``smpl_joints`` (B, 24, 3), ``h36m_3d`` (B, 17, 3),
        ``keypoints_3d`` (B, 49, 3), ``joints_3d`` (B, 24, 3) SPIN's ground-truth joints) and
        ``keypoints_2d`` (B, 49, 2) in [-1, 1] of the crop (KEYPOINTS_49), at any crop size.
        Everything from ``rotmat`` on is fp32."""
        out = self.head(self.backbone(images))
        # The body model, rotations and projection run in fp32 even under autocast: Gram-Schmidt
        # and linear blend skinning lose millimetres in bf16 and overflow in fp16.
        with torch.autocast(images.device.type, enabled=False):
            out["rotmat"] = rot6d_to_matrix(out["pose_6d"].float())
            out["camera"] = out["camera"].float()
            out["betas"] = out["betas"].float()
            out.update(self.smpl(out["rotmat"], out["betas"]))
            out["translation"] = weak_perspective_to_translation(out["camera"])
            pixels = perspective_projection(out["keypoints_3d"], out["translation"], FOCAL_LENGTH)
            # Pixels on the camera's reference crop -> [-1, 1], whatever the input's size.
            out["keypoints_2d"] = pixels / (CAMERA_REFERENCE_SIZE / 2.0)  # (B, 49, 2)
        return out


def build_model(model_cfg: ModelConfig, body_cfg: BodyConfig) -> PARE:
    """PARE from a :class:`pare.config.ModelConfig` and :class:`pare.config.BodyConfig`."""
    backbone = build_backbone(
        model_cfg.backbone, model_cfg.backbone_weights, model_cfg.fusion_align_corners
    )
    att = model_cfg.attention
    attention = (
        PartSelfAttention(
            num_parts=NUM_PARTS,
            dim=att.dim,
            heads=att.heads,
            resolution=att.resolution,
            value_proj=att.value_proj,
            gate_init=att.gate_init,
            learn_gate=att.learn_gate,
        )
        if att.enabled
        else None
    )
    head = PareHead(
        backbone.out_channels,
        upsample=backbone.out_stride > 4,
        branch_layers=model_cfg.branch_layers,
        branch_channels=model_cfg.branch_channels,
        shape_cam_channels=model_cfg.shape_cam_channels,
        attention=attention,
        iterative=model_cfg.iterative_regression,
        num_iterations=model_cfg.num_iterations,
        residual=model_cfg.iter_residual,
        pose_inputs=tuple(model_cfg.pose_input_type.split(".")),
        shape_inputs=tuple(model_cfg.shape_input_type.split(".")),
        use_mean_pose=model_cfg.use_mean_pose,
        use_mean_camshape=model_cfg.use_mean_camshape,
        attention_act=model_cfg.keypoint_attention_act,
        scale_attention=model_cfg.scale_keypoint_attention,
        postconv=model_cfg.postconv_keypoint_attention,
    )
    if model_cfg.mean_params:
        set_mean_params(head, model_cfg.mean_params)
    # The neutral body alone: the head predicts no gender. Its buffers stay out of checkpoints.
    return PARE(backbone, head, SMPLBody(body_cfg.model_path, genders=("neutral",)))
