"""Joint sets, mappings and flip permutations, checked against names and geometry."""

import numpy as np
import pytest
import smplx.vertex_ids
import torch

from pare.body import build_body_model, load_eval_assets
from pare.body import joints as J


@pytest.mark.parametrize(
    ("names", "flip"),
    [
        (J.SMPL_24, J.SMPL_FLIP),
        (J.H36M_17, J.H36M_FLIP),
        (J.EVAL_14, J.EVAL14_FLIP),
        (J.OPENPOSE_18, J.OPENPOSE_FLIP),
        (J.MPII_16, J.MPII_FLIP),
        (J.OPENPOSE_25, J.flip_permutation(J.OPENPOSE_25)),
        (J.SPIN_GT_24, J.GT24_FLIP),
        (J.KEYPOINTS_49, J.KEYPOINTS49_FLIP),
    ],
)
def test_flip_is_an_involution_that_swaps_sides(names, flip):
    assert sorted(flip) == list(range(len(names)))
    np.testing.assert_array_equal(flip[flip], np.arange(len(names)))
    for i, j in enumerate(flip):
        a, b = names[i], names[j]
        if "left" in a or "right" in a:
            assert a.replace("left", "X").replace("right", "X") == b.replace("left", "X").replace(
                "right", "X"
            )
            assert a != b
        else:
            assert a == b


def test_tables_match_the_reference_notes():
    assert list(J.SMPL_FLIP) == [
        0,
        2,
        1,
        3,
        5,
        4,
        6,
        8,
        7,
        9,
        11,
        10,
        12,
        14,
        13,
        15,
        17,
        16,
        19,
        18,
        21,
        20,
        23,
        22,
    ]
    assert list(J.MPII_FLIP) == [5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10]
    # The 14 evaluation joints come out in LSP order.
    assert J.EVAL_14 == (
        "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
        "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
        "left_wrist", "thorax", "head_top",
    )  # fmt: skip


def test_extra_vertex_ids_match_smplx():
    expected = smplx.vertex_ids.vertex_ids["smplh"]
    ours = dict(J.SMPLX_EXTRA_VERTEX_JOINTS)
    smplx_names = {
        "nose": "nose", "right_eye": "reye", "left_eye": "leye", "right_ear": "rear", "left_ear": "lear",
        "left_big_toe": "LBigToe", "left_small_toe": "LSmallToe", "left_heel": "LHeel",
        "right_big_toe": "RBigToe", "right_small_toe": "RSmallToe", "right_heel": "RHeel",
        "left_thumb": "lthumb", "left_index": "lindex", "left_middle": "lmiddle", "left_ring": "lring",
        "left_pinky": "lpinky", "right_thumb": "rthumb", "right_index": "rindex",
        "right_middle": "rmiddle", "right_ring": "rring", "right_pinky": "rpinky",
    }  # fmt: skip
    for ours_name, theirs in smplx_names.items():
        assert ours[ours_name] == expected[theirs], ours_name


# SPIN's and PARE's tables (pare/core/constants.py, SPIN's constants.py and
# datasets/preprocess/mpii.py), transcribed by hand: the references the derived arrays must equal.
SPIN_JOINT_NAMES = (
    "OP Nose", "OP Neck", "OP RShoulder", "OP RElbow", "OP RWrist", "OP LShoulder", "OP LElbow",
    "OP LWrist", "OP MidHip", "OP RHip", "OP RKnee", "OP RAnkle", "OP LHip", "OP LKnee",
    "OP LAnkle", "OP REye", "OP LEye", "OP REar", "OP LEar", "OP LBigToe", "OP LSmallToe",
    "OP LHeel", "OP RBigToe", "OP RSmallToe", "OP RHeel",
    "Right Ankle", "Right Knee", "Right Hip", "Left Hip", "Left Knee", "Left Ankle",
    "Right Wrist", "Right Elbow", "Right Shoulder", "Left Shoulder", "Left Elbow", "Left Wrist",
    "Neck (LSP)", "Top of Head (LSP)", "Pelvis (MPII)", "Thorax (MPII)", "Spine (H36M)",
    "Jaw (H36M)", "Head (H36M)", "Nose", "Left Eye", "Right Eye", "Left Ear", "Right Ear",
)  # fmt: skip
SPIN_JOINT_MAP = {
    "OP Nose": 24, "OP Neck": 12, "OP RShoulder": 17, "OP RElbow": 19, "OP RWrist": 21,
    "OP LShoulder": 16, "OP LElbow": 18, "OP LWrist": 20, "OP MidHip": 0, "OP RHip": 2,
    "OP RKnee": 5, "OP RAnkle": 8, "OP LHip": 1, "OP LKnee": 4, "OP LAnkle": 7, "OP REye": 25,
    "OP LEye": 26, "OP REar": 27, "OP LEar": 28, "OP LBigToe": 29, "OP LSmallToe": 30,
    "OP LHeel": 31, "OP RBigToe": 32, "OP RSmallToe": 33, "OP RHeel": 34,
    "Right Ankle": 8, "Right Knee": 5, "Right Hip": 45, "Left Hip": 46, "Left Knee": 4,
    "Left Ankle": 7, "Right Wrist": 21, "Right Elbow": 19, "Right Shoulder": 17,
    "Left Shoulder": 16, "Left Elbow": 18, "Left Wrist": 20, "Neck (LSP)": 47,
    "Top of Head (LSP)": 48, "Pelvis (MPII)": 49, "Thorax (MPII)": 50, "Spine (H36M)": 51,
    "Jaw (H36M)": 52, "Head (H36M)": 53, "Nose": 24, "Left Eye": 26, "Right Eye": 25,
    "Left Ear": 28, "Right Ear": 27,
}  # fmt: skip
PARE_J24_FLIP_PERM = [
    5,
    4,
    3,
    2,
    1,
    0,
    11,
    10,
    9,
    8,
    7,
    6,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    21,
    20,
    23,
    22,
]
PARE_J49_FLIP_PERM = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24,
                      19, 20, 21] + [25 + i for i in PARE_J24_FLIP_PERM]  # fmt: skip
SPIN_MPII_JOINTS_IDX = [0, 1, 2, 3, 4, 5, 14, 15, 12, 13, 6, 7, 8, 9, 10, 11]


def test_the_49_joints_are_spins_in_spins_order():
    assert len(J.KEYPOINTS_49) == len(SPIN_JOINT_NAMES) == 49
    # Our snake_case names read as SPIN's: the same block and the same side.
    for ours, theirs in zip(J.KEYPOINTS_49, SPIN_JOINT_NAMES, strict=True):
        assert ours.startswith("op_") == theirs.startswith("OP ")
        base = theirs.removeprefix("OP ")  # no unsided SPIN name starts with L or R
        side = {"L": "left", "R": "right"}.get(base[0])
        first = ours.removeprefix("op_").split("_")[0]
        assert (first if first in ("left", "right") else None) == side, (ours, theirs)
    np.testing.assert_array_equal(
        J.KEYPOINTS49_MODEL_SOURCES, [SPIN_JOINT_MAP[n] for n in SPIN_JOINT_NAMES]
    )
    np.testing.assert_array_equal(J.KEYPOINTS49_FLIP, PARE_J49_FLIP_PERM)
    np.testing.assert_array_equal(J.GT24_FLIP, PARE_J24_FLIP_PERM)
    assert J.GT_HIPS == (2, 3)  # PARE's keypoint_3d_loss: gt_keypoints_3d[:, 2] and [:, 3]


def test_mpii_joints_land_in_spins_slots():
    # SPIN stores MPII joint i at ground-truth slot joints_idx[i] of its 24.
    np.testing.assert_array_equal(J.MPII16_TO_49 - 25, SPIN_MPII_JOINTS_IDX)
    names = [J.KEYPOINTS_49[i] for i in J.MPII16_TO_49]
    assert names[J.MPII_16.index("pelvis")] == "pelvis"  # 'Pelvis (MPII)', not SMPL's root
    assert names[J.MPII_16.index("upper_neck")] == "neck"  # 'Neck (LSP)'
    assert names[J.MPII_16.index("right_hip")] == "right_hip"  # the LSP hip (extra regressor)
    # 3DPW's OpenPose detections go to the OpenPose slots only.
    assert all(J.KEYPOINTS_49[i].startswith("op_") for i in J.OPENPOSE18_TO_49)


def test_to_keypoints_49_scatters_and_leaves_the_rest_absent():
    rng = np.random.default_rng(0)
    for source, slots in ((J.OPENPOSE_18, J.OPENPOSE18_TO_49), (J.MPII_16, J.MPII16_TO_49)):
        kp = np.concatenate(
            [rng.normal(size=(5, len(source), 2)), np.ones((5, len(source), 1))], -1
        )
        out = J.to_keypoints_49(kp, slots)
        assert out.shape == (5, 49, 3)
        for j, slot in enumerate(slots):
            np.testing.assert_array_equal(out[:, slot], kp[:, j])
        rest = np.setdiff1d(np.arange(49), slots)
        assert np.all(out[:, rest] == 0)


def test_flipping_commutes_with_the_49_mapping():
    rng = np.random.default_rng(1)
    kp = rng.normal(size=(3, 16, 3))
    for names, flip, slots in (
        (J.MPII_16, J.MPII_FLIP, J.MPII16_TO_49),
        (J.OPENPOSE_18, J.OPENPOSE_FLIP, J.OPENPOSE18_TO_49),
    ):
        kp = rng.normal(size=(3, len(names), 3))
        a = J.to_keypoints_49(kp[:, flip], slots)
        b = J.to_keypoints_49(kp, slots)[:, J.KEYPOINTS49_FLIP]
        np.testing.assert_array_equal(a, b)


def test_model_keypoints_in_the_49_layout_are_anatomical():
    model = build_body_model("standin")
    extra_reg = torch.from_numpy(load_eval_assets("standin").extra_regressor).float()
    with torch.no_grad():
        out = model()
    extra = torch.einsum("jv,bvc->bjc", extra_reg, out.vertices)
    kp = J.keypoints_from_model(out.joints, extra)[0].numpy()
    assert kp.shape == (49, 3)
    at = dict(zip(J.KEYPOINTS_49, kp, strict=True))
    assert at["head_top"][1] > at["neck"][1] > at["thorax"][1] > at["spine"][1] > at["pelvis"][1]
    assert at["head_top"][1] > at["head"][1] > at["jaw"][1] > at["neck"][1]
    assert at["nose"][2] > at["neck"][2]
    # MPII's pelvis sits between the LSP hips, below SMPL's root (the OpenPose mid-hip slot).
    np.testing.assert_allclose(
        at["pelvis"][0], 0.5 * (at["left_hip"][0] + at["right_hip"][0]), atol=0.01
    )
    assert at["op_mid_hip"][1] - at["pelvis"][1] > 0.05
    for side, sign in (("left", 1), ("right", -1)):
        assert (
            sign * at[f"{side}_wrist"][0]
            > sign * at[f"{side}_elbow"][0]
            > sign * at[f"{side}_shoulder"][0]
            > 0
        )
        assert at[f"{side}_hip"][1] > at[f"{side}_knee"][1] > at[f"{side}_ankle"][1]
        # Shared joints are the same point in both blocks; the LSP hip is not SMPL's.
        np.testing.assert_array_equal(at[f"{side}_knee"], at[f"op_{side}_knee"])
        assert at[f"op_{side}_hip"][1] > at[f"{side}_hip"][1]
    np.testing.assert_allclose(J.keypoints_from_model(out.joints.numpy(), extra.numpy())[0], kp)
