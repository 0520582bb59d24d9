"""Overlays for W&B and the demo: the predicted mesh and keypoints over the input crop, next to
the ground truth (keypoints and the packed part map)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from pare.geometry import CAMERA_REFERENCE_SIZE, FOCAL_LENGTH
from pare.render import PART_COLORS, Camera, Mesh, render


def _draw_points(image: np.ndarray, points: np.ndarray, color: tuple) -> np.ndarray:
    pil = Image.fromarray(image)
    draw = ImageDraw.Draw(pil)
    for x, y in points:
        draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=color)
    return np.asarray(pil)


def overlay(
    image: np.ndarray,
    vertices: np.ndarray,
    faces: np.ndarray,
    translation: np.ndarray,
    keypoints: np.ndarray,
    gt_keypoints: np.ndarray,
    gt_parts: np.ndarray | None = None,
) -> np.ndarray:
    """(S, 2S, 3) uint8 for a crop of side S: left, the predicted mesh (PARE's crop camera,
    f = 5000 px at the 224 px camera reference) and keypoints (pixels) over ``image``
    (S, S, 3); right, the ground-truth keypoints (x, y, confidence) and part map (any
    resolution, tinted) over the same crop."""
    size = image.shape[0]
    # The predicted translation assumes FOCAL_LENGTH on the reference crop: the same view at S.
    focal = FOCAL_LENGTH * size / CAMERA_REFERENCE_SIZE
    camera = Camera(
        K=np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]]),
        R=np.eye(3),
        t=np.asarray(translation, float),
        width=size,
        height=size,
    )
    mesh = render([Mesh(np.asarray(vertices, float), faces)], camera)
    left = image.copy()
    left[mesh.mask] = (0.35 * image[mesh.mask] + 0.65 * mesh.image[mesh.mask]).astype(np.uint8)
    left = _draw_points(left, keypoints, (255, 64, 64))
    right = image.copy()
    if gt_parts is not None:
        parts = np.asarray(Image.fromarray(gt_parts).resize((size, size), Image.Resampling.NEAREST))
        body = parts > 0
        tint = (PART_COLORS[parts[body] - 1] * 255).astype(np.float32)
        right[body] = (0.5 * right[body] + 0.5 * tint).astype(np.uint8)
    right = _draw_points(right, gt_keypoints[gt_keypoints[:, 2] > 0, :2], (64, 255, 64))
    return np.concatenate([left, right], axis=1)
