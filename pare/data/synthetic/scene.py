"""Building blocks for synthetic scenes: actors, cameras, props, ground and backgrounds.

Shared by the synthetic 3DPW and MPII generators. World frame: y up, ground at ``GROUND_Y``
(the stand-in's soles at zero translation), people face +z at zero orientation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg

from pare.io_utils import write_bytes_atomic
from pare.render import Camera, Mesh

GROUND_Y = -1.17

# Part groups for clothing colours (SMPL part ids).
_SKIN = (12, 15, 20, 21, 22, 23)
_SHIRT = (3, 6, 9, 13, 14, 16, 17)
_SLEEVE = (18, 19)
_PANTS = (0, 1, 2, 4, 5)
_SHOES = (7, 8, 10, 11)
_HEAD = 15
_CHEST = (6, 9)
_HAIR = np.array([[0.1, 0.07, 0.05], [0.3, 0.18, 0.08], [0.75, 0.6, 0.3], [0.5, 0.5, 0.5]])


@dataclass
class Appearance:
    """Clothing colours of one person: per-vertex colours and a small texture swatch."""

    vertex_colors: np.ndarray  # (V, 3) float32 in [0, 1]
    texture: np.ndarray  # (64, 64, 3) uint8, 3DPW's texture_maps stand-in


def _front_back_marks(rest: np.ndarray, part_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex masks (V,) of the hair (back and top of the head) and of a print on the front of
    the shirt, from the body at rest (y up, facing +z). Without them a person seen from behind
    looks like one seen from the front, mirrored, which real people (faces, hair, collars) do
    not: a model could not tell which arm is raised."""
    head = part_labels == _HEAD
    lo, hi = rest[head].min(0), rest[head].max(0)
    rel = (rest - lo) / np.maximum(hi - lo, 1e-9)  # position within the head's bounding box
    hair = head & ((rel[:, 2] < 0.55) | (rel[:, 1] > 0.8))
    chest = np.isin(part_labels, _CHEST)
    c_lo, c_hi = rest[chest].min(0), rest[chest].max(0)
    centre_x = 0.5 * (c_lo[0] + c_hi[0])
    front = rest[:, 2] > c_lo[2] + 0.6 * (c_hi[2] - c_lo[2])
    band = np.abs(rest[:, 0] - centre_x) < 0.25 * (c_hi[0] - c_lo[0])
    return hair, chest & front & band


def random_appearance(
    rng: np.random.Generator, part_labels: np.ndarray, rest_vertices: np.ndarray | None = None
) -> Appearance:
    """Random skin and clothing colours; with the body at rest (V, 3) also hair and a shirt print
    that tell the front of a person from the back."""
    skin = np.array([0.95, 0.76, 0.62]) * rng.uniform(0.45, 1.0)
    shirt, pants, shoes = (
        rng.uniform(0.05, 0.95, 3),
        rng.uniform(0.05, 0.8, 3),
        rng.uniform(0.0, 0.4, 3),
    )
    sleeve = shirt if rng.random() < 0.5 else skin
    colors = np.zeros((24, 3))
    for group, color in (
        (_SKIN, skin),
        (_SHIRT, shirt),
        (_SLEEVE, sleeve),
        (_PANTS, pants),
        (_SHOES, shoes),
    ):
        colors[list(group)] = color
    # Slight per-part variation so parts stay distinguishable.
    colors = np.clip(colors * rng.uniform(0.9, 1.1, (24, 1)), 0, 1)
    vertex_colors = colors[part_labels]
    # Chosen from the colours already drawn, so the generator's random stream (and every other
    # property of a seeded dataset) is what it was before hair existed.
    hair_color = _HAIR[int(skin.sum() * 997) % len(_HAIR)]
    print_color = 1.0 - shirt  # contrasting
    if rest_vertices is not None:
        hair, front_print = _front_back_marks(rest_vertices, part_labels)
        vertex_colors[hair] = np.clip(hair_color, 0, 1)
        vertex_colors[front_print] = print_color
    texture = np.zeros((64, 64, 3), np.uint8)
    for row, color in enumerate((skin, shirt, sleeve, pants, shoes)):
        texture[row * 13 : (row + 1) * 13] = (color * 255).astype(np.uint8)
    return Appearance(vertex_colors.astype(np.float32), texture)


def look_at(position: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera (R, t) for a camera at ``position`` looking at ``target``, y-up world.

    Camera axes follow the OpenCV convention: x right, y down, z forward.
    """
    forward = target - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    return rot, -rot @ position


def intrinsics(width: int, height: int, focal: float) -> np.ndarray:
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1.0]])


def box_mesh(center: np.ndarray, size: np.ndarray, color: np.ndarray) -> Mesh:
    """An axis-aligned box with outward faces (a prop that occludes people)."""
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    verts = center + corners * size
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = np.array([tri for a, b, c, d in quads for tri in ((a, b, c), (a, c, d))])
    # Orient outward: each face normal must point away from the centre.
    tri = verts[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    flip = np.einsum("ij,ij->i", normal, tri.mean(1) - center) < 0
    faces[flip] = faces[flip][:, ::-1]
    return Mesh(verts, faces, None, np.tile(np.asarray(color, np.float32), (8, 1)))


def ground_mesh(
    center: np.ndarray, half_size: float = 12.0, tile: float = 1.0, seed: int = 0
) -> Mesh:
    """A checkerboard ground plane at GROUND_Y (separate vertices per tile, so colours stay flat)."""
    rng = np.random.default_rng(seed)
    light, dark = rng.uniform(0.45, 0.7, 3), rng.uniform(0.2, 0.4, 3)
    n = int(2 * half_size / tile)
    ix, iz = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    x0 = center[0] - half_size + ix.ravel() * tile
    z0 = center[2] - half_size + iz.ravel() * tile
    y = np.full_like(x0, GROUND_Y)
    corners = [(0, 0), (0, 1), (1, 1), (1, 0)]
    verts = np.stack(
        [np.stack([x0 + dx * tile, y, z0 + dz * tile], 1) for dx, dz in corners], 1
    ).reshape(-1, 3)
    base = 4 * np.arange(n * n)[:, None]
    faces = np.concatenate([base + [0, 1, 2], base + [0, 2, 3]])  # normals up (+y): outward
    color = np.where(((ix + iz).ravel() % 2 == 0)[:, None], light, dark)
    return Mesh(verts, faces, None, np.repeat(color, 4, 0).astype(np.float32))


def sky_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 vertical gradient with soft noise: a plain but non-constant backdrop."""
    top, bottom = rng.uniform(0.5, 0.95, 3), rng.uniform(0.3, 0.7, 3)
    t = np.linspace(0, 1, height)[:, None, None]
    img = (1 - t) * top + t * bottom + rng.normal(0, 0.02, (height, 1, 3))
    return (np.clip(np.broadcast_to(img, (height, width, 3)), 0, 1) * 255).astype(np.uint8)


def camera_at(
    position: np.ndarray, target: np.ndarray, width: int, height: int, focal: float
) -> Camera:
    rot, t = look_at(position, target)
    return Camera(intrinsics(width, height, focal), rot, t, width, height)


def keypoint_visibility(
    render_mesh: np.ndarray,
    render_depth: np.ndarray,
    camera: Camera,
    points: np.ndarray,
    mesh_index: int,
    tolerance: float = 0.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (J, 2) of world points (J, 3), and whether each is in the image and not hidden
    behind another mesh (a prop or another person); the person's own body does not hide it."""
    xy = camera.project(points)
    depth = camera.to_camera(points)[:, 2]
    px = np.floor(xy).astype(np.int64)
    inside = (
        (px[:, 0] >= 0)
        & (px[:, 0] < camera.width)
        & (px[:, 1] >= 0)
        & (px[:, 1] < camera.height)
        & (depth > 0)
    )
    visible = inside.copy()
    idx = np.nonzero(inside)[0]
    seen = render_mesh[px[idx, 1], px[idx, 0]]
    nearer = render_depth[px[idx, 1], px[idx, 0]] < depth[idx] - tolerance
    visible[idx] = ~((seen != mesh_index) & (seen >= 0) & nearer)
    return xy, visible


def write_jpeg(path: Path, image: np.ndarray, quality: int = 90) -> None:
    """RGB uint8 (H, W, 3) -> JPEG file, atomically."""
    write_bytes_atomic(
        path, simplejpeg.encode_jpeg(np.ascontiguousarray(image), quality=quality, colorspace="RGB")
    )
