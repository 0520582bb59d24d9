"""Rotations, cameras, projection and crop transforms (batched torch, any leading dims).

Pixel convention: continuous coordinates where pixel (i, j) covers [i, i+1) x [j, j+1), so the
image centre of a W x H image is (W/2, H/2), matching intrinsics with cx = W/2, cy = H/2.

Crops follow the "200 px" convention of SPIN and PARE: a person box has a ``center`` (px) and a
``scale`` such that its side is ``200 * scale`` px; the box maps onto a ``res`` x ``res`` crop.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FOCAL_LENGTH = 5000.0
# The side (px) of the crop on which PARE's weak-perspective camera has focal FOCAL_LENGTH, as
# SPIN and PARE define it. It stays 224 whatever data.crop_size is: the predicted camera lives
# in normalised crop coordinates ([-1, 1]), so only the ratio focal / reference matters to the
# image, and keeping PARE's ratio keeps its translations (depth) comparable across crop sizes.
CAMERA_REFERENCE_SIZE = 224


# ----------------------------------------------------------------------------- rotations


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) -> (..., 3, 3), exact to second order near zero angle."""
    angle2 = (axis_angle * axis_angle).sum(-1, keepdim=True)[..., None]  # (..., 1, 1)
    angle = angle2.clamp_min(1e-30).sqrt()
    small = angle2 < 1e-8
    # sin(t)/t and (1 - cos t)/t^2 with their Taylor series where t is tiny.
    sinc = torch.where(small, 1 - angle2 / 6, torch.sin(angle) / angle)
    cosc = torch.where(small, 0.5 - angle2 / 24, (1 - torch.cos(angle)) / angle2.clamp_min(1e-30))
    x, y, z = axis_angle.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye + sinc * k + cosc * (k @ k)


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 4) unit quaternion (w, x, y, z) with w >= 0.

    Takes the numerically best of the four standard formulas per element, so it stays exact
    near 180 degree rotations where the trace formula loses precision.
    """
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    candidates_sq = torch.stack(
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    )  # 4 * (w^2, x^2, y^2, z^2)
    best = candidates_sq.argmax(-1, keepdim=True)
    r = candidates_sq.clamp_min(1e-30).sqrt()  # 2 * |component|
    d21, d02, d10 = (
        m[..., 2, 1] - m[..., 1, 2],
        m[..., 0, 2] - m[..., 2, 0],
        m[..., 1, 0] - m[..., 0, 1],
    )
    s21, s02, s10 = (
        m[..., 2, 1] + m[..., 1, 2],
        m[..., 0, 2] + m[..., 2, 0],
        m[..., 1, 0] + m[..., 0, 1],
    )
    # Row q: the quaternion computed from the q-th largest-magnitude component, times 2 r_q.
    rows = torch.stack([
        torch.stack([r[..., 0] ** 2, d21, d02, d10], -1),
        torch.stack([d21, r[..., 1] ** 2, s10, s02], -1),
        torch.stack([d02, s10, r[..., 2] ** 2, s21], -1),
        torch.stack([d10, s02, s21, r[..., 3] ** 2], -1),
    ], -2) / (2 * r[..., :, None])  # fmt: skip
    q = torch.gather(rows, -2, best[..., None].expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 3) axis-angle with angle in [0, pi]."""
    q = matrix_to_quaternion(matrix)
    w, xyz = q[..., :1], q[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(sin_half, w)
    # angle / sin(angle/2), with its limit 2 + angle^2/12 near zero.
    scale = torch.where(sin_half < 1e-6, 2 + angle**2 / 12, angle / sin_half.clamp_min(1e-30))
    return xyz * scale


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(..., 6) -> (..., 3, 3) by Gram-Schmidt (Zhou et al. 2019).

    The 6 numbers are the first two columns of R, row-major as a 3 x 2 matrix
    (R00, R01, R10, R11, R20, R21): the layout of SPIN/PARE's mean-parameter files.
    """
    cols = x.unflatten(-1, (3, 2))  # (..., 3, 2)
    a1, a2 = cols[..., 0], cols[..., 1]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) -> (..., 6): the inverse of :func:`rot6d_to_matrix` on rotations."""
    return matrix[..., :, :2].flatten(-2)


# ----------------------------------------------------------------------------- cameras


def weak_perspective_to_translation(
    cam: torch.Tensor,
    focal_length: float = FOCAL_LENGTH,
    reference_size: int = CAMERA_REFERENCE_SIZE,
) -> torch.Tensor:
    """PARE's crop camera ``[s, tx, ty]`` (..., 3) -> camera translation (..., 3), metres.

    Weak perspective maps a body point X to normalised crop coordinates ``s * (X_xy + t)``.
    A perspective camera with focal ``f`` (px) on a ``reference_size`` px crop, at depth
    ``tz = 2 f / (reference_size * s)``, gives the same image at the body's root, so the
    translation is ``[tx, ty, tz]``. It holds at any crop size: see CAMERA_REFERENCE_SIZE.
    """
    s, tx, ty = cam.unbind(-1)
    tz = 2 * focal_length / (reference_size * s + 1e-9)
    return torch.stack([tx, ty, tz], -1)


def crop_camera_to_full(
    cam: torch.Tensor, intrinsics: torch.Tensor, crop_size: int
) -> torch.Tensor:
    """PARE's crop camera ``[s, tx, ty]`` (B, 3) -> the body's translation (B, 3) in the real
    camera whose intrinsics on the input crop's pixels are ``intrinsics`` (B, 3, 3).

    With S = ``crop_size`` (the network input's side, px), the weak-perspective image of the
    root, ``S/2 + (s S / 2)(X + t)`` in input pixels, equals
    the pinhole's ``f (X + T) / T_z + c`` when ``T_z = 2 f / (s S)`` and
    ``T_xy = t + (S/2 - c) T_z / f`` (square pixels, as weak perspective assumes): a crop whose
    centre is off the principal point sees the body obliquely, which shifts it sideways.
    """
    s, tx, ty = cam.double().unbind(-1)
    f = intrinsics[:, [0, 1], [0, 1]].double()  # (B, 2) fx, fy
    c = intrinsics[:, [0, 1], [2, 2]].double()  # (B, 2) cx, cy
    tz = 2 * f[:, 0] / (crop_size * s + 1e-9)
    txy = torch.stack([tx, ty], -1) + (crop_size / 2.0 - c) * tz[:, None] / f
    return torch.cat([txy, tz[:, None]], -1)


def global_rotations(rotmat: torch.Tensor, parents: tuple[int, ...]) -> torch.Tensor:
    """Per-joint rotations relative to the parent (B, J, 3, 3) -> rotations in the root's
    (camera) frame, down the kinematic tree (``parents[j] < j``, root parent -1)."""
    out = [rotmat[:, 0]]
    for j in range(1, rotmat.shape[1]):
        out.append(out[parents[j]] @ rotmat[:, j])
    return torch.stack(out, 1)


def perspective_projection(
    points: torch.Tensor,
    translation: torch.Tensor,
    focal_length: torch.Tensor | float,
    center: torch.Tensor | float = 0.0,
    rotation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Project (B, N, 3) points to (B, N, 2) pixels: ``K (R X + t)`` with a pinhole ``K``.

    ``focal_length`` is a scalar, (B,) or (B, 2); ``center`` a scalar or (B, 2). With
    ``center=0`` and the result divided by ``CAMERA_REFERENCE_SIZE / 2`` (with PARE's focal
    length) this is PARE's normalised 2D joints.
    """
    if rotation is not None:
        points = points @ rotation.transpose(-1, -2)
    cam = points + translation[..., None, :]  # (B, N, 3)
    f = torch.as_tensor(focal_length, dtype=cam.dtype, device=cam.device)
    if f.dim() == 1:
        f = f[:, None, None]  # (B, 1, 1)
    elif f.dim() == 2:
        f = f[:, None, :]  # (B, 1, 2)
    c = torch.as_tensor(center, dtype=cam.dtype, device=cam.device)
    if c.dim() == 2:
        c = c[:, None, :]  # (B, 1, 2)
    return cam[..., :2] / cam[..., 2:] * f + c


# ----------------------------------------------------------------------------- crops


def crop_matrix(
    center: torch.Tensor, scale: torch.Tensor, res: int, rotation_deg: torch.Tensor | float = 0.0
) -> torch.Tensor:
    """(B, 3, 3) affine map from image pixels to crop pixels.

    The box of side ``200 * scale`` around ``center`` (B, 2) fills the ``res`` x ``res`` crop;
    the crop content is rotated by ``rotation_deg`` counter-clockwise about the crop centre
    (positive angles turn the person counter-clockwise in the crop, as in SPIN's augmentation).
    """
    scale = torch.as_tensor(scale, dtype=center.dtype, device=center.device).expand(
        center.shape[:-1]
    )
    rot = torch.as_tensor(rotation_deg, dtype=center.dtype, device=center.device).expand(
        scale.shape
    )
    k = res / (200.0 * scale)
    theta = -rot * (math.pi / 180.0)  # image y points down, so counter-clockwise is -angle
    cos, sin = torch.cos(theta), torch.sin(theta)
    half = res / 2.0
    cx, cy = center.unbind(-1)
    # x' = R k (x - c) + res/2
    a00, a01, a10, a11 = k * cos, -k * sin, k * sin, k * cos
    t0 = half - (a00 * cx + a01 * cy)
    t1 = half - (a10 * cx + a11 * cy)
    zero, one = torch.zeros_like(k), torch.ones_like(k)
    return torch.stack([a00, a01, t0, a10, a11, t1, zero, zero, one], -1).unflatten(-1, (3, 3))


def transform_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply (B, 3, 3) affine maps to (B, N, 2) points."""
    return points @ matrix[..., :2, :2].transpose(-1, -2) + matrix[..., None, :2, 2]


def crop_image(
    images: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    res: int,
    rotation_deg: torch.Tensor | float = 0.0,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Crop (B, C, H, W) images to (B, C, res, res) with :func:`crop_matrix`; zeros outside."""
    _, _, h, w = images.shape
    inverse = torch.linalg.inv(crop_matrix(center, scale, res, rotation_deg))  # crop -> image
    # Pixel centres of the crop, mapped to image pixels, then to grid_sample's [-1, 1].
    coords = torch.arange(res, dtype=images.dtype, device=images.device) + 0.5
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    grid = torch.stack([gx, gy], -1).reshape(1, -1, 2).expand(len(images), -1, -1)
    src = transform_points(grid, inverse.to(images.dtype))  # (B, res*res, 2)
    size = torch.tensor([w, h], dtype=images.dtype, device=images.device)
    norm = (2 * src / size - 1).reshape(len(images), res, res, 2)
    return F.grid_sample(images, norm, mode=mode, padding_mode="zeros", align_corners=False)


def normalize_keypoints(points: torch.Tensor, res: int) -> torch.Tensor:
    """Crop pixels -> [-1, 1] (crop centre 0), the frame of PARE's projected 2D joints."""
    return 2.0 * points / res - 1.0
