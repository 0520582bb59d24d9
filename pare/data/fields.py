"""Every per-sample field, defined once: the shard's npz schema and the batch contract derive
from :data:`FIELDS`.

A field is either stored in a shard sample's npz (``stored=True``; the packer writes it, the
stream decodes it and augmentation moves it with the crop) or made by the stream when it reads a
sample (``stored=False``: the input image and part labels warped from the sample's jpg and png,
and bookkeeping). Pixel coordinates are in the crop a sample travels with: the stored crop in a
shard, the network input in a batch.

Shapes are per sample; ``"S"`` stands for the network input side (``data.crop_size``) and
``"P"`` for the part labels' side (:func:`part_label_size`: S / 2, twice the heatmaps'). The order of :data:`FIELDS` is the
npz member order, so it must not change for fields already packed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pare.body.joints import KEYPOINTS_49
from pare.config import ConfigError, part_label_size

# The shard format: manifests record it, readers refuse any other. 2: keypoints_2d in SPIN's
# 49-joint layout with the 3DPW fit's joints projected into the ground-truth slots, joints_3d
# SPIN's 24 ground-truth joints (1: a 22-keypoint layout and SMPL's kinematic joints).
SCHEMA_VERSION = 2


class OldShardFormat(ConfigError):
    """A split packed in another shard format than this version reads."""


def check_schema_version(manifest: dict, where: str) -> None:
    """Raise :class:`OldShardFormat` (one line, with the fix) unless the manifest ``manifest``
    (read from ``where``) records :data:`SCHEMA_VERSION`."""
    found = manifest.get("schema_version")
    if found != SCHEMA_VERSION:
        raise OldShardFormat(
            f"{where} was packed in shard format {found}, this version reads format "
            f"{SCHEMA_VERSION} (SPIN's 49 keypoints and 24 ground-truth joints); repack the split "
            "with shards/pack_3dpw.py / shards/pack_mpii.py (or make demo-data for the demo)"
        )


@dataclass(frozen=True)
class Field:
    """One per-sample array: its name, shape (ints, ``"S"`` or ``"P"``), numpy dtype and meaning
    (with units)."""

    name: str
    shape: tuple[int | str, ...]
    dtype: type
    meaning: str
    stored: bool = True  # an npz member of every packed sample
    in_batch: bool = True  # handed to the trainer
    # Value for shards packed before the field existed (None: the field is required).
    default: float | None = None


FIELDS: tuple[Field, ...] = (
    Field(
        "image", (3, "S", "S"), np.uint8,
        "RGB network input, channels first in the batch; warped from the jpg",
        stored=False,
    ),
    Field(
        "part_labels", ("P", "P"), np.uint8,
        "0 background, 1..24 SMPL part + 1, at twice the heatmap resolution (S / 2); warped "
        "from the png (all 0 without one)",
        stored=False,
    ),
    Field(
        "keypoints_2d", (len(KEYPOINTS_49), 3), np.float32,
        "x, y in crop pixels and confidence, KEYPOINTS_49 order (SPIN's 25 OpenPose-style + "
        "24 ground-truth slots); absent joints all 0",
    ),
    Field(
        "joints_3d", (24, 3), np.float32,
        "SPIN's 24 ground-truth joints (SPIN_GT_24), camera frame, metres",
    ),
    Field("h36m_3d", (17, 3), np.float32, "H36M-regressed joints, camera frame, metres"),
    Field(
        "pose", (72,), np.float32,
        "SMPL axis-angle, radians; the global orientation in the camera frame",
    ),
    Field("betas", (10,), np.float32, "SMPL shape coefficients"),
    Field("gender", (), np.int64, "0 neutral, 1 male, 2 female"),
    Field("has_smpl", (), np.bool_, "pose and betas are ground truth"),
    Field("has_joints_3d", (), np.bool_, "joints_3d and h36m_3d are ground truth"),
    Field(
        "has_part_labels", (), np.bool_, "the sample has a part-label png", stored=False
    ),
    Field("is_pseudo_gt", (), np.bool_, "SMPL from a fit (EFT), not from measurements"),
    Field(
        "intrinsics", (3, 3), np.float32,
        "pinhole intrinsics on the crop's pixels (nan when unknown)",
    ),
    Field(
        "crop_box", (4,), np.float32,
        "x0, y0, x1, y1 of the stored crop in the original image, pixels",
        in_batch=False,
    ),
    Field(
        "box_center", (2,), np.float32,
        "person box centre in the original image, pixels (the '200 px' convention)",
        in_batch=False,
    ),
    Field(
        "box_scale", (), np.float32, "person box side / 200 px in the original image",
        in_batch=False,
    ),
    Field(
        "dataset", (), np.int64, "index of the sample's dataset in the stream's list",
        stored=False,
    ),
    Field(
        "head_size", (), np.float32,
        "MPII's PCKh unit, 0.6 x head-box diagonal in crop pixels; 0 when unknown",
        default=0.0,
    ),
)  # fmt: skip

FIELDS_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}

# name -> (shape, numpy dtype) of every array in a packed sample's npz, in member order.
NPZ_FIELDS: dict[str, tuple[tuple[int, ...], type]] = {
    f.name: (f.shape, f.dtype) for f in FIELDS if f.stored
}

# The fields of a batch, in batch order.
BATCH_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.in_batch)


def field_shape(name: str, crop_size: int = 224) -> tuple[int, ...]:
    """Per-sample shape of field ``name`` for crops of side S = ``crop_size`` (and heatmaps of
    :func:`part_label_size`). Raises KeyError for an unknown field."""
    sizes = {"S": crop_size, "P": part_label_size(crop_size)}
    return tuple(sizes.get(d, d) for d in FIELDS_BY_NAME[name].shape)


def nonfinite_fields(arrays) -> list[str]:
    """Names of the stored fields in ``arrays`` (name -> array, e.g. a sample's npz) holding NaN
    or inf. ``intrinsics`` all NaN is the documented "no camera" value (MPII) and passes; one
    NaN entry among numbers does not."""
    bad = []
    for name in NPZ_FIELDS:
        if name not in arrays:
            continue
        value = np.asarray(arrays[name], dtype=np.float64)
        if name == "intrinsics" and np.isnan(value).all():
            continue
        if not np.isfinite(value).all():
            bad.append(name)
    return bad
