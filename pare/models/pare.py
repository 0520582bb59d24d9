"""The full model: backbone -> PARE head (optionally with part self-attention) -> SMPL (fp32).

Legend: B batch, J = 24 parts, V = 6890 vertices.
"""

from __future__ import annotations

import torch
from torch import nn

from pare.body import build_body_model, load_eval_assets
from pare.body.joints import unified_from_model
from pare.geometry import (
    CROP_SIZE,
    FOCAL_LENGTH,
    perspective_projection,
    rot6d_to_matrix,
    weak_perspective_to_translation,
)
from pare.models.attention import PartSelfAttention
from pare.models.backbones import build_backbone
from pare.models.head import NUM_PARTS, PareHead, set_mean_params


class SMPLLayer(nn.Module):
    """smplx SMPL as a fixed layer: no learnable pose/shape parameters of its own, and buffers
    kept out of checkpoints (a checkpoint then loads onto the stand-in or the real model)."""

    def __init__(self, model_path: str = "standin", num_betas: int = 10) -> None:
        super().__init__()
        self.smpl = build_body_model(
            model_path,
            "neutral",
            num_betas=num_betas,
            create_betas=False,
            create_global_orient=False,
            create_body_pose=False,
            create_transl=False,
        )
        self.is_standin = self.smpl.is_standin
        for module in self.smpl.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, buffer, persistent=False)
        h36m = torch.as_tensor(load_eval_assets(model_path).h36m_regressor, dtype=torch.float32)
        self.register_buffer("h36m_regressor", h36m, persistent=False)  # (17, V)

    def forward(self, rotmat: torch.Tensor, betas: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.smpl(
            betas=betas,
            global_orient=rotmat[:, :1],
            body_pose=rotmat[:, 1:],
            pose2rot=False,
        )
        h36m = torch.einsum("jv,bvc->bjc", self.h36m_regressor, out.vertices)  # (B, 17, 3)
        return {
            "vertices": out.vertices,  # (B, V, 3)
            "joints_3d": out.joints[:, :NUM_PARTS],  # (B, 24, 3)
            "h36m_3d": h36m,
            "unified_3d": unified_from_model(out.joints, h36m),  # (B, 22, 3)
        }


class PARE(nn.Module):
    """Normalised images (B, 3, 224, 224) -> PARE's predictions, see :meth:`forward`."""

    def __init__(self, backbone: nn.Module, head: PareHead, smpl: SMPLLayer) -> None:
        super().__init__()
        self.backbone, self.head, self.smpl = backbone, head, smpl

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``part_logits`` (B, 25, 56, 56), ``part_attention`` (B, 24, 56, 56),
        ``pose_6d`` (B, 24, 6), ``rotmat`` (B, 24, 3, 3), ``betas`` (B, 10), ``camera``
        (B, 3) [s, tx, ty], ``translation`` (B, 3), ``vertices`` (B, 6890, 3), ``joints_3d``
        (B, 24, 3), ``h36m_3d`` (B, 17, 3), ``keypoints_2d`` (B, 22, 2) in [-1, 1] of the crop
        (the UNIFIED layout). Everything from ``rotmat`` on is fp32."""
        out = self.head(self.backbone(images))
        # The body model, rotations and projection run in fp32 even under autocast: Gram-Schmidt
        # and linear blend skinning lose millimetres in bf16 and overflow in fp16.
        with torch.autocast(images.device.type, enabled=False):
            out["rotmat"] = rot6d_to_matrix(out["pose_6d"].float())
            out["camera"] = out["camera"].float()
            out["betas"] = out["betas"].float()
            out.update(self.smpl(out["rotmat"], out["betas"]))
            out["translation"] = weak_perspective_to_translation(out["camera"])
            pixels = perspective_projection(out["unified_3d"], out["translation"], FOCAL_LENGTH)
            out["keypoints_2d"] = pixels / (CROP_SIZE / 2.0)  # (B, 22, 2)
        return out


def build_model(model_cfg, body_cfg) -> PARE:
    """PARE from a :class:`pare.config.ModelConfig` and :class:`pare.config.BodyConfig`."""
    backbone = build_backbone(model_cfg.backbone, model_cfg.backbone_weights)
    att = model_cfg.attention
    attention = (
        PartSelfAttention(NUM_PARTS, att.dim, att.heads, att.resolution, att.value_proj)
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
    )
    if model_cfg.mean_params:
        set_mean_params(head, model_cfg.mean_params)
    return PARE(backbone, head, SMPLLayer(body_cfg.model_path, body_cfg.num_betas))
