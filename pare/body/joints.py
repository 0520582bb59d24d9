"""Joint sets, the mappings between them, and their left/right flip permutations.

Sets:
- ``SMPL_24``: SMPL's kinematic joints (the order of ``poses`` and ``jointPositions``).
- ``H36M_17``: the joints of an H36M-style regressor, ordered as the community's
  ``J_regressor_h36m.npy`` is used (SPIN, PARE): ``H36M_TO_EVAL14`` then yields LSP order.
- ``EVAL_14``: the 14 joints that 3DPW/H36M MPJPE and PA-MPJPE are reported on.
- ``OPENPOSE_18``: the order of 3DPW's ``poses2d``; ``OPENPOSE_25``: OpenPose's BODY_25.
- ``MPII_16``: MPII Human Pose ids 0..15.
- ``SPIN_GT_24``: SPIN's 24 "ground-truth" joints, the superset of what the datasets annotate
  (LSP hips, neck and head top, MPII pelvis and thorax, H36M spine, jaw and head, face points).
- ``KEYPOINTS_49``: the layout stored in shards and supervised, SPIN's and PARE's 49 joints
  (``pare/core/constants.py`` ``JOINT_NAMES``): the 25 OpenPose-style slots (named ``op_*``)
  followed by ``SPIN_GT_24``. Every dataset maps into it as SPIN/PARE map it; joints a dataset
  lacks get confidence 0.

On the body model the 49 joints come from smplx's 45 joints (SMPL's 24 plus 21 read off mesh
vertices) and the 9 rows of SPIN's ``J_regressor_extra.npy`` (:data:`EXTRA_9`), picked as
SPIN/PARE's ``JOINT_MAP`` picks them (:func:`keypoints_from_model`).
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

OPENPOSE_25 = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
    "left_wrist", "mid_hip", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee",
    "left_ankle", "right_eye", "left_eye", "right_ear", "left_ear", "left_big_toe",
    "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel",
)  # fmt: skip

MPII_16 = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis",
    "thorax", "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder",
    "left_shoulder", "left_elbow", "left_wrist",
)  # fmt: skip

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

# The rows of SPIN's J_regressor_extra.npy (9, 6890), in file order: SPIN/PARE's JOINT_MAP sends
# 'Right Hip' to 45, 'Left Hip' 46, 'Neck (LSP)' 47, 'Top of Head (LSP)' 48, 'Pelvis (MPII)'
# 49, 'Thorax (MPII)' 50, 'Spine (H36M)' 51, 'Jaw (H36M)' 52 and 'Head (H36M)' 53, that is
# to the rows of this regressor appended after smplx's 45 joints.
EXTRA_9 = ("right_hip", "left_hip", "neck", "head_top", "pelvis", "thorax", "spine", "jaw", "head")

# SPIN's 24 ground-truth joints ('Right Ankle' .. 'Right Ear'; 'Neck (LSP)' is "neck",
# 'Top of Head (LSP)' "head_top", 'Pelvis (MPII)' "pelvis", 'Thorax (MPII)' "thorax",
# 'Spine (H36M)' "spine", 'Jaw (H36M)' "jaw", 'Head (H36M)' "head").
SPIN_GT_24 = (
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck", "head_top", "pelvis", "thorax", "spine", "jaw", "head", "nose", "left_eye",
    "right_eye", "left_ear", "right_ear",
)  # fmt: skip
OPENPOSE_PREFIX = "op_"
KEYPOINTS_49 = tuple(OPENPOSE_PREFIX + n for n in OPENPOSE_25) + SPIN_GT_24
OPENPOSE_SLOTS = slice(0, len(OPENPOSE_25))  # the OpenPose-style slots of KEYPOINTS_49
GT_SLOTS = slice(len(OPENPOSE_25), len(KEYPOINTS_49))  # the 24 ground-truth slots
# PARE's keypoint_3d_loss centres both sets on the midpoint of these two (SPIN_GT_24 2 and 3).
GT_HIPS = (SPIN_GT_24.index("right_hip"), SPIN_GT_24.index("left_hip"))


def _swap_side(name: str) -> str:
    words = name.split("_")
    swap = {"left": "right", "right": "left"}
    return "_".join(swap.get(w, w) for w in words)


def flip_permutation(names: tuple[str, ...]) -> np.ndarray:
    """Index array ``p`` such that ``flipped[:, i] = joints[:, p[i]]`` after mirroring an image."""
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[_swap_side(n)] for n in names], dtype=np.int64)


def mapping(source: tuple[str, ...], target: tuple[str, ...]) -> np.ndarray:
    """For each target joint, its index in ``source`` or -1 where ``source`` lacks it."""
    index = {n: i for i, n in enumerate(source)}
    return np.array([index.get(n, -1) for n in target], dtype=np.int64)


SMPL_FLIP = flip_permutation(SMPL_24)
H36M_FLIP = flip_permutation(H36M_17)
EVAL14_FLIP = flip_permutation(EVAL_14)
OPENPOSE_FLIP = flip_permutation(OPENPOSE_18)
MPII_FLIP = flip_permutation(MPII_16)
GT24_FLIP = flip_permutation(SPIN_GT_24)
KEYPOINTS49_FLIP = flip_permutation(KEYPOINTS_49)

# Where each dataset's joints go in KEYPOINTS_49. 3DPW's OpenPose detections fill the OpenPose
# slots by name. MPII's 16 joints fill ground-truth slots as SPIN's preprocessing does
# (datasets/preprocess/mpii.py, joints_idx = [0, 1, 2, 3, 4, 5, 14, 15, 12, 13, 6, 7, 8, 9,
# 10, 11]): hips to the LSP hips, pelvis and thorax to the MPII slots, upper neck to the LSP
# neck and head top to the LSP head top.
OPENPOSE18_TO_49 = np.array([KEYPOINTS_49.index(OPENPOSE_PREFIX + n) for n in OPENPOSE_18])
MPII16_TO_49 = np.array(
    [KEYPOINTS_49.index({"upper_neck": "neck"}.get(n, n), len(OPENPOSE_25)) for n in MPII_16]
)


def to_keypoints_49(keypoints: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Scatter a dataset's ``(..., K, C)`` keypoints into ``(..., 49, C)`` KEYPOINTS_49 slots
    (``slots`` (K,): e.g. :data:`OPENPOSE18_TO_49`, :data:`MPII16_TO_49`). Slots the dataset does
    not fill are zero, so a trailing confidence channel marks them as absent."""
    out = np.zeros((*keypoints.shape[:-2], len(KEYPOINTS_49), keypoints.shape[-1]), keypoints.dtype)
    out[..., slots, :] = keypoints
    return out


def _model_source(name: str) -> int:
    """Index of KEYPOINTS_49 joint ``name`` in smplx's 45 joints followed by EXTRA_9."""
    if name.startswith(OPENPOSE_PREFIX):  # OpenPose slots: SMPL's own joints and vertices
        base = name[len(OPENPOSE_PREFIX) :]
        return SMPLX_JOINTS_45.index("pelvis" if base == "mid_hip" else base)
    if name in EXTRA_9:
        return len(SMPLX_JOINTS_45) + EXTRA_9.index(name)
    return SMPLX_JOINTS_45.index(name)


# SPIN/PARE's JOINT_MAP (pare/core/constants.py) as an index array (tested against it).
KEYPOINTS49_MODEL_SOURCES = np.array([_model_source(n) for n in KEYPOINTS_49])


def keypoints_from_model(smplx_joints, extra_joints):
    """(..., 45, D) smplx joints and (..., 9, D) ``J_regressor_extra`` joints -> (..., 49, D)
    KEYPOINTS_49, as PARE's ``SMPL.forward`` (``pare/models/head/smpl_head.py``) selects them.

    Takes numpy arrays or torch tensors.
    """
    index = KEYPOINTS49_MODEL_SOURCES.tolist()
    if isinstance(smplx_joints, np.ndarray):
        both = np.concatenate([smplx_joints, extra_joints], axis=-2)
    else:
        both = torch.cat([smplx_joints, extra_joints], dim=-2)
    return both[..., index, :]
