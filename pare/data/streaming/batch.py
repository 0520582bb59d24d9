"""The batch contract: what the data streams hand the trainer, derived from
:data:`pare.data.fields.FIELDS`.

Images travel as uint8 (normalised on the device by :func:`normalize_images`); everything else
is float32, int64 or bool. Per-sample shapes use S for the crop size (``data.crop_size``) and
P = S / 2 for the part labels (PARE's default crop: 224 -> 112); a batch adds a leading B.
"""

from __future__ import annotations

import numpy as np
import torch

from pare.data.fields import BATCH_FIELDS, field_shape

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# name -> torch dtype of each batch field, in batch order.
BATCH_DTYPES: dict[str, torch.dtype] = {
    f.name: torch.from_numpy(np.zeros(0, f.dtype)).dtype for f in BATCH_FIELDS
}


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack per-sample numpy arrays into the batch dict (keys ``__key__`` become a list)."""
    batch: dict = {"__key__": [item["__key__"] for item in items]}
    for name, dtype in BATCH_DTYPES.items():
        values = np.stack([np.asarray(item[name]) for item in items])
        if name == "image":
            values = values.transpose(0, 3, 1, 2)  # (B, S, S, 3) -> (B, 3, S, S)
        batch[name] = torch.from_numpy(np.ascontiguousarray(values)).to(dtype)
    return batch


def check_batch(batch: dict, crop_size: int = 224) -> None:
    """Raise AssertionError naming the first field that breaks the contract."""
    size = len(batch["__key__"])
    for name, dtype in BATCH_DTYPES.items():
        value = batch[name]
        expected = (size, *field_shape(name, crop_size))
        if tuple(value.shape) != expected or value.dtype != dtype:
            raise AssertionError(
                f"batch[{name!r}] is {tuple(value.shape)} {value.dtype}, expected {expected} {dtype}"
            )


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) on any device -> float ImageNet-normalised, on that device."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std
