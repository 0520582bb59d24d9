"""A small z-buffer rasteriser in numpy: shaded images, part labels, masks and depth.

No OpenGL, no external renderer. A mesh is projected through a pinhole camera (intrinsics K,
world-to-camera R, t); every front-facing triangle is expanded into the pixels of its bounding
box, inside pixels are kept, and the nearest surface per pixel wins (a sort by pixel, then
depth). Depth is interpolated perspective-correctly (1/z is linear in screen space).

Pixel convention (as in :mod:`pare.geometry`): pixel (i, j) covers [i, i+1) x [j, j+1), and a
pixel is covered when its centre (i + 0.5, j + 0.5) is inside a triangle.

Used for the synthetic datasets, for part-segmentation ground truth at packing time and for
prediction overlays.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

# One distinct colour per SMPL part (index 0..23), spread around the hue circle.
PART_COLORS = np.array(
    [colorsys.hsv_to_rgb((k * 0.381966) % 1.0, 0.55, 0.95) for k in range(24)], dtype=np.float32
)


@dataclass
class Camera:
    """Pinhole camera: ``K`` (3, 3) intrinsics, world-to-camera ``R`` (3, 3) and ``t`` (3,)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    width: int
    height: int

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """World (..., 3) -> camera frame (..., 3)."""
        return points @ self.R.T + self.t

    def project(self, points: np.ndarray) -> np.ndarray:
        """World (..., 3) -> pixels (..., 2) (continuous coordinates)."""
        cam = self.to_camera(points)
        uvw = cam @ self.K.T
        return uvw[..., :2] / uvw[..., 2:]


@dataclass
class Fragments:
    """Per-pixel rasterisation result; face -1 marks background."""

    face: np.ndarray  # (H, W) int64
    bary: np.ndarray  # (H, W, 3) perspective-correct barycentric weights
    depth: np.ndarray  # (H, W) camera-frame z, inf on background

    @property
    def mask(self) -> np.ndarray:
        return self.face >= 0


def rasterize(
    vertices: np.ndarray, faces: np.ndarray, camera: Camera, max_pairs: int = 4_000_000
) -> Fragments:
    """Z-buffer rasterisation of one mesh (V, 3) world coordinates, faces (F, 3).

    Triangles facing away from the camera are skipped (the body is a closed surface, so they are
    always hidden), as are triangles behind the camera or outside the image. ``max_pairs`` bounds
    the (triangle, pixel) candidates processed at once, so memory stays flat for close-ups.
    """
    h, w = camera.height, camera.width
    cam = camera.to_camera(vertices.astype(np.float64))  # (V, 3)
    z = cam[:, 2]
    uvw = cam @ camera.K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = uvw[:, :2] / uvw[:, 2:]  # (V, 2)
    tri_xy = xy[faces]  # (F, 3, 2)
    tri_z = z[faces]  # (F, 3)

    # Screen-space signed area; the mesh is outward-oriented, and image y points down, so a
    # front face is clockwise on screen: negative area.
    e1 = tri_xy[:, 1] - tri_xy[:, 0]
    e2 = tri_xy[:, 2] - tri_xy[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    lo = (
        np.floor(tri_xy.min(1) - 0.5).astype(np.int64) + 1
    )  # first pixel whose centre can be inside
    hi = np.floor(tri_xy.max(1) - 0.5).astype(np.int64)  # last such pixel
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [w - 1, h - 1])
    keep = (
        (tri_z.min(1) > 1e-6)
        & (area < 0)
        & np.isfinite(tri_xy).all((1, 2))
        & (hi[:, 0] >= lo[:, 0])
        & (hi[:, 1] >= lo[:, 1])
    )
    face_ids = np.nonzero(keep)[0]

    depth = np.full(h * w, np.inf)
    face_of = np.full(h * w, -1, np.int64)
    bary_of = np.zeros((h * w, 3))
    if len(face_ids):
        counts = (hi[face_ids, 0] - lo[face_ids, 0] + 1) * (hi[face_ids, 1] - lo[face_ids, 1] + 1)
        cum = np.cumsum(counts)
        start = 0
        while start < len(face_ids):  # chunks of faces whose candidate pixels fit max_pairs
            done = cum[start - 1] if start else 0
            stop = max(start + 1, int(np.searchsorted(cum, done + max_pairs, side="right")))
            _raster_chunk(
                face_ids[start:stop], lo, hi, tri_xy, tri_z, area, w, depth, face_of, bary_of
            )
            start = stop
    return Fragments(face_of.reshape(h, w), bary_of.reshape(h, w, 3), depth.reshape(h, w))


def _raster_chunk(chunk, lo, hi, tri_xy, tri_z, area, w, depth, face_of, bary_of) -> None:
    """Candidate pixels of these faces, inside test, and z-buffer merge into the outputs."""
    bw = hi[chunk, 0] - lo[chunk, 0] + 1
    bh = hi[chunk, 1] - lo[chunk, 1] + 1
    n = bw * bh
    face = np.repeat(chunk, n)  # (P,) one entry per candidate pixel
    local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    px = lo[face, 0] + local % np.repeat(bw, n)
    py = lo[face, 1] + local // np.repeat(bw, n)
    cx, cy = px + 0.5, py + 0.5
    t = tri_xy[face]  # (P, 3, 2)
    # Edge functions: screen-space barycentric weights (sum to 1).
    w0 = (t[:, 1, 0] - cx) * (t[:, 2, 1] - cy) - (t[:, 1, 1] - cy) * (t[:, 2, 0] - cx)
    w1 = (t[:, 2, 0] - cx) * (t[:, 0, 1] - cy) - (t[:, 2, 1] - cy) * (t[:, 0, 0] - cx)
    a = area[face]
    b0, b1 = w0 / a, w1 / a
    b2 = 1.0 - b0 - b1
    inside = (b0 >= 0) & (b1 >= 0) & (b2 >= 0)
    face, px, py = face[inside], px[inside], py[inside]
    screen = np.stack([b0[inside], b1[inside], b2[inside]], 1)  # (Q, 3)
    # Perspective-correct weights: interpolate 1/z linearly on screen.
    inv_z = screen / tri_z[face]
    z = 1.0 / inv_z.sum(1)
    persp = inv_z * z[:, None]
    pix = py * w + px
    # Nearest fragment per pixel: sort by pixel, then depth; first of each run wins.
    order = np.lexsort((z, pix))
    pix_sorted = pix[order]
    first = order[np.r_[True, pix_sorted[1:] != pix_sorted[:-1]]]
    pix_first = pix[first]
    closer = z[first] < depth[pix_first]
    sel = first[closer]
    target = pix[sel]
    depth[target] = z[sel]
    face_of[target] = face[sel]
    bary_of[target] = persp[sel]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals (V, 3) of an outward-oriented mesh."""
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices, dtype=np.float64)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


@dataclass
class Mesh:
    """A mesh to render: world vertices (V, 3), faces (F, 3), optional per-vertex part labels
    (V,) 0..23 and colours (V, 3) in [0, 1]. Meshes without labels (props, the ground) leave
    the part map at 0; without colours, parts get :data:`PART_COLORS`."""

    vertices: np.ndarray
    faces: np.ndarray
    part_labels: np.ndarray | None = None
    colors: np.ndarray | None = None


@dataclass
class Render:
    """Rendered layers of one image (H, W)."""

    image: np.ndarray  # (H, W, 3) uint8
    parts: np.ndarray  # (H, W) uint8: 0 background, 1..24 SMPL part + 1
    depth: np.ndarray  # (H, W) float64, inf on background
    mesh: np.ndarray  # (H, W) int16: index of the mesh seen at each pixel, -1 background

    @property
    def mask(self) -> np.ndarray:
        """Pixels covered by any mesh."""
        return self.mesh >= 0


def render(
    meshes: list[Mesh],
    camera: Camera,
    background: np.ndarray | None = None,
    light_dir: tuple[float, float, float] = (0.2, 0.4, 1.0),
) -> Render:
    """Render meshes into one image; the nearest surface wins across meshes too.

    Shading is Lambertian plus ambient; ``light_dir`` is the direction the light travels, in
    the camera frame (x right, y down, z forward). ``background`` is an (H, W, 3) uint8 image.
    """
    h, w = camera.height, camera.width
    depth = np.full((h, w), np.inf)
    parts = np.zeros((h, w), np.uint8)
    seen = np.full((h, w), -1, np.int16)
    rgb = (
        np.zeros((h, w, 3), np.float32)
        if background is None
        else background.astype(np.float32) / 255.0
    )
    light = np.asarray(light_dir, float) / np.linalg.norm(light_dir)
    for index, mesh in enumerate(meshes):
        frag = rasterize(mesh.vertices, mesh.faces, camera)
        visible = frag.mask & (frag.depth < depth)
        if not visible.any():
            continue
        bary = frag.bary[visible]  # (Q, 3)
        corner = mesh.faces[frag.face[visible]]  # (Q, 3) vertex ids
        if mesh.part_labels is not None:
            # The corner with the largest weight names the part, so the map follows vertex labels.
            nearest = corner[np.arange(len(corner)), bary.argmax(1)]
            parts[visible] = mesh.part_labels[nearest] + 1
        else:
            parts[visible] = 0
        normals = vertex_normals(mesh.vertices, mesh.faces) @ camera.R.T  # camera frame
        n = np.einsum("qk,qkc->qc", bary, normals[corner])
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        shade = 0.35 + 0.65 * np.clip(-(n @ light), 0.0, 1.0)
        if mesh.colors is not None:
            base = mesh.colors
        elif mesh.part_labels is not None:
            base = PART_COLORS[mesh.part_labels]
        else:
            base = np.full((len(mesh.vertices), 3), 0.7, np.float32)
        rgb[visible] = np.einsum("qk,qkc->qc", bary, base[corner]) * shade[:, None]
        depth[visible] = frag.depth[visible]
        seen[visible] = index
    image = (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Render(image, parts, depth, seen)
