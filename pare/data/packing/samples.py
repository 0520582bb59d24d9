"""Build one training sample (one person in one frame): crop, keypoints, SMPL targets, part map.

A sample is a dict of encoded members, as stored in a shard:

- ``jpg``: a square crop around the person, ``CROP_CONTEXT`` x the person box, longest side at
  most ``CROP_MAX`` px and never upscaled (so augmentation has room to rotate and rescale);
- ``npz`` (numeric only, no pickle): see :data:`NPZ_FIELDS`;
- ``png``: the 25-class part-label map of the crop at half its resolution (0 background,
  1..24 SMPL part + 1), rendered from the ground-truth mesh; absent when the sample has no SMPL;
- ``json``: provenance (dataset, split, sequence or image, frame, person).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
import simplejpeg
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from pare.body.joints import UNIFIED
from pare.geometry import crop_matrix
from pare.render import Camera, Mesh, render

CROP_MAX = 320
CROP_CONTEXT = 2.0
BOX_EXTENT = 1.2  # SPIN: box side = 1.2 x the keypoints' extent

# name -> (shape, dtype) of every array in a sample's npz.
NPZ_FIELDS = {
    "keypoints_2d": ((len(UNIFIED), 3), np.float32),  # crop pixels x, y, confidence (UNIFIED order)
    "joints_3d": ((24, 3), np.float32),  # SMPL joints, camera frame, metres
    "h36m_3d": ((17, 3), np.float32),  # H36M-regressed joints, camera frame, metres
    "pose": ((72,), np.float32),  # SMPL axis-angle, global orientation in the camera frame
    "betas": ((10,), np.float32),
    "gender": ((), np.int64),  # 0 neutral, 1 male, 2 female
    "has_smpl": ((), np.bool_),
    "has_joints_3d": ((), np.bool_),
    "is_pseudo_gt": ((), np.bool_),  # SMPL from a fit (EFT), not from measurements
    "intrinsics": ((3, 3), np.float32),  # camera intrinsics for the crop's pixels (nan if unknown)
    "crop_box": ((4,), np.float32),  # x0, y0, x1, y1 of the crop in the original image
    "box_center": ((2,), np.float32),  # person box in the original image ("200 px" convention)
    "box_scale": ((), np.float32),
    "head_size": ((), np.float32),  # MPII: 0.6 x head-box diagonal in crop pixels (PCKh); else 0
}


class SampleError(ValueError):
    """A sample that cannot be built (e.g. a corrupt image); the packer skips and counts it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self):
        # Raised in packing workers: it must unpickle in the parent, or the pool's result
        # thread dies and the packer hangs.
        return (SampleError, (self.reason, self.detail))


def box_from_keypoints(keypoints: np.ndarray) -> tuple[np.ndarray, float] | None:
    """SPIN's person box from confident keypoints: centre of their extent, scale = 1.2 x max
    side / 200. None when fewer than two keypoints are confident."""
    ok = keypoints[:, 2] > 0
    if ok.sum() < 2:
        return None
    lo, hi = keypoints[ok, :2].min(0), keypoints[ok, :2].max(0)
    side = float(max(hi - lo))
    if side <= 0:
        return None
    return (lo + hi) / 2, BOX_EXTENT * side / 200.0


@dataclass
class Crop:
    matrix: np.ndarray  # (3, 3) image pixels -> crop pixels
    size: int  # output side in pixels
    box: np.ndarray  # (4,) crop square in the image


def crop_for(center: np.ndarray, scale: float) -> Crop:
    side = CROP_CONTEXT * 200.0 * scale
    size = int(max(8, min(CROP_MAX, math.floor(side))))  # never upscale
    m = crop_matrix(
        torch.from_numpy(np.asarray(center, np.float64)[None]),
        torch.tensor([CROP_CONTEXT * scale], dtype=torch.float64),
        size,
    )
    half = side / 2
    return Crop(
        m[0].numpy(),
        size,
        np.array([center[0] - half, center[1] - half, center[0] + half, center[1] + half]),
    )


def decode_crop(jpeg: bytes, crop: Crop, what: str) -> np.ndarray:
    """Decode (at a reduced DCT scale when the crop shrinks a lot: faster and anti-aliased) and
    warp the crop out of the image. Raises SampleError for an unreadable JPEG."""
    try:
        height, width = simplejpeg.decode_jpeg_header(jpeg)[:2]
        shrink = (crop.box[2] - crop.box[0]) / crop.size
        factor = 1
        while factor < 8 and shrink >= 2 * factor:
            factor *= 2
        image = simplejpeg.decode_jpeg(
            jpeg,
            colorspace="RGB",
            fastdct=False,
            fastupsample=False,
            min_width=math.ceil(width / factor),
            min_height=math.ceil(height / factor),
        )
    except (ValueError, RuntimeError, TypeError) as e:
        raise SampleError("corrupt_image", f"{what}: {e}") from None
    sx, sy = image.shape[1] / width, image.shape[0] / height
    # crop pixels -> decoded-image pixels: undo the crop matrix, then the decode scaling.
    inverse = np.diag([sx, sy, 1.0]) @ np.linalg.inv(crop.matrix)
    pil = Image.fromarray(image).transform(
        (crop.size, crop.size),
        Image.Transform.AFFINE,
        data=tuple(inverse[:2].reshape(-1)),
        resample=Image.Resampling.BILINEAR,
    )
    return np.asarray(pil)


def transform_keypoints(keypoints: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(J, 3) x, y, confidence in image pixels -> crop pixels; absent joints stay all zero."""
    out = keypoints.copy()
    out[:, :2] = keypoints[:, :2] @ matrix[:2, :2].T + matrix[:2, 2]
    out[keypoints[:, 2] <= 0] = 0
    return out


def encode_png(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    checked = {}
    for name, (shape, dtype) in NPZ_FIELDS.items():
        value = np.asarray(arrays[name], dtype=dtype)
        if value.shape != shape:
            raise AssertionError(f"npz field {name} has shape {value.shape}, expected {shape}")
        checked[name] = value
    np.savez(buf, **checked)
    return buf.getvalue()


def camera_frame_pose(pose: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """SMPL pose (72,) with the world global orientation turned into the camera frame."""
    out = pose.copy()
    out[:3] = (Rotation.from_matrix(rotation) * Rotation.from_rotvec(pose[:3])).as_rotvec()
    return out


def label_size(crop_size: int) -> int:
    """Side of the stored part map: half the crop. The person box is then at least 56 px wide
    in it whenever the crop is full size, enough for PARE's 56 x 56 supervision, and the PNG
    decodes four times faster than at crop resolution."""
    return max(1, (crop_size + 1) // 2)


def part_map(
    vertices_cam: np.ndarray,
    faces: np.ndarray,
    labels: np.ndarray,
    intrinsics_crop: np.ndarray,
    crop_size: int,
) -> np.ndarray:
    """Render the 25-class part labels of a camera-frame mesh at :func:`label_size` of the crop."""
    size = label_size(crop_size)
    k = (
        np.diag([size / crop_size, size / crop_size, 1.0]) @ intrinsics_crop
    )  # same view, fewer pixels
    return render(
        [Mesh(vertices_cam, faces, labels)], Camera(k, np.eye(3), np.zeros(3), size, size)
    ).parts


def provenance(**fields) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()
