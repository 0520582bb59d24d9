"""The one per-sample field list: the npz schema and the batch contract derive from it."""

import numpy as np
import pytest
import torch

from pare.data.fields import BATCH_FIELDS, FIELDS, NPZ_FIELDS, field_shape
from pare.data.streaming.batch import BATCH_DTYPES

# Pinned: packed shards depend on these names, their order, shapes and dtypes byte for byte.
PACKED_NPZ = [
    ("keypoints_2d", (49, 3), np.float32),
    ("joints_3d", (24, 3), np.float32),
    ("h36m_3d", (17, 3), np.float32),
    ("pose", (72,), np.float32),
    ("betas", (10,), np.float32),
    ("gender", (), np.int64),
    ("has_smpl", (), np.bool_),
    ("has_joints_3d", (), np.bool_),
    ("is_pseudo_gt", (), np.bool_),
    ("intrinsics", (3, 3), np.float32),
    ("crop_box", (4,), np.float32),
    ("box_center", (2,), np.float32),
    ("box_scale", (), np.float32),
    ("head_size", (), np.float32),
]

BATCH = {
    "image": ((3, 224, 224), torch.uint8),
    "part_labels": ((112, 112), torch.uint8),  # S / 2: twice the 56 x 56 heatmaps
    "keypoints_2d": ((49, 3), torch.float32),
    "joints_3d": ((24, 3), torch.float32),
    "h36m_3d": ((17, 3), torch.float32),
    "pose": ((72,), torch.float32),
    "betas": ((10,), torch.float32),
    "gender": ((), torch.int64),
    "has_smpl": ((), torch.bool),
    "has_joints_3d": ((), torch.bool),
    "has_part_labels": ((), torch.bool),
    "is_pseudo_gt": ((), torch.bool),
    "intrinsics": ((3, 3), torch.float32),
    "dataset": ((), torch.int64),
    "head_size": ((), torch.float32),
}


def test_npz_schema_is_the_packed_one():
    assert [(n, s, d) for n, (s, d) in NPZ_FIELDS.items()] == PACKED_NPZ


def test_batch_contract():
    assert {f.name: (field_shape(f.name), BATCH_DTYPES[f.name]) for f in BATCH_FIELDS} == BATCH
    assert field_shape("image", 128) == (3, 128, 128)
    assert field_shape("part_labels", 128) == (64, 64)


def test_every_field_is_defined_once_with_a_meaning():
    names = [f.name for f in FIELDS]
    assert len(names) == len(set(names))
    assert all(f.meaning and (f.stored or f.in_batch) for f in FIELDS)
    with pytest.raises(KeyError):
        field_shape("nope")
