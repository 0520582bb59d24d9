"""Joint sets, the mappings between them, and their left/right flip permutations.

Sets:
- ``SMPL_24``: SMPL's kinematic joints (the order of ``poses`` and ``jointPositions``).
- ``H36M_17``: the joints of an H36M-style regressor, ordered as the community's
  ``J_regressor_h36m.npy`` is used (SPIN, PARE): ``H36M_TO_EVAL14`` then yields LSP order.
- ``EVAL_14``: the 14 joints that 3DPW/H36M MPJPE and PA-MPJPE are reported on.
- ``OPENPOSE_18``: the order of 3DPW's ``poses2d``.
- ``MPII_16``: MPII Human Pose ids 0..15.
- ``UNIFIED``: the keypoint layout stored in shards and supervised in 2D: OpenPose-18 followed by
  MPII's four joints that OpenPose lacks. Every dataset maps into it; missing joints get
  confidence 0.

Also the 21 extra joints that smplx's ``SMPL`` appends to its 24 (from mesh vertex ids), so that
the model's output can be mapped into ``UNIFIED`` too.
"""

from __future__ import annotations

import numpy as np
import torch

SMPL_24 = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck", "left_collar",
    "right_collar", "head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow",
    "left_wrist", "right_wrist", "left_hand", "right_hand",
)  # fmt: skip
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)

H36M_17 = (
    "pelvis", "left_hip", "left_knee", "left_ankle", "right_hip", "right_knee", "right_ankle",
    "spine", "thorax", "neck_nose", "head_top", "left_shoulder", "left_elbow", "left_wrist",
    "right_shoulder", "right_elbow", "right_wrist",
)  # fmt: skip
H36M_PELVIS = 0
H36M_TO_EVAL14 = (6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10)
EVAL_14 = tuple(H36M_17[i] for i in H36M_TO_EVAL14)

OPENPOSE_18 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip

MPII_16 = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
    "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
    "left_shoulder", "left_elbow", "left_wrist",
)  # fmt: skip

UNIFIED = (*OPENPOSE_18, "pelvis", "thorax", "upper_neck", "head_top")

# smplx 0.1.28 appends these (in this order) to SMPL's 24 joints, each read off one mesh vertex
# (vertex_ids["smplh"]). The stand-in body model places anatomically matching vertices at
# these ids, so the appended joints mean the same thing on it as on SMPL.
SMPLX_EXTRA_VERTEX_JOINTS = (
    ("nose", 332), ("right_eye", 6260), ("left_eye", 2800), ("right_ear", 4071),
    ("left_ear", 583), ("left_big_toe", 3216), ("left_small_toe", 3226), ("left_heel", 3387),
    ("right_big_toe", 6617), ("right_small_toe", 6624), ("right_heel", 6787),
    ("left_thumb", 2746), ("left_index", 2319), ("left_middle", 2445), ("left_ring", 2556),
    ("left_pinky", 2673), ("right_thumb", 6191), ("right_index", 5782), ("right_middle", 5905),
    ("right_ring", 6016), ("right_pinky", 6133),
)  # fmt: skip
SMPLX_JOINTS_45 = SMPL_24 + tuple(name for name, _ in SMPLX_EXTRA_VERTEX_JOINTS)


def _swap_side(name: str) -> str:
    if name.startswith("left_"):
        return "right_" + name[len("left_") :]
    if name.startswith("right_"):
        return "left_" + name[len("right_") :]
    return name


def flip_permutation(names: tuple[str, ...]) -> np.ndarray:
    """Index array ``p`` such that ``flipped[:, i] = joints[:, p[i]]`` after mirroring an image."""
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[_swap_side(n)] for n in names], dtype=np.int64)


def mapping(source: tuple[str, ...], target: tuple[str, ...]) -> np.ndarray:
    """For each target joint, its index in ``source`` or -1 where ``source`` lacks it."""
    index = {n: i for i, n in enumerate(source)}
    return np.array([index.get(n, -1) for n in target], dtype=np.int64)


def to_unified(keypoints: np.ndarray, source: tuple[str, ...]) -> np.ndarray:
    """Scatter ``(..., len(source), C)`` keypoints into ``(..., len(UNIFIED), C)``.

    Joints the source lacks are zero, so a trailing confidence channel marks them as absent.
    """
    m = mapping(source, UNIFIED)
    out = np.zeros((*keypoints.shape[:-2], len(UNIFIED), keypoints.shape[-1]), keypoints.dtype)
    present = m >= 0
    out[..., present, :] = keypoints[..., m[present], :]
    return out


SMPL_FLIP = flip_permutation(SMPL_24)
H36M_FLIP = flip_permutation(H36M_17)
EVAL14_FLIP = flip_permutation(EVAL_14)
OPENPOSE_FLIP = flip_permutation(OPENPOSE_18)
MPII_FLIP = flip_permutation(MPII_16)
UNIFIED_FLIP = flip_permutation(UNIFIED)
OPENPOSE_TO_UNIFIED = mapping(OPENPOSE_18, UNIFIED)
MPII_TO_UNIFIED = mapping(MPII_16, UNIFIED)


# Where each UNIFIED keypoint comes from on the body model: smplx's 45 output joints, or the
# H36M regressor for the MPII joints that SMPL's skeleton has no counterpart for.
_UNIFIED_FROM_H36M = {"thorax": "thorax", "upper_neck": "neck_nose", "head_top": "head_top"}
UNIFIED_MODEL_SOURCES = tuple(
    ("h36m", H36M_17.index(_UNIFIED_FROM_H36M[n])) if n in _UNIFIED_FROM_H36M
    else ("smplx", SMPLX_JOINTS_45.index(n))
    for n in UNIFIED
)  # fmt: skip


def unified_from_model(smplx_joints, h36m_joints):
    """(..., 45, D) smplx joints and (..., 17, D) H36M joints -> (..., 22, D) UNIFIED keypoints.

    Takes numpy arrays or torch tensors.
    """
    n45 = smplx_joints.shape[-2]
    index = [i if src == "smplx" else n45 + i for src, i in UNIFIED_MODEL_SOURCES]
    if isinstance(smplx_joints, np.ndarray):
        both = np.concatenate([smplx_joints, h36m_joints], axis=-2)
    else:
        both = torch.cat([smplx_joints, h36m_joints], dim=-2)
    return both[..., index, :]
