"""A procedurally generated stand-in for the licensed SMPL model, in SMPL's own file format.

The SMPL files cannot be shipped, so the project generates a body model with the same layout:
6890 vertices, 13776 faces, SMPL's 24-joint kinematic tree and approximate neutral rest joints,
linear-blend skinning weights, 10 shape directions, 207 pose-corrective directions, a
24 x 6890 joint regressor, a per-vertex part label and an H36M-style 17-joint regressor.

Construction (deterministic, no randomness):

1. Seven closed tubes swept along the rest skeleton: torso+neck+head, two arms (collar to
   fingertips), two legs (inside the pelvis to below the ankle) and two feet. Each tube is a ring
   stack with a pole at each end, so it is a closed sphere-like surface; a ring is placed exactly
   at every joint it carries, so that joint is the exact mean of that ring's vertices.
2. The tubes are joined by six hidden "bridges": one cap triangle of each of two overlapping tubes
   is removed and the two holes are connected by a triangular prism inside the overlap. The result
   is one closed, oriented, genus-0 surface, like SMPL's: V - E + F = 2, so 6890 vertices give
   exactly 13776 faces.
3. Vertices are permuted so that the ids smplx reads its 21 extra joints from (nose, eyes, ears,
   toes, heels, fingertips) land on anatomically matching vertices.

It is a stand-in: joint positions, part layout and shape space are plausible, not SMPL's.
Results computed with it are labelled as such wherever they are printed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from pare.body.joints import SMPL_PARENTS, SMPLX_EXTRA_VERTEX_JOINTS

NUM_VERTICES = 6890
NUM_FACES = 13776
STANDIN_VERSION = 3  # 2: J_regressor_extra.npy; 3: pickles with numpy 1's module names

# Approximate neutral SMPL rest joints in metres (Y up, +x = subject's left, +z forward).
REST_JOINTS = np.array([
    [-0.002, -0.223, 0.028], [0.068, -0.315, 0.021], [-0.070, -0.314, 0.024],
    [-0.004, -0.114, 0.002], [0.102, -0.690, 0.017], [-0.108, -0.696, 0.015],
    [0.001, 0.021, 0.003], [0.088, -1.088, -0.027], [-0.092, -1.095, -0.027],
    [0.003, 0.074, 0.028], [0.115, -1.144, 0.093], [-0.117, -1.143, 0.096],
    [0.000, 0.288, -0.015], [0.082, 0.196, -0.006], [-0.079, 0.193, -0.011],
    [0.005, 0.353, 0.036], [0.173, 0.226, -0.015], [-0.175, 0.225, -0.020],
    [0.432, 0.213, -0.043], [-0.429, 0.212, -0.041], [0.681, 0.222, -0.044],
    [-0.684, 0.220, -0.047], [0.765, 0.214, -0.059], [-0.769, 0.214, -0.057],
])  # fmt: skip

HEAD_TOP_Y = 0.545
FINGER_LENGTH = 0.10
TOE_LENGTH = 0.07


@dataclass
class _Tube:
    """One closed tube: vertices, faces, and the ring each carried joint sits on."""

    verts: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3) outward-oriented
    centers: np.ndarray  # (R, 3) ring centres (poles excluded)
    ring_size: int
    joint_rings: dict[int, int]  # SMPL joint -> ring index
    chain: tuple[int, ...]  # the joints on this tube's axis, in axis order
    first_part: int  # the part the tube starts in, before its first joint

    def ring_vertices(self, ring: int) -> np.ndarray:
        return 1 + ring * self.ring_size + np.arange(self.ring_size)


def _snap_rings(
    s_grid: np.ndarray, s_joints: dict[int, float]
) -> tuple[np.ndarray, dict[int, int]]:
    """Move the nearest grid ring onto each joint's axis position."""
    s = s_grid.copy()
    rings: dict[int, int] = {}
    for joint, sj in s_joints.items():
        k = int(np.argmin(np.abs(s - sj)))
        if k in rings.values():
            raise AssertionError(f"two joints snapped to ring {k}; use more rings")
        s[k] = sj
        rings[joint] = k
    if np.any(np.diff(s) <= 0):
        raise AssertionError("ring positions are not increasing after snapping")
    return s, rings


def _sweep(
    centers: np.ndarray,
    tangents: np.ndarray,
    ref: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    poles: tuple[np.ndarray, np.ndarray],
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed tube: rings of ``n`` vertices (ellipses a x b around ``centers``) plus two poles."""
    r = len(centers)
    t = tangents / np.linalg.norm(tangents, axis=1, keepdims=True)
    u = ref - (t @ ref)[:, None] * t  # (R, 3) reference direction ⟂ tangent
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(t, u)
    theta = 2 * np.pi * np.arange(n) / n
    rings = (
        centers[:, None]
        + a[:, None, None] * np.cos(theta)[None, :, None] * u[:, None]
        + b[:, None, None] * np.sin(theta)[None, :, None] * v[:, None]
    )  # (R, n, 3)
    verts = np.concatenate([poles[0][None], rings.reshape(-1, 3), poles[1][None]])

    idx = 1 + np.arange(r * n).reshape(r, n)
    nxt = np.roll(idx, -1, axis=1)
    faces = [np.stack([np.zeros(n, int), nxt[0], idx[0]], 1)]
    quads = (idx[:-1], nxt[:-1], nxt[1:], idx[1:])
    faces.append(np.stack([quads[0], quads[1], quads[2]], -1).reshape(-1, 3))
    faces.append(np.stack([quads[0], quads[2], quads[3]], -1).reshape(-1, 3))
    faces.append(np.stack([np.full(n, len(verts) - 1), idx[-1], nxt[-1]], 1))
    faces = np.concatenate(faces)
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1]
    return verts, faces


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    tri = verts[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def _polyline_tube(
    points: np.ndarray,
    joints_at: dict[int, int],
    profile: list[tuple[float, float, float]],
    ref: np.ndarray,
    rings: int,
    n: int,
    first_part: int,
) -> _Tube:
    """Tube along a polyline from ``points[0]`` to ``points[-1]`` (the poles).

    ``joints_at`` maps SMPL joint -> index into ``points``; ``profile`` holds
    (fraction of length, a, b) knots of the cross-section semi-axes.
    """
    seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
    s_pts = np.concatenate([[0.0], np.cumsum(seg)])
    length = s_pts[-1]
    grid = np.linspace(0, length, rings + 2)[1:-1]
    s, joint_rings = _snap_rings(grid, {j: s_pts[i] for j, i in joints_at.items()})
    centers = np.stack([np.interp(s, s_pts, points[:, k]) for k in range(3)], 1)
    # Smooth the tangent across kinks so neighbouring rings do not cut into each other.
    eps = 0.03 * length
    ahead = np.stack(
        [np.interp(np.minimum(s + eps, length), s_pts, points[:, k]) for k in range(3)], 1
    )
    behind = np.stack([np.interp(np.maximum(s - eps, 0), s_pts, points[:, k]) for k in range(3)], 1)
    knots = np.array(profile)
    a = PchipInterpolator(knots[:, 0] * length, knots[:, 1])(s)
    b = PchipInterpolator(knots[:, 0] * length, knots[:, 2])(s)
    verts, faces = _sweep(centers, ahead - behind, ref, a, b, (points[0], points[-1]), n)
    chain = tuple(sorted(joints_at, key=joints_at.get))
    return _Tube(verts, faces, centers, n, joint_rings, chain, first_part)


def _torso(rings: int, n: int) -> _Tube:
    j = REST_JOINTS
    y0, y1 = -0.40, HEAD_TOP_Y
    chain = (0, 3, 6, 9, 12, 15)
    grid = np.linspace(y0, y1, rings + 2)[1:-1]
    ys, joint_rings = _snap_rings(grid, {k: j[k, 1] for k in chain})
    axis_y = np.array([y0, *j[list(chain), 1], y1])
    axis_x = np.array([0.0, *j[list(chain), 0], 0.005])
    axis_z = np.array([0.02, *j[list(chain), 2], 0.03])
    centers = np.stack(
        [PchipInterpolator(axis_y, axis_x)(ys), ys, PchipInterpolator(axis_y, axis_z)(ys)], 1
    )
    # Cross-section half-width (x) and half-depth (z) from crotch to crown.
    knots = np.array([
        (-0.400, 0.000, 0.000), (-0.385, 0.070, 0.055), (-0.360, 0.115, 0.085),
        (-0.320, 0.150, 0.100), (-0.250, 0.165, 0.110), (-0.180, 0.162, 0.105),
        (-0.100, 0.143, 0.095), (-0.020, 0.135, 0.095), (0.060, 0.148, 0.105),
        (0.140, 0.160, 0.110), (0.200, 0.165, 0.095), (0.235, 0.150, 0.080),
        (0.260, 0.100, 0.065), (0.285, 0.060, 0.055), (0.310, 0.050, 0.050),
        (0.335, 0.056, 0.062), (0.360, 0.075, 0.085), (0.400, 0.085, 0.100),
        (0.450, 0.085, 0.100), (0.500, 0.070, 0.085), (0.530, 0.045, 0.055),
        (0.545, 0.000, 0.000),
    ])  # fmt: skip
    a = PchipInterpolator(knots[:, 0], knots[:, 1])(ys)
    b = PchipInterpolator(knots[:, 0], knots[:, 2])(ys)
    tangents = np.gradient(centers, axis=0)
    poles = (np.array([0.0, y0, 0.02]), np.array([0.005, y1, 0.03]))
    verts, faces = _sweep(centers, tangents, np.array([1.0, 0, 0]), a, b, poles, n)
    return _Tube(verts, faces, centers, n, joint_rings, chain, first_part=0)


def _arm(side: int, rings: int, n: int) -> _Tube:
    collar, shoulder, elbow, wrist, hand = ((13, 16, 18, 20, 22), (14, 17, 19, 21, 23))[side]
    j = REST_JOINTS
    out = np.sign(j[shoulder, 0])
    points = np.array([
        j[collar] - [out * 0.03, 0, 0], j[collar], j[shoulder], j[elbow], j[wrist], j[hand],
        j[hand] + [out * FINGER_LENGTH, -0.005, 0],
    ])  # fmt: skip
    profile = [
        (0.00, 0.000, 0.000),
        (0.02, 0.040, 0.040),
        (0.05, 0.050, 0.050),
        (0.14, 0.056, 0.056),
        (0.30, 0.046, 0.046),
        (0.45, 0.037, 0.039),
        (0.60, 0.034, 0.036),
        (0.76, 0.022, 0.030),
        (0.82, 0.018, 0.042),
        (0.90, 0.015, 0.042),
        (0.97, 0.012, 0.034),
        (1.00, 0.000, 0.000),
    ]  # (fraction of length, half-thickness along y, half-width along z)
    joints_at = {collar: 1, shoulder: 2, elbow: 3, wrist: 4, hand: 5}
    return _polyline_tube(
        points,
        joints_at,
        profile,
        np.array([0, 1.0, 0]),
        rings,
        n,
        first_part=collar,
    )


def _leg(side: int, rings: int, n: int) -> _Tube:
    hip, knee, ankle = ((1, 4, 7), (2, 5, 8))[side]
    j = REST_JOINTS
    points = np.array([j[hip] + [0, 0.08, 0], j[hip], j[knee], j[ankle], j[ankle] + [0, -0.045, 0]])
    profile = [
        (0.00, 0.000, 0.000),
        (0.03, 0.060, 0.065),
        (0.08, 0.080, 0.086),
        (0.13, 0.074, 0.082),
        (0.25, 0.078, 0.084),
        (0.42, 0.058, 0.060),
        (0.50, 0.054, 0.056),
        (0.62, 0.054, 0.062),
        (0.82, 0.040, 0.042),
        (0.93, 0.036, 0.036),
        (0.98, 0.025, 0.025),
        (1.00, 0.000, 0.000),
    ]  # (fraction of length, half-width along x, half-depth along z)
    return _polyline_tube(
        points,
        {hip: 1, knee: 2, ankle: 3},
        profile,
        np.array([1.0, 0, 0]),
        rings,
        n,
        first_part=hip,
    )


def _foot(side: int, rings: int, n: int) -> _Tube:
    ankle, foot = ((7, 10), (8, 11))[side]
    j = REST_JOINTS
    points = np.array([
        [j[ankle, 0], -1.125, -0.075], [j[ankle, 0] + 0.005 * np.sign(j[ankle, 0]), -1.130, 0.0],
        j[foot], j[foot] + [0.005 * np.sign(j[foot, 0]), -0.006, TOE_LENGTH],
    ])  # fmt: skip
    profile = [
        (0.00, 0.000, 0.000),
        (0.06, 0.028, 0.032),
        (0.25, 0.040, 0.045),
        (0.70, 0.046, 0.026),
        (0.90, 0.036, 0.018),
        (1.00, 0.000, 0.000),
    ]  # (fraction of length, half-width along x, half-height along y)
    return _polyline_tube(
        points, {foot: 2}, profile, np.array([1.0, 0, 0]), rings, n, first_part=ankle
    )


def _winding_number(points: np.ndarray, verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Generalised winding number of points w.r.t. a closed mesh: ~1 inside, ~0 outside."""
    tri = verts[faces][None] - points[:, None, None]  # (P, F, 3, 3)
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    det = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    den = (
        la * lb * lc
        + np.einsum("pfi,pfi->pf", a, b) * lc
        + np.einsum("pfi,pfi->pf", b, c) * la
        + np.einsum("pfi,pfi->pf", c, a) * lb
    )
    return np.arctan2(det, den).sum(-1) / (2 * np.pi)


def _nearest_face(tube: _Tube, point: np.ndarray) -> int:
    centroids = tube.verts[tube.faces].mean(1)
    return int(np.argmin(np.linalg.norm(centroids - point, axis=1)))


def _prism(abc: np.ndarray, def_: np.ndarray) -> np.ndarray:
    """Six triangles joining the holes left by removing outward triangles abc and def_.

    Each hole edge is traversed in the direction of its removed triangle, the opposite of the
    face that remains beside it, so the joined surface stays consistently oriented.
    """
    a, b, c = abc
    d, e, f = def_
    quads = ((a, b, e, f), (b, c, d, e), (c, a, f, d))
    return np.array([(p, q, r) for p, q, r, _ in quads] + [(p, r, s) for p, _, r, s in quads])


@dataclass
class StandinModel:
    """Arrays of the stand-in, named as in SMPL's files."""

    v_template: np.ndarray  # (6890, 3)
    f: np.ndarray  # (13776, 3)
    weights: np.ndarray  # (6890, 24)
    shapedirs: np.ndarray  # (6890, 3, 10)
    posedirs: np.ndarray  # (6890, 3, 207)
    J_regressor: np.ndarray  # (24, 6890), rows sum to 1
    J_regressor_h36m: np.ndarray  # (17, 6890), rows sum to 1
    J_regressor_extra: np.ndarray  # (9, 6890), rows sum to 1, pare.body.joints.EXTRA_9 order
    part_labels: np.ndarray  # (6890,), SMPL joint index 0..23 of the part each vertex belongs to
    kintree_table: np.ndarray  # (2, 24), root parent stored as 2**32 - 1 like SMPL


def generate() -> StandinModel:
    """Build the neutral stand-in (deterministic)."""
    # Ring counts chosen so the seven tubes hold exactly 6890 vertices: sum(rings * n + 2).
    tubes = [
        _torso(rings=57, n=44),
        _arm(0, rings=38, n=24), _arm(1, rings=38, n=24),
        _leg(0, rings=38, n=28), _leg(1, rings=38, n=28),
        _foot(0, rings=13, n=16), _foot(1, rings=13, n=16),
    ]  # fmt: skip
    offsets = np.cumsum([0] + [len(t.verts) for t in tubes])
    if offsets[-1] != NUM_VERTICES:
        raise AssertionError(f"stand-in has {offsets[-1]} vertices, expected {NUM_VERTICES}")
    verts = np.concatenate([t.verts for t in tubes])
    faces = [t.faces + o for t, o in zip(tubes, offsets[:-1], strict=True)]

    # Bridges: (tube A, point near A's cap inside B, tube B, point on B's surface inside A).
    j = REST_JOINTS
    bridges = []
    for arm, collar, shoulder in ((1, 13, 16), (2, 14, 17)):
        inward = -np.sign(j[shoulder, 0])
        bridges.append(
            (arm, j[collar] + [inward * 0.03, 0, 0], 0, j[shoulder] + [inward * 0.01, -0.01, 0])
        )
    for leg, hip in ((3, 1), (4, 2)):
        bridges.append((leg, j[hip] + [0, 0.08, 0], 0, [j[hip, 0], -0.37, j[hip, 2]]))
    for foot, leg, ankle in ((5, 3, 7), (6, 4, 8)):
        bridges.append((leg, j[ankle] + [0, -0.045, 0], foot, j[ankle] + [0, -0.012, 0.012]))
    removed: list[set[int]] = [set() for _ in tubes]
    prisms = []
    for ia, pa, ib, pb in bridges:
        fa = _nearest_face(tubes[ia], np.asarray(pa, float))
        fb = _nearest_face(tubes[ib], np.asarray(pb, float))
        # Each removed triangle must lie inside the other tube, so the prism stays hidden.
        for inner, outer, face in ((tubes[ib], tubes[ia], fa), (tubes[ia], tubes[ib], fb)):
            w = _winding_number(outer.verts[outer.faces[face]], inner.verts, inner.faces)
            if np.any(w < 0.5):
                raise AssertionError("a stand-in bridge would be visible; move its anchor points")
        if fa in removed[ia] or fb in removed[ib]:
            raise AssertionError("two stand-in bridges share a face")
        removed[ia].add(fa)
        removed[ib].add(fb)
        prisms.append(_prism(faces[ia][fa], faces[ib][fb]))
    kept = [np.delete(f, sorted(r), axis=0) for f, r in zip(faces, removed, strict=True)]
    faces = np.concatenate(kept + prisms)
    if len(faces) != NUM_FACES:
        raise AssertionError(f"stand-in has {len(faces)} faces, expected {NUM_FACES}")
    return _finish(verts, faces, tubes, offsets)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _ring_parameters(tube: _Tube) -> np.ndarray:
    """Arc length of every vertex's ring along the tube axis (poles take the end values)."""
    s_ring = np.concatenate(
        [[0.0], np.cumsum(np.linalg.norm(np.diff(tube.centers, axis=0), axis=1))]
    )
    per_vertex = np.repeat(s_ring, tube.ring_size)
    return np.concatenate([[s_ring[0] - 1e-3], per_vertex, [s_ring[-1] + 1e-3]])


def _skinning(tube: _Tube) -> tuple[np.ndarray, np.ndarray]:
    """Part label and skinning weights (V_tube, 24) from the position along the tube's chain.

    The vertices between joint k and the next joint of the chain belong to part k (SMPL's
    convention: a part moves with the joint at its proximal end). Weights blend smoothly across
    a window around each joint that is at most 40% of the neighbouring segments.
    """
    chain, first = tube.chain, tube.first_part
    s = _ring_parameters(tube)
    s_ring = s[1 + tube.ring_size * np.arange(len(tube.centers))]
    s_joint = np.array([s_ring[tube.joint_rings[k]] for k in chain])
    parts = (first, *chain) if chain[0] != first else chain
    bounds = s_joint if chain[0] != first else s_joint[1:]
    label = np.array(parts)[np.searchsorted(bounds, s, side="right")]
    weights = np.zeros((len(s), 24))
    weights[np.arange(len(s)), label] = 1.0
    edges = np.concatenate([[s[0]], bounds, [s[-1]]])
    for i, sb in enumerate(bounds):
        h = 0.4 * min(sb - edges[i], edges[i + 2] - sb, 0.125)
        t = _smoothstep((s - sb + h) / (2 * h))[:, None]
        near = np.abs(s - sb) < h
        below, above = parts[i], parts[i + 1]
        weights[near] = 0
        weights[near, below] = 1 - t[near, 0]
        weights[near, above] = t[near, 0]
    return label, weights


def _finish(
    verts: np.ndarray, faces: np.ndarray, tubes: list[_Tube], offsets: np.ndarray
) -> StandinModel:
    n_v = len(verts)
    labels = np.zeros(n_v, np.int64)
    weights = np.zeros((n_v, 24))
    centre = np.zeros((n_v, 3))  # axis point each vertex is swept around
    J_reg = np.zeros((24, n_v))
    for tube, off in zip(tubes, offsets[:-1], strict=True):
        sl = slice(off, off + len(tube.verts))
        labels[sl], weights[sl] = _skinning(tube)
        centre[sl] = np.concatenate(
            [tube.centers[:1], np.repeat(tube.centers, tube.ring_size, 0), tube.centers[-1:]]
        )
        for joint, ring in tube.joint_rings.items():
            J_reg[joint, off + tube.ring_vertices(ring)] = 1.0 / tube.ring_size

    # Torso refinements: trapezius region moves with the collars, buttocks partly with the thighs.
    torso = slice(0, len(tubes[0].verts))
    x, y = verts[torso, 0], verts[torso, 1]
    w_collar = _smoothstep((np.abs(x) - 0.07) / 0.06) * _smoothstep((y - 0.15) / 0.05)
    w_collar *= y < REST_JOINTS[12, 1]
    w_thigh = 0.5 * _smoothstep((-0.26 - y) / 0.1) * _smoothstep(np.abs(x) / 0.1)
    side_collar = np.where(x > 0, 13, 14)
    side_thigh = np.where(x > 0, 1, 2)
    w = weights[torso] * (1 - w_collar - w_thigh)[:, None]
    idx = np.arange(len(x))
    w[idx, side_collar] += w_collar
    w[idx, side_thigh] += w_thigh
    weights[torso] = w
    collar_part = w_collar > 0.5
    labels[np.arange(n_v)[torso][collar_part]] = side_collar[collar_part]

    radial = verts - centre
    radial /= np.maximum(np.linalg.norm(radial, axis=1, keepdims=True), 1e-9)
    shapedirs = _shape_directions(verts, radial, weights, labels)
    posedirs = _pose_directions(verts, radial)
    special = _special_vertices(verts, tubes, offsets)

    # Permute so smplx's extra-joint vertex ids point at the matching anatomy.
    perm = np.full(n_v, -1)
    for target, old in special.items():
        perm[target] = old
    rest_old = np.setdiff1d(np.arange(n_v), list(special.values()))
    perm[perm < 0] = rest_old
    inverse = np.empty(n_v, np.int64)
    inverse[perm] = np.arange(n_v)

    head_top = np.zeros(n_v)
    top_ring = tubes[0].ring_vertices(len(tubes[0].centers) - 1)
    head_top[top_ring] = 0.5 / len(top_ring)
    head_top[len(tubes[0].verts) - 1] = 0.5
    nose = np.zeros(n_v)
    nose[special[332]] = 1.0
    h36m = np.stack([
        0.5 * (J_reg[1] + J_reg[2]), J_reg[1], J_reg[4], J_reg[7], J_reg[2], J_reg[5], J_reg[8],
        0.5 * (J_reg[3] + J_reg[6]), J_reg[12], 0.5 * (J_reg[15] + nose), head_top,
        J_reg[16], J_reg[18], J_reg[20], J_reg[17], J_reg[19], J_reg[21],
    ])  # fmt: skip
    # SPIN's J_regressor_extra rows (EXTRA_9 order), placed where the annotations they stand for
    # sit on a body: LSP hips a little below and outside SMPL's hip joints (towards the greater
    # trochanter), the LSP neck between SMPL's neck and head joints, MPII's pelvis between the
    # hips, MPII's thorax at the top of the sternum between the collars, and H36M's spine, jaw
    # and head where this file's H36M regressor puts its spine, neck/nose and head top.
    lsp_hip = [0.85 * J_reg[h] + 0.15 * J_reg[k] for h, k in ((2, 5), (1, 4))]
    extra = np.stack([
        *lsp_hip, 0.5 * (J_reg[12] + J_reg[15]), head_top, 0.5 * (J_reg[1] + J_reg[2]),
        0.5 * J_reg[12] + 0.25 * (J_reg[13] + J_reg[14]), h36m[7], h36m[9],
        0.5 * (head_top + J_reg[15]),
    ])  # fmt: skip

    kintree = np.array([SMPL_PARENTS, range(24)], dtype=np.int64)
    kintree[0, 0] = 2**32 - 1
    return StandinModel(
        v_template=verts[perm],
        f=inverse[faces].astype(np.uint32),
        weights=weights[perm],
        shapedirs=shapedirs[perm],
        posedirs=posedirs[perm],
        J_regressor=J_reg[:, perm],
        J_regressor_h36m=h36m[:, perm],
        J_regressor_extra=extra[:, perm],
        part_labels=labels[perm],
        kintree_table=kintree,
    )


def _shape_directions(
    verts: np.ndarray, radial: np.ndarray, weights: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """Ten shape directions in metres per unit beta, loosely ordered like SMPL's by variance."""
    j = REST_JOINTS
    x, y = verts[:, 0], verts[:, 1]
    arm = weights[:, [13, 14, 16, 17, 18, 19, 20, 21, 22, 23]].sum(1)
    leg = weights[:, [1, 2, 4, 5, 7, 8, 10, 11]].sum(1)
    limb = np.isin(labels, [1, 2, 4, 5, 16, 17, 18, 19])
    head = np.isin(labels, [15]) + 0.5 * np.isin(labels, [12])
    belly = np.exp(-(((y + 0.05) / 0.12) ** 2)) * np.clip(radial[:, 2], 0, None) * (labels < 10)
    side = np.sign(x)
    zeros = np.zeros_like(x)
    dirs = [
        0.06 * (verts - j[0]),  # overall size
        0.012 * radial * (1 + belly)[:, None],  # girth
        np.stack([zeros, 0.05 * (y - j[0, 1]), zeros], 1),  # height at constant girth
        np.stack([0.025 * side * arm, zeros, zeros], 1),  # shoulder width
        np.stack(
            [0.02 * side * leg + 0.08 * x * (y < j[0, 1]) * (1 - arm), zeros, zeros], 1
        ),  # hips
        np.stack([zeros, 0.07 * np.minimum(0.0, y - j[1, 1]), zeros], 1),  # leg length
        np.stack(
            [0.07 * side * np.maximum(0.0, np.abs(x) - abs(j[16, 0])), zeros, zeros], 1
        ),  # arms
        0.025 * radial * belly[:, None],  # belly
        0.08 * (verts - [0.005, 0.43, 0.03]) * head[:, None],  # head size
        0.01 * radial * limb[:, None],  # limb muscle
    ]
    return np.stack(dirs, axis=2)  # (V, 3, 10)


def _pose_directions(verts: np.ndarray, radial: np.ndarray) -> np.ndarray:
    """Pose correctives (V, 3, 207): flesh bulges outward near a joint as it bends.

    SMPL's pose feature is vec(R_k - I) for joints 1..23; its diagonal sums to
    2 (cos(angle) - 1), which is 0 at rest and -2 at a 90 degree bend.
    """
    posedirs = np.zeros((len(verts), 3, 23 * 9))
    for k in range(1, 24):
        near = np.exp(-np.sum((verts - REST_JOINTS[k]) ** 2, axis=1) / (2 * 0.05**2))
        for e in (0, 4, 8):
            posedirs[:, :, (k - 1) * 9 + e] = -0.005 * near[:, None] * radial
    return posedirs


def _special_vertices(verts: np.ndarray, tubes: list[_Tube], offsets: np.ndarray) -> dict[int, int]:
    """Vertex for each smplx extra-joint id (nose, eyes, ears, toes, heels, fingertips)."""
    j = REST_JOINTS
    targets: dict[str, tuple[int, np.ndarray]] = {
        "nose": (0, np.array([0.005, 0.41, 0.3])),
        "right_eye": (0, np.array([-0.035, 0.445, 0.12])),
        "left_eye": (0, np.array([0.035, 0.445, 0.12])),
        "right_ear": (0, np.array([-0.3, 0.42, 0.03])),
        "left_ear": (0, np.array([0.3, 0.42, 0.03])),
    }
    for side, (ankle, foot, tube) in (("left", (7, 10, 5)), ("right", (8, 11, 6))):
        out = np.sign(j[foot, 0])
        tip = j[foot] + [0, 0, TOE_LENGTH]
        targets[f"{side}_big_toe"] = (tube, tip + [-out * 0.03, 0, -0.01])
        targets[f"{side}_small_toe"] = (tube, tip + [out * 0.04, 0, -0.035])
        targets[f"{side}_heel"] = (tube, np.array([j[ankle, 0], -1.16, -0.10]))
    for side, (wrist, hand, tube) in (("left", (20, 22, 1)), ("right", (21, 23, 2))):
        out = np.sign(j[hand, 0])
        tip = j[hand] + [out * FINGER_LENGTH, 0, 0]
        targets[f"{side}_thumb"] = (tube, j[wrist] + [out * 0.05, -0.01, 0.08])
        for name, dz in (("index", 0.03), ("middle", 0.01), ("ring", -0.01), ("pinky", -0.03)):
            targets[f"{side}_{name}"] = (tube, tip + [-out * 0.015, 0, dz])
    chosen: dict[int, int] = {}
    for name, vid in SMPLX_EXTRA_VERTEX_JOINTS:
        tube, point = targets[name]
        local = tubes[tube].verts
        chosen[vid] = int(offsets[tube] + np.argmin(np.linalg.norm(local - point, axis=1)))
    if len(set(chosen.values())) != len(chosen):
        raise AssertionError("two smplx extra joints picked the same stand-in vertex")
    return chosen
