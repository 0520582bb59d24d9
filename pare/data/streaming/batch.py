"""The batch contract: what the data streams hand the trainer, in one place.

Images travel as uint8 (normalised on the device by :func:`normalize_images`); everything else
is float32, int64 or bool. Shapes for batch size B, input size 224 and label size 56:
"""

from __future__ import annotations

import numpy as np
import torch

from pare.body.joints import UNIFIED

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> (per-sample shape with "S" for the input size and "L" for the label size, dtype)
BATCH_FIELDS: dict[str, tuple[tuple, torch.dtype]] = {
    "image": ((3, "S", "S"), torch.uint8),  # RGB, channels first
    "part_labels": (("L", "L"), torch.uint8),  # 0 background, 1..24 SMPL part + 1
    "keypoints_2d": ((len(UNIFIED), 3), torch.float32),  # input pixels x, y, confidence
    "joints_3d": ((24, 3), torch.float32),  # camera frame, metres
    "h36m_3d": ((17, 3), torch.float32),
    "pose": ((72,), torch.float32),  # SMPL axis-angle, camera-frame global orientation
    "betas": ((10,), torch.float32),
    "gender": ((), torch.int64),  # 0 neutral, 1 male, 2 female
    "intrinsics": ((3, 3), torch.float32),  # of the input's pixels (nan when unknown)
    "has_smpl": ((), torch.bool),
    "has_joints_3d": ((), torch.bool),
    "has_part_labels": ((), torch.bool),
    "is_pseudo_gt": ((), torch.bool),
    "dataset": ((), torch.int64),  # index into the stream's dataset list
    "head_size": ((), torch.float32),  # MPII's PCKh unit in input pixels (0 when unknown)
}


def field_shape(name: str, input_size: int = 224, label_size: int = 56) -> tuple[int, ...]:
    sizes = {"S": input_size, "L": label_size}
    return tuple(sizes.get(d, d) for d in BATCH_FIELDS[name][0])


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack per-sample numpy arrays into the batch dict (keys ``__key__`` become a list)."""
    batch: dict = {"__key__": [item["__key__"] for item in items]}
    for name, (_, dtype) in BATCH_FIELDS.items():
        values = np.stack([np.asarray(item[name]) for item in items])
        if name == "image":
            values = values.transpose(0, 3, 1, 2)  # (B, H, W, 3) -> (B, 3, H, W)
        batch[name] = torch.from_numpy(np.ascontiguousarray(values)).to(dtype)
    return batch


def check_batch(batch: dict, input_size: int = 224, label_size: int = 56) -> None:
    """Raise AssertionError naming the first field that breaks the contract."""
    size = len(batch["__key__"])
    for name, (_, dtype) in BATCH_FIELDS.items():
        value = batch[name]
        expected = (size, *field_shape(name, input_size, label_size))
        if tuple(value.shape) != expected or value.dtype != dtype:
            raise AssertionError(
                f"batch[{name!r}] is {tuple(value.shape)} {value.dtype}, expected {expected} {dtype}"
            )


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float ImageNet-normalised, on that device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
