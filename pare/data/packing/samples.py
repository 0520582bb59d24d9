"""Build one training sample (one person in one frame): crop, keypoints, SMPL targets, part map.

A sample is a dict of encoded members, as stored in a shard:

- ``jpg``: the stored crop, a square around the person, ``STORED_CROP_CONTEXT`` x the person
  box, its side (the stored size) at most ``STORED_CROP_MAX`` px and never upscaled (so
  augmentation has room to rotate and rescale before it resamples to the network's crop size);
- ``npz`` (numeric only, no pickle): the stored fields of :data:`pare.data.fields.FIELDS`;
- ``png``: the 25-class part-label map of the stored crop at half its side (0 background,
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

from pare.data.fields import NPZ_FIELDS, nonfinite_fields
from pare.geometry import crop_matrix
from pare.render import Camera, Mesh, render

# The stored crop, not the network input: augmentation resamples it to data.crop_size. Its
# default cap keeps PARE's 224 px input from ever being upsampled from a stored crop when the
# person is large enough in the image: the input covers the box times the augmentation scale,
# at least 0.75 (PARE's scale_min), so the box needs 224 / 0.75 = 299 stored pixels, and the
# stored crop is STORED_CROP_CONTEXT = 2 boxes: 598, rounded to 600. (Packers' --stored-crop-max
# changes it; the manifest records the value.)
STORED_CROP_MAX = 600
STORED_CROP_CONTEXT = 2.0
BOX_EXTENT = 1.2  # SPIN: box side = 1.2 x the keypoints' extent


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
    """Where a stored crop comes from in the original image."""

    matrix: np.ndarray  # (3, 3) image pixels -> stored-crop pixels
    size: int  # the stored size: side of the stored crop in pixels
    box: np.ndarray  # (4,) crop square in the image


def crop_for(center: np.ndarray, scale: float, max_size: int = STORED_CROP_MAX) -> Crop:
    """The stored crop around a person box (centre in image pixels, ``scale`` = box side / 200
    px): ``STORED_CROP_CONTEXT`` boxes wide, at most ``max_size`` px and never upscaled."""
    side = STORED_CROP_CONTEXT * 200.0 * scale
    size = int(max(8, min(max_size, math.floor(side))))  # never upscale
    m = crop_matrix(
        torch.from_numpy(np.asarray(center, np.float64)[None]),
        torch.tensor([STORED_CROP_CONTEXT * scale], dtype=torch.float64),
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


def project_joints(joints: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """(J, 3) camera-frame points and (3, 3) pinhole intrinsics -> (J, 3) x, y in the
    intrinsics' pixels and confidence 1; points not in front of the camera are all zero."""
    out = np.zeros((len(joints), 3))
    front = joints[:, 2] > 1e-6
    pixels = joints[front] @ intrinsics.T
    out[front, :2] = pixels[:, :2] / pixels[:, 2:]
    out[front, 2] = 1.0
    return out


def encode_png(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_npz(arrays: dict[str, np.ndarray], what: str) -> bytes:
    """The npz member of sample ``what`` (named in errors). Raises :class:`SampleError`
    ``nonfinite_values`` naming the fields with NaN or inf (see
    :func:`pare.data.fields.nonfinite_fields`): one such sample would make every mean metric
    NaN."""
    bad = nonfinite_fields(arrays)
    if bad:
        raise SampleError("nonfinite_values", f"{what}: {', '.join(bad)}")
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


def stored_parts_size(stored_size: int) -> int:
    """Side of the stored part map: half the stored crop's. The person box is then at least
    80 px wide in it whenever the stored crop is 320 px or more, enough for PARE's 56 x 56
    heatmap supervision, and the PNG decodes four times faster than at the stored crop's side."""
    return max(1, (stored_size + 1) // 2)


def part_map(
    vertices_cam: np.ndarray,
    faces: np.ndarray,
    labels: np.ndarray,
    intrinsics_crop: np.ndarray,
    stored_size: int,
) -> np.ndarray:
    """Render the 25-class part labels of a camera-frame mesh, seen through the stored crop's
    intrinsics, at :func:`stored_parts_size` of the stored crop."""
    size = stored_parts_size(stored_size)
    k = np.diag([size / stored_size, size / stored_size, 1.0]) @ intrinsics_crop  # fewer pixels
    return render(
        [Mesh(vertices_cam, faces, labels)], Camera(k, np.eye(3), np.zeros(3), size, size)
    ).parts


def provenance(**fields) -> bytes:
    return json.dumps(fields, sort_keys=True).encode()
