"""Rotations, cameras and crops against scipy, PIL and textbook formulas."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from pare import geometry as G


def _rotvecs(n=500, seed=0):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    # Include the hard cases: tiny angles, exactly zero, and angles at and near pi.
    angle = np.concatenate(
        [
            rng.uniform(0, np.pi, n - 8),
            [0, 1e-9, 1e-5, 1e-3, np.pi, np.pi - 1e-7, np.pi - 1e-4, 3.0],
        ]
    )
    return axis * angle[:, None]


def test_axis_angle_to_matrix_matches_scipy():
    aa = _rotvecs()
    ours = G.axis_angle_to_matrix(torch.from_numpy(aa)).numpy()
    np.testing.assert_allclose(ours, Rotation.from_rotvec(aa).as_matrix(), atol=1e-12)


def test_matrix_to_axis_angle_matches_scipy():
    aa = _rotvecs(seed=1)
    mats = Rotation.from_rotvec(aa).as_matrix()
    ours = G.matrix_to_axis_angle(torch.from_numpy(mats)).numpy()
    # Compare as rotations (at pi, v and -v are the same rotation) and as angles.
    np.testing.assert_allclose(Rotation.from_rotvec(ours).as_matrix(), mats, atol=1e-9)
    np.testing.assert_allclose(
        np.linalg.norm(ours, axis=1), Rotation.from_matrix(mats).magnitude(), atol=1e-7
    )
    away_from_pi = np.linalg.norm(aa, axis=1) < np.pi - 1e-3
    np.testing.assert_allclose(ours[away_from_pi], aa[away_from_pi], atol=1e-9)


def test_quaternion_matches_scipy():
    mats = Rotation.from_rotvec(_rotvecs(seed=2)).as_matrix()
    ours = G.matrix_to_quaternion(torch.from_numpy(mats)).numpy()
    xyzw = Rotation.from_matrix(mats).as_quat()
    ref = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], 1)
    ref *= np.where(ref[:, :1] < 0, -1, 1)
    # q and -q are the same rotation when w == 0.
    err = np.minimum(np.abs(ours - ref).max(1), np.abs(ours + ref).max(1))
    assert err.max() < 1e-9


def test_rot6d_round_trip_and_gram_schmidt():
    mats = torch.from_numpy(Rotation.random(200, random_state=3).as_matrix())
    np.testing.assert_allclose(G.rot6d_to_matrix(G.matrix_to_rot6d(mats)), mats, atol=1e-12)
    # Layout: the first two columns, row-major, as in SPIN/PARE's mean-pose files.
    np.testing.assert_array_equal(
        G.matrix_to_rot6d(mats)[0].numpy(), mats[0, :, :2].numpy().reshape(6)
    )
    # Arbitrary 6D vectors: textbook Gram-Schmidt on the two columns.
    x = np.random.default_rng(4).normal(size=(100, 6))
    ours = G.rot6d_to_matrix(torch.from_numpy(x)).numpy()
    for v, r in zip(x, ours, strict=True):
        a1, a2 = v.reshape(3, 2).T
        b1 = a1 / np.linalg.norm(a1)
        b2 = a2 - b1.dot(a2) * b1
        b2 /= np.linalg.norm(b2)
        np.testing.assert_allclose(r, np.stack([b1, b2, np.cross(b1, b2)], 1), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(ours), 1.0, atol=1e-12)


def test_rodrigues_gradient_is_finite_at_zero():
    aa = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    G.axis_angle_to_matrix(aa).sum().backward()
    assert torch.isfinite(aa.grad).all()


def test_perspective_projection_matches_pinhole_formula():
    rng = np.random.default_rng(5)
    pts = rng.normal(size=(4, 10, 3))
    rot = Rotation.random(4, random_state=5).as_matrix()
    t = np.array([0.1, -0.2, 5.0]) + rng.normal(scale=0.1, size=(4, 3))
    f = rng.uniform(500, 1500, size=(4, 2))
    c = rng.uniform(100, 500, size=(4, 2))
    ours = G.perspective_projection(
        *(torch.from_numpy(a) for a in (pts, t, f, c)), rotation=torch.from_numpy(rot)
    )
    for b in range(4):
        k = np.array([[f[b, 0], 0, c[b, 0]], [0, f[b, 1], c[b, 1]], [0, 0, 1]])
        hom = (k @ (rot[b] @ pts[b].T + t[b][:, None])).T
        np.testing.assert_allclose(ours[b].numpy(), hom[:, :2] / hom[:, 2:], rtol=1e-12)


def test_weak_perspective_camera_agrees_with_perspective_near_the_root():
    cam = torch.tensor([[0.9, 0.1, -0.2], [1.3, -0.05, 0.3]], dtype=torch.float64)
    t = G.weak_perspective_to_translation(cam)
    np.testing.assert_allclose(t[:, 2].numpy(), 2 * 5000 / (224 * cam[:, 0].numpy()), rtol=1e-9)
    # Points in the root's depth plane: perspective / 112 equals s * (X + t_xy) exactly.
    gen = torch.Generator().manual_seed(0)
    pts = 0.5 * torch.randn(2, 5, 3, dtype=torch.float64, generator=gen)
    pts[..., 2] = 0
    proj = G.perspective_projection(pts, t, 5000.0) / 112.0
    weak = cam[:, None, :1] * (pts[..., :2] + cam[:, None, 1:])
    np.testing.assert_allclose(proj.numpy(), weak.numpy(), rtol=1e-8, atol=1e-12)


def test_crop_matrix_maps_box_to_crop():
    center = torch.tensor([[320.0, 240.0], [100.5, 700.25]], dtype=torch.float64)
    scale = torch.tensor([1.5, 0.8], dtype=torch.float64)
    m = G.crop_matrix(center, scale, 224)
    half = 100 * scale[:, None]
    corners = torch.stack([center - half, center + half, center], 1)
    out = G.transform_points(corners, m)
    expected = torch.tensor([[0.0, 0.0], [224.0, 224.0], [112.0, 112.0]], dtype=torch.float64)
    np.testing.assert_allclose(out.numpy(), expected.expand(2, 3, 2).numpy(), atol=1e-9)


def test_crop_rotation_turns_counter_clockwise_about_the_centre():
    center = torch.tensor([[50.0, 50.0]], dtype=torch.float64)
    m = G.crop_matrix(center, torch.tensor([1.0], dtype=torch.float64), 200, 90.0)
    # A point right of the centre (image x grows right, y grows down) ends up above it.
    out = G.transform_points(torch.tensor([[[60.0, 50.0]]], dtype=torch.float64), m)
    np.testing.assert_allclose(
        out[0, 0].numpy(), [100.0, 90.0], atol=1e-9
    )  # 1 px per px at scale 1


@pytest.mark.parametrize("rotation", [0.0, 25.0])
def test_crop_image_matches_pil_affine(rotation):
    rng = np.random.default_rng(6)
    img = rng.uniform(0, 1, size=(120, 160)).astype(np.float32)
    center = torch.tensor([[82.3, 57.9]], dtype=torch.float64)
    scale = torch.tensor([0.45], dtype=torch.float64)
    res = 64
    ours = G.crop_image(torch.from_numpy(img)[None, None].double(), center, scale, res, rotation)[
        0, 0
    ].numpy()
    # PIL's AFFINE maps each output pixel centre (x+0.5, y+0.5) through the given inverse.
    inv = np.linalg.inv(G.crop_matrix(center, scale, res, rotation)[0].numpy())
    pil = Image.fromarray(img, mode="F").transform(
        (res, res),
        Image.Transform.AFFINE,
        data=tuple(inv[:2].reshape(-1)),
        resample=Image.Resampling.BILINEAR,
    )
    ref = np.asarray(pil)
    # Compare away from the border, where zero padding and PIL's edge rule differ.
    src = G.transform_points(
        torch.tensor(
            np.stack(np.meshgrid(np.arange(res) + 0.5, np.arange(res) + 0.5), -1).reshape(1, -1, 2)
        ),
        torch.from_numpy(inv)[None],
    )
    inside = (
        ((src[0, :, 0] > 1) & (src[0, :, 0] < 159) & (src[0, :, 1] > 1) & (src[0, :, 1] < 119))
        .reshape(res, res)
        .numpy()
    )
    assert inside.mean() > 0.5
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-5)


def test_normalize_keypoints():
    pts = torch.tensor([[[0.0, 224.0], [112.0, 56.0]]])
    np.testing.assert_allclose(G.normalize_keypoints(pts, 224).numpy(), [[[-1, 1], [0, -0.5]]])
