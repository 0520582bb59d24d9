"""The generated stand-in body model: SMPL's format, a sound mesh, a working skeleton."""

import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare.body import build_body_model, check_part_labels, load_eval_assets, read_smpl_file
from pare.body.check import mesh_topology
from pare.body.joints import SMPL_PARENTS, SMPLX_EXTRA_VERTEX_JOINTS
from pare.body.standin import REST_JOINTS, generate


@pytest.fixture(scope="module")
def model_arrays(standin_folder):
    return read_smpl_file(standin_folder / "SMPL_NEUTRAL.pkl")


# The file names scipy.sparse.csc, as SMPL's own files do; today's scipy warns on that name.
@pytest.mark.filterwarnings("ignore:Please import `csc_matrix`:DeprecationWarning")
def test_files_have_smpl_layout(standin_folder, model_arrays):
    # Plain pickle with latin1, as smplx and user code load SMPL files.
    with (standin_folder / "SMPL_NEUTRAL.pkl").open("rb") as f:
        raw = pickle.load(f, encoding="latin1")
    assert type(raw["J_regressor"]).__name__ == "csc_matrix"
    assert raw["kintree_table"][0, 0] == 2**32 - 1
    shapes = {k: v.shape for k, v in model_arrays.items()}
    assert shapes["v_template"] == (6890, 3)
    assert shapes["f"] == (13776, 3)
    assert shapes["shapedirs"] == (6890, 3, 10)
    assert shapes["posedirs"] == (6890, 3, 207)
    assert shapes["J_regressor"] == (24, 6890)
    assert shapes["weights"] == (6890, 24)
    np.testing.assert_array_equal(model_arrays["kintree_table"][0, 1:], SMPL_PARENTS[1:])
    for gender in ("MALE", "FEMALE"):
        assert (standin_folder / f"SMPL_{gender}.pkl").is_file()


def test_mesh_is_one_closed_outward_surface(model_arrays):
    v, f = model_arrays["v_template"], model_arrays["f"].astype(np.int64)
    topo = mesh_topology(f, len(v))
    assert topo == {
        "vertices": 6890,
        "faces": 13776,
        "euler": 2,
        "components": 1,
        "closed_manifold": True,
    }
    # Consistent orientation: every directed edge appears once and its reverse once.
    directed = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    assert len(np.unique(directed, axis=0)) == len(directed)
    # Outward normals: positive enclosed volume (divergence theorem), of a plausible body size.
    tri = v[f]
    volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert 0.04 < volume < 0.12  # m^3: 40-120 kg at water density
    height = v[:, 1].max() - v[:, 1].min()
    assert 1.6 < height < 1.8


def test_rest_joints_and_regressor(model_arrays):
    jreg = model_arrays["J_regressor"]
    np.testing.assert_allclose(jreg.sum(1), 1.0, atol=1e-12)
    assert jreg.min() >= 0
    np.testing.assert_allclose(jreg @ model_arrays["v_template"], REST_JOINTS, atol=1e-9)


def test_skinning_weights_and_parts(model_arrays, standin_folder):
    w = model_arrays["weights"]
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    assert w.min() >= 0
    labels = load_eval_assets(standin_folder).part_labels
    assert labels.shape == (6890,) and set(labels) == set(range(24))
    # A vertex's own part drives it at least half (exactly half on the ring at a joint), and
    # most vertices move rigidly with their part.
    own = w[np.arange(6890), labels]
    assert own.min() >= 0.5 - 1e-12 and np.mean(own == 1.0) > 0.5
    # Part labels follow anatomy: the left-hand part is at +x far out, the head on top.
    v = model_arrays["v_template"]
    assert v[labels == 22, 0].min() > 0.7 and v[labels == 23, 0].max() < -0.7
    assert v[labels == 15, 1].min() > 0.28


def test_part_labels_pass_the_loaders_check(standin_folder):
    # The loader refuses labels out of SMPL joint order or whose sides do not mirror; the
    # generated ones must pass on every gendered template, not only the neutral one it checks.
    labels = np.load(standin_folder / "smpl_part_labels.npy")
    for gender in ("NEUTRAL", "MALE", "FEMALE"):
        arrays = read_smpl_file(standin_folder / f"SMPL_{gender}.pkl")
        v = arrays["v_template"]
        check_part_labels(labels, v, arrays["J_regressor"] @ v, f"stand-in {gender}")


def test_extra_vertex_joints_are_anatomical(model_arrays):
    v = model_arrays["v_template"]
    at = {name: v[vid] for name, vid in SMPLX_EXTRA_VERTEX_JOINTS}
    assert at["nose"][2] > REST_JOINTS[15, 2] + 0.05  # in front of the head joint
    assert at["left_eye"][0] > 0 > at["right_eye"][0]
    assert at["left_ear"][0] > 0.06 and at["right_ear"][0] < -0.06
    for side in ("left", "right"):
        assert at[f"{side}_heel"][2] < at[f"{side}_big_toe"][2] - 0.15
        assert at[f"{side}_big_toe"][1] < -1.1
        assert abs(at[f"{side}_thumb"][0]) < abs(at[f"{side}_middle"][0])


def test_generation_is_deterministic():
    a, b = generate(), generate()
    for key in vars(a):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def test_smplx_forward_batch64_matches_rest_skeleton():
    model = build_body_model("standin", batch_size=64)
    assert model.is_standin
    with torch.no_grad():
        out = model(
            betas=torch.zeros(64, 10),
            body_pose=torch.zeros(64, 69),
            global_orient=torch.zeros(64, 3),
        )
    assert out.vertices.shape == (64, 6890, 3) and out.joints.shape == (64, 45, 3)
    np.testing.assert_allclose(
        out.joints[:, :24].numpy(), np.broadcast_to(REST_JOINTS, (64, 24, 3)), atol=1e-6
    )


def test_posed_skeleton_follows_forward_kinematics():
    """Joints of a posed body equal an independent forward-kinematics chain (scipy rotations)."""
    rng = np.random.default_rng(1)
    pose = rng.normal(scale=0.4, size=(24, 3))
    model = build_body_model("standin", dtype=torch.float64)
    with torch.no_grad():
        out = model(
            global_orient=torch.from_numpy(pose[:1].reshape(1, 3)),
            body_pose=torch.from_numpy(pose[1:].reshape(1, 69)),
            betas=torch.zeros(1, 10, dtype=torch.float64),
            transl=torch.zeros(1, 3, dtype=torch.float64),
        )
    world_rot, world_pos = [None] * 24, [None] * 24
    for j in range(24):
        local = Rotation.from_rotvec(pose[j])
        p = SMPL_PARENTS[j]
        if p < 0:
            world_rot[j], world_pos[j] = local, REST_JOINTS[j]
        else:
            world_rot[j] = world_rot[p] * local
            world_pos[j] = world_pos[p] + world_rot[p].apply(REST_JOINTS[j] - REST_JOINTS[p])
    # smplx adds 1e-8 to each axis-angle before taking its norm, hence 1e-6 rather than 1e-12.
    np.testing.assert_allclose(out.joints[0, :24].numpy(), np.array(world_pos), atol=1e-6)


def test_shape_directions_change_the_body(model_arrays):
    model = build_body_model("standin", batch_size=2)
    betas = torch.zeros(2, 10)
    betas[1, 0] = 2.0  # overall size
    with torch.no_grad():
        out = model(betas=betas)
    height = out.vertices[..., 1].amax(1) - out.vertices[..., 1].amin(1)
    assert height[1] > height[0] * 1.1
    # Every direction moves some part of the body by at least 1 cm at beta = 2, and no two
    # directions are the same deformation.
    dirs = model_arrays["shapedirs"].reshape(-1, 10)
    assert np.all(2 * np.abs(dirs).max(0) > 0.01)
    unit = dirs / np.linalg.norm(dirs, axis=0)
    cos = unit.T @ unit
    assert np.abs(cos[~np.eye(10, dtype=bool)]).max() < 0.95


def test_gendered_models_differ():
    male, female = (build_body_model("standin", gender=g) for g in ("male", "female"))
    shoulder_m = male.J_regressor @ male.v_template
    shoulder_f = female.J_regressor @ female.v_template
    width_m = (shoulder_m[16, 0] - shoulder_m[17, 0]).item()
    width_f = (shoulder_f[16, 0] - shoulder_f[17, 0]).item()
    assert width_m > width_f + 0.02
