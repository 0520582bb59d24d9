"""Backbones from timm, shaped the way PARE uses them.

- ``hrnet_w32`` / ``hrnet_w18_small``: the four raw stage-4 branches, brought to the 1/4
  resolution (56 x 56 for a 224 input) PARE's "conv" way and concatenated (480 channels for W32).
- ``resnet50`` / ``resnet18``: ``layer4`` (1/32 resolution); PARE's branches then upsample it
  with deconvolutions.

Weights: ``"random"`` (nothing is downloaded at construction), a local checkpoint (timm's,
PARE's, the COCO-keypoint HRNet-W32 or torchvision's ImageNet ResNet-50 PARE starts from; see
:mod:`pare.pretrained`), or ``"timm"`` for timm's pretrained weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from torch import nn

from pare.pretrained import (
    RANDOM,
    TIMM,
    check_backbone_weights,
    damaged_weights,
    needs_file,
)

HRNETS = ("hrnet_w32", "hrnet_w18_small")
RESNETS = ("resnet50", "resnet18")


def _up_block(channels: int, align_corners: bool) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(inplace=True),
    )


class HRNetConvFusion(nn.Module):
    """HRNet's four stage-4 branches -> one map at the first branch's resolution.

    Branch i (i = 1, 2, 3) is upsampled by i blocks of [bilinear x2, 3x3 conv, BN, ReLU]; the
    four are concatenated (PARE's ``hrnet_w32-conv`` backbone, whose ``upsample_stage_{i+1}``
    blocks upsample with ``align_corners=True``: pare/models/backbone/hrnet.py).
    """

    def __init__(self, name: str, pretrained: bool = False, align_corners: bool = False) -> None:
        super().__init__()
        # feature_location="" exposes the raw branches (not timm's classification increments).
        self.body = timm.create_model(
            name, pretrained=pretrained, features_only=True, feature_location=""
        )
        channels = self.body.feature_info.channels()[-4:]  # e.g. 32, 64, 128, 256
        self.upsample = nn.ModuleList(
            nn.Sequential(*[_up_block(c, align_corners) for _ in range(i)])
            for i, c in enumerate(channels)
        )
        self.out_channels = sum(channels)
        self.out_stride = 4

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        branches = self.body(images)[-4:]  # (B, C_i, H/2^(i+2), W/2^(i+2)); the stem is dropped
        fused = [up(x) for up, x in zip(self.upsample, branches, strict=True)]
        return torch.cat(fused, dim=1)  # (B, sum C_i, H/4, W/4)


class ResNetLayer4(nn.Module):
    """A torchvision-style ResNet up to ``layer4`` (B, 2048 or 512, H/32, W/32)."""

    def __init__(self, name: str, pretrained: bool = False) -> None:
        super().__init__()
        self.body = timm.create_model(
            name, pretrained=pretrained, features_only=True, out_indices=(4,)
        )
        self.out_channels = self.body.feature_info.channels()[-1]
        self.out_stride = 32

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[-1]


def build_backbone(name: str, weights: str = RANDOM, align_corners: bool = False) -> nn.Module:
    """A backbone with ``out_channels`` and ``out_stride``; see the module docstring for
    ``weights``; ``align_corners`` is the HRNet fusion's upsampling mode (PARE: True). Raises
    ValueError for an unknown name, :class:`pare.pretrained.BackboneWeightsError` (a ValueError;
    one line naming the file and the fix) for a weight file that is damaged, not a checkpoint or
    a checkpoint that does not fit, FileNotFoundError (before anything is built) for a weight
    file that does not exist."""
    if name not in HRNETS + RESNETS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {list(HRNETS + RESNETS)}")
    check_backbone_weights(name, weights)
    pretrained = weights == TIMM
    if name in HRNETS:
        backbone = HRNetConvFusion(name, pretrained, align_corners)
    else:
        backbone = ResNetLayer4(name, pretrained)
    if needs_file(weights):
        load_backbone_weights(backbone.body, weights, name)
    return backbone


# Keys a classification or keypoint checkpoint has and the feature extractor has not.
_HEAD_KEYS = re.compile(r"^(final_layer|classifier|fc|head|incre_modules|downsamp_modules)\.")
# PARE and mmpose checkpoints nest the backbone; DDP checkpoints add "module.".
_PREFIXES = ("module.", "model.", "backbone.")
# The COCO-keypoint HRNet builds its last stage-4 module with a single output, so it has no
# fusion weights into branches 1-3; those stay at their initialisation.
_POSE_HRNET_MISSING = re.compile(r"^stage4\.\d+\.fuse_layers\.[123]\.")
# Checkpoints saved before PyTorch 0.4.1 (torchvision's first ImageNet ResNets) have no BN step
# counters; they only matter for BN with momentum=None, which no backbone here uses.
_COUNTERS = re.compile(r"\.num_batches_tracked$")


def map_checkpoint_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A backbone checkpoint's keys -> the timm feature extractor's: strip wrapper prefixes,
    drop classification and keypoint heads."""
    mapped = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        if not _HEAD_KEYS.match(key):
            mapped[key] = value
    return mapped


def read_checkpoint(path: str | Path, name: str = "") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only``: no code runs).
    Raises FileNotFoundError, or :class:`BackboneWeightsError` naming the file when it cannot
    be read (truncated, damaged) or holds no state dict; ``name`` (the backbone) says where to
    get the file again."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights not found: {path}. Set model.backbone_weights to a local "
            f".pth/.safetensors file, '{TIMM}' for timm's pretrained weights, or '{RANDOM}'."
        )
    kind = "safetensors file" if path.suffix == ".safetensors" else "weights-only torch checkpoint"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch and safetensors raise their own types, many lines long
        why = (
            f"is not a readable {kind}: truncated, damaged or not a checkpoint ({_first_line(err)})"
        )
        raise damaged_weights(path, name, why) from None
    for wrapper in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not any(torch.is_tensor(v) for v in state.values()):
        raise damaged_weights(path, name, f"holds no state dict (a {type(state).__name__})")
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def _first_line(err: Exception) -> str:
    """One line of a loader's error: torch's weights-only refusal spans a dozen lines and says
    what it refused on the one starting "WeightsUnpickler error"."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = next((x for x in lines if x.startswith("WeightsUnpickler error")), None)
    line = line or (lines[0] if lines else "")
    return f"{type(err).__name__}: {line[:200]}"


def load_backbone_weights(module: nn.Module, path: str | Path, name: str = "") -> None:
    """Load a checkpoint into the timm feature extractor; anything unexpected is an error that
    names the keys (the COCO-keypoint HRNet's absent stage-4 fusions and BN step counters of old
    checkpoints are expected). Raises FileNotFoundError or :class:`BackboneWeightsError`;
    ``name`` (the backbone) says where to get the right file."""
    state = map_checkpoint_keys(read_checkpoint(path, name))
    own = module.state_dict()
    shapes = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise damaged_weights(
            path, name, f"shape mismatch for {shapes[:5]} (a checkpoint of another backbone?)"
        )
    result = module.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not (_POSE_HRNET_MISSING.match(k) or _COUNTERS.search(k))
    ]
    if missing or result.unexpected_keys:
        raise damaged_weights(
            path,
            name,
            f"does not fit the backbone: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})",
        )
