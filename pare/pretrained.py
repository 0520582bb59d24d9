"""Pretrained backbone files: where PARE's come from, and the check that a configured one exists.

Free of torch and timm, so train/train.py can report a missing file before its imports, which
take seconds (15 s on a busy 2-core machine).
"""

from __future__ import annotations

from pathlib import Path

RANDOM = "random"  # model.backbone_weights for a deliberate random start
TIMM = "timm"  # timm's pretrained weights (downloaded on first use)

# The file PARE starts each backbone from, and where to get it.
SOURCES = {
    "hrnet_w32": (
        "pose_hrnet_w32_256x192.pth",
        "the HRNet project's COCO pose models (deep-high-resolution-net.pytorch, pose_coco)",
    ),
    "resnet50": (
        "resnet50-0676ba61.pth",
        "torchvision's model zoo (ResNet50_Weights.IMAGENET1K_V1)",
    ),
}


def needs_file(weights: str) -> bool:
    """Whether ``model.backbone_weights`` names a local file (not ``"random"``, ``"timm"``, or
    ``""``, the random start as earlier run folders spell it)."""
    return weights not in (RANDOM, TIMM, "")


def check_backbone_weights(name: str, weights: str) -> None:
    """Raise FileNotFoundError, one line naming the file, where to get it and the random-start
    override, when ``weights`` names a local file that does not exist for backbone ``name``."""
    if not needs_file(weights) or Path(weights).expanduser().is_file():
        return
    if name in SOURCES:
        file, source = SOURCES[name]
        where = f"PARE starts {name} from {file}, from {source}"
    else:
        where = f"point it at a .pth/.safetensors checkpoint of {name}"
    raise FileNotFoundError(
        f"backbone weights not found: {weights} (model.backbone_weights); {where}; or set "
        f"model.backbone_weights={RANDOM} for a deliberate random start"
    )
