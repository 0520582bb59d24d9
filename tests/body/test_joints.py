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
        (J.UNIFIED, J.UNIFIED_FLIP),
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


def test_to_unified_places_each_dataset_joint_by_name():
    rng = np.random.default_rng(0)
    for source in (J.OPENPOSE_18, J.MPII_16):
        kp = np.concatenate(
            [rng.normal(size=(5, len(source), 2)), np.ones((5, len(source), 1))], -1
        )
        out = J.to_unified(kp, source)
        assert out.shape == (5, len(J.UNIFIED), 3)
        for i, name in enumerate(J.UNIFIED):
            if name in source:
                np.testing.assert_array_equal(out[:, i], kp[:, source.index(name)])
            else:
                assert np.all(out[:, i] == 0)


def test_flipping_commutes_with_unified_mapping():
    rng = np.random.default_rng(1)
    kp = rng.normal(size=(3, 16, 3))
    a = J.to_unified(kp[:, J.MPII_FLIP], J.MPII_16)
    b = J.to_unified(kp, J.MPII_16)[:, J.UNIFIED_FLIP]
    np.testing.assert_array_equal(a, b)


def test_model_keypoints_in_unified_layout_are_anatomical():
    model = build_body_model("standin")
    h36m_reg = torch.from_numpy(load_eval_assets("standin").h36m_regressor).float()
    with torch.no_grad():
        out = model()
    h36m = torch.einsum("jv,bvc->bjc", h36m_reg, out.vertices)
    kp = J.unified_from_model(out.joints, h36m)[0].numpy()
    assert kp.shape == (22, 3)
    at = dict(zip(J.UNIFIED, kp, strict=True))
    assert at["head_top"][1] > at["upper_neck"][1] > at["thorax"][1] > at["pelvis"][1]
    assert at["nose"][2] > at["upper_neck"][2]
    for side, sign in (("left", 1), ("right", -1)):
        assert (
            sign * at[f"{side}_wrist"][0]
            > sign * at[f"{side}_elbow"][0]
            > sign * at[f"{side}_shoulder"][0]
            > 0
        )
        assert at[f"{side}_hip"][1] > at[f"{side}_knee"][1] > at[f"{side}_ankle"][1]
    np.testing.assert_allclose(J.unified_from_model(out.joints.numpy(), h36m.numpy())[0], kp)
