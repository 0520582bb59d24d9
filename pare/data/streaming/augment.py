"""PARE's training augmentation on a decoded shard sample, and the crop to the model input.

Everything that describes the person moves together: image, 2D keypoints, part labels, SMPL
pose, 3D joints and crop intrinsics. One affine map (scale, rotation, translation) takes the
stored crop to the model input; a horizontal flip mirrors the result and swaps left and right.

Sizes: the stored crop (from the shard) is square with side ``stored_size``, the person box
(side stored_size / 2) centred in it; the model input has side ``crop_size`` (S) and the part
labels P = S / 2 (:func:`pare.config.part_label_size`).

Rotation is counter-clockwise on screen by ``rotation_deg``; with image y pointing down this is a
rotation of the camera-frame body about the optical axis by the negative angle.

After the crop and the flip come the steps that change pixels only, in PARE's order
(pare/dataset/base_dataset.py, ``BaseDataset.rgb_processing``): pasted objects, motion blur, the
per-channel colour scale; then the procedural patches, the no-download alternative to objects.
Every random choice is drawn up front into :class:`AugmentParams`, so the same parameters give
the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pare.body.joints import (
    GT24_FLIP,
    H36M_FLIP,
    KEYPOINTS49_FLIP,
    KEYPOINTS_49,
    OPENPOSE_PREFIX,
    SMPL_FLIP,
)
from pare.config import occluder_files, part_label_size

# Extreme crops (as in PARE/EFT's training): the box around a subset of the KEYPOINTS_49 slots
# (OpenPose-style and ground-truth slots alike, by body region).
_HEAD_SHOULDERS = {
    "nose", "neck", "right_eye", "left_eye", "right_ear", "left_ear", "head_top", "head", "jaw",
    "right_shoulder", "left_shoulder", "thorax",
}  # fmt: skip


def _is_lower_body(name: str) -> bool:
    return name.endswith(("hip", "knee", "ankle", "toe", "heel")) or name == "pelvis"


_BASE_NAMES = tuple(n.removeprefix(OPENPOSE_PREFIX) for n in KEYPOINTS_49)
EXTREME_CROPS = {
    "upper_body": tuple(i for i, n in enumerate(_BASE_NAMES) if not _is_lower_body(n)),
    "head_shoulders": tuple(i for i, n in enumerate(_BASE_NAMES) if n in _HEAD_SHOULDERS),
    "lower_body": tuple(i for i, n in enumerate(_BASE_NAMES) if _is_lower_body(n)),
}

# Part label l (1..24, 0 background) after a flip: the mirrored part.
PART_LABEL_FLIP = np.concatenate([[0], SMPL_FLIP + 1]).astype(np.uint8)

# PARE's synthetic occlusion (pare/dataset/occlusion.py, occlude_with_objects, after Sárándi et
# al.'s synthetic-occlusion): 1-7 objects per crop (np.random.randint(1, 8)), each scaled by
# U(0.2, 1.0) x (crop side / 256) and centred uniformly over the crop.
OBJECTS_PER_CROP = (1, 7)
OBJECT_SCALE = (0.2, 1.0)
OBJECT_SCALE_REFERENCE = 256  # PARE: im_scale_factor = min(width, height) / 256
# PARE's A.MotionBlur(p=0.5) under albumentations 0.4.6: blur_limit=7, kernel sides 3, 5 or 7.
MOTION_BLUR_SIZES = (3, 5, 7)

if TYPE_CHECKING:
    from pare.config import AugmentConfig


@dataclass(frozen=True)
class PastedObject:
    """One occluder of a draw: which cut-out, its size and where its centre goes."""

    path: str  # an RGBA PNG of data.augment.occluders
    scale: float  # PARE's U(0.2, 1.0); the cut-out is resized by scale * crop side / 256
    center: tuple[float, float]  # x, y in fractions of the crop side


@dataclass
class AugmentParams:
    """One draw of the augmentation (identity by default)."""

    scale: float = 1.0  # >1 zooms out (the box covers less of the output)
    rotation_deg: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # box centre offset, in box sides
    flip: bool = False
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    occlusion: tuple[float, float, float, float] | None = None  # x, y, w, h in output fractions
    extreme: str | None = None  # crop to a body region: one of EXTREME_CROPS
    objects: tuple[PastedObject, ...] = ()  # pasted in order, later ones on top
    # Motion-blur kernel: side k, then a line from (x0, y0) to (x1, y1) in 0..k-1.
    motion_blur: tuple[int, int, int, int, int] | None = None


def draw_params(rng: np.random.Generator, cfg: AugmentConfig) -> AugmentParams:
    """Sample augmentation parameters from an :class:`pare.config.AugmentConfig`.

    Settings that are off draw nothing, so switching one on leaves the draws before it as
    they were. Raises ConfigError when ``cfg.occluders`` is set but missing or empty."""
    scale = float(np.clip(rng.normal(1.0, cfg.scale_std), cfg.scale_min, cfg.scale_max))
    rotation = 0.0
    if rng.random() < cfg.rotation_prob:
        rotation = float(
            np.clip(
                rng.normal(0.0, cfg.rotation_std_deg), -cfg.rotation_max_deg, cfg.rotation_max_deg
            )
        )
    shift = tuple(float(v) for v in rng.uniform(-cfg.translation, cfg.translation, 2))
    color = tuple(float(v) for v in rng.uniform(1 - cfg.color_scale, 1 + cfg.color_scale, 3))
    occlusion = None
    if rng.random() < cfg.occlusion_prob:
        w, h = rng.uniform(0.15, 0.45, 2)
        occlusion = (float(rng.uniform(0, 1 - w)), float(rng.uniform(0, 1 - h)), float(w), float(h))
    flip = bool(rng.random() < cfg.flip_prob)
    extreme = None
    if cfg.extreme_crop_prob > 0 and rng.random() < cfg.extreme_crop_prob:
        extreme = list(EXTREME_CROPS)[int(rng.integers(len(EXTREME_CROPS)))]
    objects = ()
    if cfg.occluders:
        files = _occluder_paths(cfg.occluders)
        objects = tuple(
            PastedObject(
                files[int(rng.integers(len(files)))],
                float(rng.uniform(*OBJECT_SCALE)),
                (float(rng.uniform()), float(rng.uniform())),
            )
            for _ in range(int(rng.integers(OBJECTS_PER_CROP[0], OBJECTS_PER_CROP[1] + 1)))
        )
    motion_blur = None
    if cfg.motion_blur_prob > 0 and rng.random() < cfg.motion_blur_prob:
        motion_blur = _draw_motion_blur(rng)
    return AugmentParams(
        scale=scale,
        rotation_deg=rotation,
        shift=shift,
        flip=flip,
        color=color,
        occlusion=occlusion,
        extreme=extreme,
        objects=objects,
        motion_blur=motion_blur,
    )


def _draw_motion_blur(rng: np.random.Generator) -> tuple[int, int, int, int, int]:
    """albumentations 0.4.6's MotionBlur.get_params: a random line in a k x k kernel; a vertical
    one (equal x) gets two distinct y so that it is never a single pixel."""
    k = int(MOTION_BLUR_SIZES[int(rng.integers(len(MOTION_BLUR_SIZES)))])
    x0, x1 = (int(v) for v in rng.integers(0, k, 2))
    if x0 == x1:
        y0, y1 = (int(v) for v in rng.choice(k, 2, replace=False))
    else:
        y0, y1 = (int(v) for v in rng.integers(0, k, 2))
    return k, x0, y0, x1, y1


def input_matrix(
    stored_size: int, crop_size: int, params: AugmentParams, region: tuple | None = None
) -> np.ndarray:
    """(3, 3) map from stored-crop pixels to model-input pixels (before the flip). ``region``
    (cx, cy, side) replaces the person box, e.g. for an extreme crop."""
    cx0, cy0, side = (
        region if region is not None else (stored_size / 2.0, stored_size / 2.0, stored_size / 2.0)
    )
    box = side * params.scale
    cx = cx0 + params.shift[0] * side
    cy = cy0 + params.shift[1] * side
    k = crop_size / box
    theta = -math.radians(params.rotation_deg)  # y down: counter-clockwise on screen
    c, s = math.cos(theta), math.sin(theta)
    a = np.array([[k * c, -k * s], [k * s, k * c]])
    t = crop_size / 2.0 - a @ [cx, cy]
    return np.array([[a[0, 0], a[0, 1], t[0]], [a[1, 0], a[1, 1], t[1]], [0, 0, 1.0]])


def _warp(image: np.ndarray, matrix: np.ndarray, size: int, resample) -> np.ndarray:
    inverse = np.linalg.inv(matrix)
    pil = Image.fromarray(image).transform(
        (size, size), Image.Transform.AFFINE, data=tuple(inverse[:2].reshape(-1)), resample=resample
    )
    return np.asarray(pil)


def _warp_image(image: np.ndarray, matrix: np.ndarray, size: int, axis_aligned: bool) -> np.ndarray:
    """Bilinear warp; an unrotated map that stays inside the image is a plain box resize, which
    PIL does about three times faster than a general affine transform."""
    if axis_aligned:
        inverse = np.linalg.inv(matrix)
        x0, y0 = inverse[0, 2], inverse[1, 2]
        x1, y1 = x0 + inverse[0, 0] * size, y0 + inverse[1, 1] * size
        h, w = image.shape[:2]
        if 0 <= x0 and 0 <= y0 and x1 <= w and y1 <= h:
            box = (float(x0), float(y0), float(x1), float(y1))
            return np.asarray(
                Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, box=box)
            )
    return _warp(image, matrix, size, Image.Resampling.BILINEAR)


def _extreme_region(keypoints: np.ndarray, name: str, stored_size: int) -> tuple | None:
    """(cx, cy, side) around the named body region's present keypoints, or None (no change)."""
    kp = keypoints[list(EXTREME_CROPS[name])]
    kp = kp[kp[:, 2] > 0, :2]
    if len(kp) < 2:
        return None
    lo, hi = kp.min(0), kp.max(0)
    side = float(max(1.3 * max(hi - lo), 0.25 * stored_size / 2.0))
    return float((lo[0] + hi[0]) / 2), float((lo[1] + hi[1]) / 2), side


def turn_about_z(rotvec: np.ndarray, angle: float) -> np.ndarray:
    """Axis-angle of R_z(angle) @ R(rotvec), via unit quaternions (exact at any angle, and far
    cheaper per sample than building rotation objects)."""
    theta = float(np.linalg.norm(rotvec))
    half = 0.5 * theta
    w1, v1 = math.cos(half), rotvec * (math.sin(half) / theta if theta > 1e-12 else 0.5)
    w2, z2 = math.cos(0.5 * angle), math.sin(0.5 * angle)
    # (w2, 0, 0, z2) * (w1, v1)
    w = w2 * w1 - z2 * v1[2]
    v = np.array([w2 * v1[0] - z2 * v1[1], w2 * v1[1] + z2 * v1[0], w2 * v1[2] + z2 * w1])
    if w < 0:
        w, v = -w, -v
    s = float(np.linalg.norm(v))
    return v * (2.0 * math.atan2(s, w) / s) if s > 1e-12 else 2.0 * v


def flip_pose(pose: np.ndarray) -> np.ndarray:
    """SMPL axis-angle (72,) of the mirrored body: swap sides, negate the y and z components."""
    p = pose.reshape(24, 3)[SMPL_FLIP].copy()
    p[:, 1:] *= -1
    return p.reshape(72)


def augment(sample: dict, params: AugmentParams, crop_size: int = 224) -> dict:
    """Apply ``params`` to a decoded sample (see :func:`pare.data.streaming.stream.decode_sample`).

    Returns new arrays: ``image`` (S, S, 3) uint8 for S = ``crop_size``, ``part_labels`` (P, P)
    uint8 for P = S / 2 (:func:`pare.config.part_label_size`), ``keypoints_2d`` in input pixels, and the SMPL, 3D joints
    and intrinsics moved accordingly.
    """
    labels = part_label_size(crop_size)
    image = sample["image"]
    region = (
        _extreme_region(sample["keypoints_2d"], params.extreme, image.shape[0])
        if params.extreme
        else None
    )
    m = input_matrix(image.shape[0], crop_size, params, region)
    out = dict(sample)
    out["image"] = _warp_image(image, m, crop_size, params.rotation_deg == 0)
    if sample.get("parts") is not None:
        # Stored part map -> stored crop -> input -> labels: the part map is stored at a lower
        # resolution than its crop.
        up = image.shape[0] / sample["parts"].shape[0]
        down = labels / crop_size
        label_m = np.diag([down, down, 1.0]) @ m @ np.diag([up, up, 1.0])
        out["part_labels"] = _warp(sample["parts"], label_m, labels, Image.Resampling.NEAREST)
    else:
        out["part_labels"] = np.zeros((labels, labels), np.uint8)
    kp = sample["keypoints_2d"].copy()
    present = kp[:, 2] > 0
    kp[:, :2] = kp[:, :2] @ m[:2, :2].T + m[:2, 2]
    kp[~present] = 0
    # The body turns about the optical axis with the image (the intrinsics stay a pinhole).
    psi = -math.radians(params.rotation_deg)
    rz = np.array(
        [[math.cos(psi), -math.sin(psi), 0.0], [math.sin(psi), math.cos(psi), 0.0], [0.0, 0.0, 1.0]]
    )
    pose = sample["pose"].copy()
    pose[:3] = turn_about_z(pose[:3], psi)
    joints, h36m = sample["joints_3d"] @ rz.T, sample["h36m_3d"] @ rz.T
    # Intrinsics of the input: the scale and shift of m (its rotation went into the body).
    k = sample["intrinsics"]
    scale = crop_size / ((region[2] if region is not None else image.shape[0] / 2.0) * params.scale)
    centre = m[:2, :2] @ k[:2, 2] + m[:2, 2]
    intrinsics = np.array(
        [[k[0, 0] * scale, 0, centre[0]], [0, k[1, 1] * scale, centre[1]], [0, 0, 1.0]]
    )
    out.update(keypoints_2d=kp, pose=pose, joints_3d=joints, h36m_3d=h36m, intrinsics=intrinsics)
    if "head_size" in sample:  # a length: scaled by the similarity's scale
        out["head_size"] = float(sample["head_size"]) * math.sqrt(abs(np.linalg.det(m[:2, :2])))
    if params.flip:
        out = flip(out, crop_size)
    out["image"] = np.ascontiguousarray(paint(out["image"], params))
    return out


def paint(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """The steps that change pixels only, on the (S, S, 3) uint8 input crop, in PARE's order:
    pasted objects, motion blur and the colour scale; then the procedural patch."""
    if params.objects:
        image = paste_objects(image, params.objects)
    if params.motion_blur is not None or params.color != (1.0, 1.0, 1.0):
        pixels = image.astype(np.float32)
        if params.motion_blur is not None:
            pixels = motion_blur(pixels, motion_blur_kernel(*params.motion_blur))
        if params.color != (1.0, 1.0, 1.0):
            # Scaled as (S, S * 3) rows: numpy broadcasts a 3-vector about ten times slower.
            rows = pixels.reshape(pixels.shape[0], -1)
            rows *= np.tile(np.asarray(params.color, np.float32), pixels.shape[1])
        image = np.clip(pixels, 0, 255).astype(np.uint8)
    if params.occlusion is not None:
        image = occlude(image, params.occlusion)
    return image


def flip(sample: dict, size: int) -> dict:
    """Mirror an input-sized sample: image and part map (labels swap sides), keypoints (permuted,
    x -> size - x), SMPL pose, 3D joints (x -> -x) and the principal point. Its own inverse."""
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][:, ::-1])
    out["part_labels"] = np.ascontiguousarray(PART_LABEL_FLIP[sample["part_labels"][:, ::-1]])
    kp = sample["keypoints_2d"][KEYPOINTS49_FLIP].copy()
    present = kp[:, 2] > 0
    kp[present, 0] = size - kp[present, 0]
    out["keypoints_2d"] = kp
    out["pose"] = flip_pose(sample["pose"])
    out["joints_3d"] = sample["joints_3d"][GT24_FLIP] * [-1, 1, 1]
    out["h36m_3d"] = sample["h36m_3d"][H36M_FLIP] * [-1, 1, 1]
    intrinsics = sample["intrinsics"].copy()
    intrinsics[0, 2] = size - intrinsics[0, 2]
    out["intrinsics"] = intrinsics
    return out


def occlude(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Paste a random textured patch (stripes and noise from the box itself, no external data)."""
    h, w = image.shape[:2]
    x0, y0 = int(box[0] * w), int(box[1] * h)
    x1, y1 = min(w, x0 + max(1, int(box[2] * w))), min(h, y0 + max(1, int(box[3] * h)))
    seed = (x0 * 7919 + y0 * 104729 + int(image[h // 2, w // 2].sum())) % (2**32)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    base = rng.uniform(0, 255, 3)
    stripes = 0.5 + 0.5 * np.sin(xx * rng.uniform(0.1, 0.6) + yy * rng.uniform(0.1, 0.6))
    patch = base * (0.6 + 0.4 * stripes[..., None]) + rng.normal(0, 12, (y1 - y0, x1 - x0, 3))
    out = image.copy()
    out[y0:y1, x0:x1] = np.clip(patch, 0, 255).astype(np.uint8)
    return out


@lru_cache(maxsize=8)
def _occluder_paths(folder: str) -> tuple[str, ...]:
    return tuple(str(p) for p in occluder_files(folder))


@cache
def load_occluder(path: str) -> Image.Image:
    """A cut-out as an RGBX image whose fourth band is its alpha, decoded once per process: PIL
    resizes RGBX bands independently but premultiplies RGBA, which PARE's cv2.resize does not."""
    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    return Image.frombuffer("RGBX", rgba.size, rgba.tobytes(), "raw", "RGBX", 0, 1)


def paste_objects(image: np.ndarray, objects: tuple[PastedObject, ...]) -> np.ndarray:
    """Alpha-blend the cut-outs onto the (S, S, 3) uint8 crop, in order, each resized to
    round(side * scale * S / 256) and centred at its point, clipped at the crop's edges: PARE's
    resize_by_factor and paste_over (pare/dataset/occlusion.py).

    PARE resizes with cv2 (INTER_AREA to shrink, INTER_LINEAR to grow) and blends in floats;
    OpenCV is no dependency here and numpy is several times slower, so PIL does both in C. Its
    Hamming filter is the closest of PIL's to INTER_AREA over PARE's scales (a mean difference
    of 1 in 255), and the blend rounds to uint8."""
    size = image.shape[0]
    canvas = Image.fromarray(image)
    for obj in objects:
        cutout = load_occluder(obj.path)
        factor = obj.scale * size / OBJECT_SCALE_REFERENCE
        w, h = (int(v) for v in np.round(np.array(cutout.size) * factor))
        if w == 0 or h == 0:  # shrunk below a pixel (cv2 would refuse the empty size)
            continue
        resample = Image.Resampling.BILINEAR if factor > 1.0 else Image.Resampling.HAMMING
        resized = cutout.resize((w, h), resample).tobytes()
        rgba = Image.frombuffer("RGBA", (w, h), resized, "raw", "RGBA", 0, 1)
        cx, cy = (int(v) for v in np.round(np.asarray(obj.center) * size))
        canvas.paste(rgba, (cx - w // 2, cy - h // 2), rgba)  # the alpha band is the mask
    return np.asarray(canvas)


def motion_blur_kernel(size: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """(size, size) float32 kernel: the line cv2.line(kernel, (x0, y0), (x1, y1), 1) draws
    (8-connected Bresenham, from its left end), normalised to sum 1."""
    if x1 < x0:
        x0, y0, x1, y1 = x1, y1, x0, y0
    major, minor = x1 - x0, abs(y1 - y0)
    step_major, step_minor = (1, 0), (0, 1 if y1 >= y0 else -1)
    if minor > major:
        major, minor = minor, major
        step_major, step_minor = step_minor, (1, 0)
    kernel = np.zeros((size, size), np.float32)
    x, y, err = x0, y0, major - 2 * minor
    for _ in range(major + 1):
        kernel[y, x] = 1.0
        diagonal = err < 0
        err += -2 * minor + (2 * major if diagonal else 0)
        x += step_major[0] + (step_minor[0] if diagonal else 0)
        y += step_major[1] + (step_minor[1] if diagonal else 0)
    return kernel / kernel.sum()


def motion_blur(pixels: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """(H, W, C) float32 correlated with a line ``kernel`` (its taps all equal) about its
    centre, mirrored at the edges without repeating them: cv2.filter2D's defaults, which
    albumentations' MotionBlur uses. At most k taps, so a sum of shifted copies."""
    r = kernel.shape[0] // 2
    padded = np.pad(pixels, ((r, r), (r, r), (0, 0)), mode="reflect")
    h, w = pixels.shape[:2]
    rows, cols = np.nonzero(kernel)
    out = padded[rows[0] : rows[0] + h, cols[0] : cols[0] + w].copy()
    for i, j in zip(rows[1:], cols[1:], strict=True):
        out += padded[i : i + h, j : j + w]
    out *= kernel[rows[0], cols[0]]
    return out
