"""PARE: backbones, the head, the part self-attention variant, and the full model."""

from pare.models.attention import PartSelfAttention, fused_attention, naive_attention
from pare.models.backbones import build_backbone, load_backbone_weights, map_checkpoint_keys
from pare.models.head import PareHead
from pare.models.pare import PARE, build_model

__all__ = [
    "PARE",
    "PareHead",
    "PartSelfAttention",
    "build_backbone",
    "build_model",
    "fused_attention",
    "load_backbone_weights",
    "map_checkpoint_keys",
    "naive_attention",
]
