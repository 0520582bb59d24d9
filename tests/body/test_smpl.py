"""The one gendered SMPL body against smplx itself and the regressor applied by hand."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare.body import GENDER_CODE, GENDERS, SMPLBody, build_body_model, load_eval_assets
from pare.body.joints import KEYPOINTS49_MODEL_SOURCES

B = 6


@pytest.fixture(scope="module")
def body():
    return SMPLBody("standin")


@pytest.fixture(scope="module")
def reference():
    """Independent outputs: smplx's own module per gender, the regressor in float64 numpy."""
    g = torch.Generator().manual_seed(3)
    pose = 0.4 * torch.randn(B, 72, generator=g)
    betas = torch.randn(B, 10, generator=g)
    transl = torch.randn(B, 3, generator=g)
    assets = load_eval_assets("standin")
    regressor = assets.h36m_regressor.astype(np.float64)  # (17, V)
    extra_regressor = assets.extra_regressor.astype(np.float64)  # (9, V)
    out = {}
    for gender in GENDERS:
        model = build_body_model("standin", gender)
        with torch.no_grad():
            smplx_out = model(
                betas=betas, global_orient=pose[:, :3], body_pose=pose[:, 3:], transl=transl
            )
        vertices = smplx_out.vertices.double().numpy()
        h36m = np.einsum("jv,bvc->bjc", regressor, vertices)
        extra = np.einsum("jv,bvc->bjc", extra_regressor, vertices)
        # SPIN's SMPL: smplx's 45 joints, then the extra regressor's 9, picked by JOINT_MAP.
        keypoints = np.concatenate([smplx_out.joints.double().numpy(), extra], 1)[
            :, KEYPOINTS49_MODEL_SOURCES
        ]
        out[gender] = {
            "vertices": vertices,
            "smpl_joints": smplx_out.joints[:, :24].double().numpy(),
            "h36m_3d": h36m,
            "keypoints_3d": keypoints,
            "joints_3d": keypoints[:, 25:],
        }
    return pose, betas, transl, out


def _close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, atol=2e-5, rtol=0)


def test_gender_codes_are_indices_into_genders():
    assert GENDERS == ("neutral", "male", "female")
    assert GENDER_CODE == {"neutral": 0, "male": 1, "female": 2}


def test_each_gender_matches_smplx_and_the_regressor_on_its_vertices(body, reference):
    pose, betas, transl, ref = reference
    for gender in GENDERS:
        codes = torch.full((B,), GENDER_CODE[gender])
        with torch.no_grad():
            out = body(pose, betas, codes, transl)
        assert {k: tuple(v.shape) for k, v in out.items()} == {
            "vertices": (B, 6890, 3),
            "smpl_joints": (B, 24, 3),
            "h36m_3d": (B, 17, 3),
            "keypoints_3d": (B, 49, 3),
            "joints_3d": (B, 24, 3),
        }
        assert all(v.dtype == torch.float32 for v in out.values())
        for key, expected in ref[gender].items():
            _close(out[key], expected)


def test_the_three_genders_differ(reference):
    _, _, _, ref = reference
    for a, b in (("neutral", "male"), ("neutral", "female"), ("male", "female")):
        assert np.abs(ref[a]["vertices"] - ref[b]["vertices"]).max() > 0.01, (a, b)


def test_mixed_gender_codes_pick_each_samples_model(body, reference):
    pose, betas, transl, ref = reference
    codes = torch.tensor([2, 0, 1, 1, 2, 0])
    with torch.no_grad():
        out = body(pose, betas, codes, transl)
    for i, code in enumerate(codes.tolist()):
        for key in out:
            _close(out[key][i], ref[GENDERS[code]][key][i])


def test_rotation_matrices_equal_axis_angle_and_default_to_the_first_gender(reference):
    pose, betas, _, ref = reference
    neutral = SMPLBody("standin", genders=("neutral",))
    rotmat = torch.as_tensor(
        Rotation.from_rotvec(pose.reshape(-1, 3).numpy()).as_matrix(), dtype=torch.float32
    ).reshape(B, 24, 3, 3)
    with torch.no_grad():
        from_rotmat = neutral(rotmat, betas)
        from_axis_angle = neutral(pose, betas, torch.zeros(B, dtype=torch.long))
    for key in from_rotmat:
        torch.testing.assert_close(from_rotmat[key], from_axis_angle[key], atol=2e-5, rtol=0)
    # The reference's translation is the only difference.
    shift = reference[2][:, None].double().numpy()
    for key in ("vertices", "smpl_joints", "joints_3d"):
        _close(from_rotmat[key], ref["neutral"][key] - shift)


def test_fp32_under_autocast(body, reference):
    pose, betas, transl, _ = reference
    codes = torch.arange(B) % 3
    with torch.no_grad():
        plain = body(pose, betas, codes, transl)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = body(pose.bfloat16(), betas, codes, transl)
    assert all(v.dtype == torch.float32 for v in mixed.values())
    # Only the inputs' rounding to bf16 differs.
    torch.testing.assert_close(
        mixed["vertices"], body(pose.bfloat16().float(), betas, codes, transl)["vertices"]
    )
    assert (mixed["vertices"] - plain["vertices"]).abs().max() < 0.05


def test_no_parameters_and_nothing_in_the_state_dict(body):
    assert list(body.parameters()) == []
    assert body.state_dict() == {}
    assert body.faces.dtype == np.int64 and body.faces.shape == (13776, 3)
    assert body.part_labels.shape == (6890,) and body.is_standin


def test_bad_codes_and_unloaded_genders_raise(body, reference):
    pose, betas, _, _ = reference
    with pytest.raises(ValueError, match="gender codes"):
        body(pose[:2], betas[:2], torch.tensor([0, 3]))
    neutral = SMPLBody("standin", genders=("neutral",))
    with pytest.raises(ValueError, match="not loaded"):
        neutral(pose[:2], betas[:2], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="not loaded"):
        neutral.posed_numpy("female", np.zeros(10), np.zeros((1, 72)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="subset"):
        SMPLBody("standin", genders=("other",))


def test_numpy_interface_is_float64_in_the_world_frame(body, reference):
    pose, betas, transl, _ = reference
    for gender in GENDERS:
        # One person over B frames: the first sample's betas for every frame.
        out = body.posed_numpy(gender, betas[0].double().numpy(), pose.numpy(), transl.numpy())
        assert all(v.dtype == np.float64 for v in out.values())
        with torch.no_grad():
            expected = body(pose, betas[:1].expand(B, -1), torch.full((B,), GENDER_CODE[gender]))
        for key, value in expected.items():
            _close(out[key], value.double().numpy() + (transl.numpy()[:, None]))


def test_rest_root_and_shaped_template_are_smplx_at_zero_pose(body, reference):
    _, betas, _, _ = reference
    for gender in GENDERS:
        model = build_body_model("standin", gender)
        with torch.no_grad():
            rest = model(betas=betas[:1])
        _close(body.shaped_template(gender, betas[0].numpy()), rest.vertices[0].double().numpy())
        _close(body.rest_root(gender, betas[0].numpy()), rest.joints[0, 0].double().numpy())
    neutral = build_body_model("standin", "neutral")
    _close(body.rest_vertices, neutral.v_template.double().numpy())
    assert body.rest_vertices.dtype == np.float64
