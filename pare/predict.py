"""Inference on user images: inputs (images, folders, videos), person boxes (given, from 2D
keypoints, or a centred crop), batched prediction, per-person outputs and mesh overlays.

A person box is SPIN's: a centre and a side (1.2 x the extent of the keypoints or of a detector's
box). Its crop goes through the network; the crop camera ``[s, tx, ty]`` becomes a translation in
the full image's camera (focal ``--focal``, default the image diagonal, principal point at the
centre), so meshes, joints and the overlay live in that camera.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pare.data.packing.samples import BOX_EXTENT
from pare.geometry import crop_camera_to_full, matrix_to_axis_angle
from pare.io_utils import write_bytes_atomic, write_json_atomic
from pare.render import Camera, Mesh, render

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


@dataclass
class Frame:
    name: str  # output stem: the image's stem, or <video stem>_f<frame>
    image: np.ndarray  # (H, W, 3) uint8 RGB


def iter_frames(inputs: list[Path], video_step: int = 1) -> Iterator[Frame]:
    """Frames of the inputs in order: images, the images of folders (sorted, not recursive) and
    every ``video_step``-th frame of videos (which need ``pip install 'pare[video]'``)."""
    for path in map(Path, inputs):
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{path} holds no images ({sorted(IMAGE_SUFFIXES)})")
            for file in files:
                yield Frame(file.stem, read_image(file))
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path, video_step)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield Frame(path.stem, read_image(path))
        else:
            raise ValueError(
                f"{path}: not an image ({sorted(IMAGE_SUFFIXES)}), video "
                f"({sorted(VIDEO_SUFFIXES)}) or folder"
            )


def read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"{path} is not a readable image ({e}); re-export it as JPEG or PNG"
        ) from e


def _video_frames(path: Path, step: int) -> Iterator[Frame]:
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        import imageio.v3 as iio
    except ImportError as e:
        raise ImportError(
            "reading videos needs imageio with ffmpeg: pip install 'pare[video]'"
        ) from e
    for i, frame in enumerate(iio.imiter(path)):
        if i % step == 0:
            yield Frame(f"{path.stem}_f{i:06d}", np.ascontiguousarray(frame[..., :3]))


# ----------------------------------------------------------------------------- people


def read_people_file(path: Path) -> dict[str, list[np.ndarray]]:
    """Boxes or keypoints per image, keyed by the image's file name or stem.

    ``{"img.jpg": [[x1, y1, x2, y2], ...]}`` gives detector boxes; ``{"img.jpg": [[[x, y, c],
    ...], ...]}`` (or flat ``[x, y, c, x, y, c, ...]`` lists, OpenPose's layout) gives 2D
    keypoints per person. A folder of OpenPose outputs (``<stem>_keypoints.json``) works too.
    """
    path = Path(path)
    if path.is_dir():
        out = {}
        for file in sorted(path.glob("*_keypoints.json")):
            people = json.loads(file.read_text()).get("people", [])
            out[file.name.removesuffix("_keypoints.json")] = [
                np.asarray(p["pose_keypoints_2d"], float).reshape(-1, 3) for p in people
            ]
        return out
    if not path.is_file():
        raise FileNotFoundError(f"people file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object mapping image names to lists of people")
    out = {}
    for name, people in data.items():
        entries = []
        for person in people:
            a = np.asarray(person, float)
            if a.shape == (4,):
                entries.append(a)
            elif a.ndim == 1 and a.size % 3 == 0:
                entries.append(a.reshape(-1, 3))
            elif a.ndim == 2 and a.shape[1] == 3:
                entries.append(a)
            else:
                raise ValueError(
                    f"{path}: {name} has a person of shape {a.shape}; expected a box "
                    "[x1, y1, x2, y2] or keypoints [[x, y, confidence], ...]"
                )
        out[Path(name).stem] = entries
    return out


def person_boxes(frame: Frame, given: list[np.ndarray] | None) -> list[tuple[np.ndarray, float]]:
    """(centre, side) per person: from boxes, from confident keypoints, or (``given`` None, no
    people file) one centred square. An empty list means nobody: no box."""
    h, w = frame.image.shape[:2]
    if given is None:
        return [(np.array([w / 2.0, h / 2.0]), float(min(h, w)))]
    boxes = []
    for entry in given:
        if entry.shape == (4,):
            x1, y1, x2, y2 = entry
            centre, extent = np.array([(x1 + x2) / 2, (y1 + y2) / 2]), max(x2 - x1, y2 - y1)
        else:
            ok = entry[:, 2] > 0
            if ok.sum() < 2:
                continue  # too few keypoints to place a person
            lo, hi = entry[ok, :2].min(0), entry[ok, :2].max(0)
            centre, extent = (lo + hi) / 2, max(hi - lo)
        if extent > 0:
            boxes.append((centre, float(BOX_EXTENT * extent)))
    return boxes


def crop_person(image: np.ndarray, centre: np.ndarray, side: float, size: int) -> np.ndarray:
    """The (size, size, 3) crop of the square box; outside the image is black."""
    x0, y0 = centre - side / 2
    box = (float(x0), float(y0), float(x0 + side), float(y0 + side))
    pil = Image.fromarray(image).transform(
        (size, size), Image.Transform.EXTENT, box, resample=Image.Resampling.BILINEAR
    )
    return np.asarray(pil)


def full_intrinsics(height: int, width: int, focal: float | None) -> np.ndarray:
    f = focal or float(np.hypot(height, width))
    return np.array([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1.0]])


def crop_intrinsics(k: np.ndarray, centre: np.ndarray, side: float, size: int) -> np.ndarray:
    """The full camera's intrinsics on the crop's pixels (scale and shift only)."""
    a = size / side
    shift = size / 2.0 - a * np.asarray(centre)
    m = np.array([[a, 0, shift[0]], [0, a, shift[1]], [0, 0, 1.0]])
    return m @ k


# ----------------------------------------------------------------------------- outputs


def person_outputs(pred: dict, row: int, k_crop: np.ndarray, k_full: np.ndarray, size: int) -> dict:
    """One person's arrays in the full image's camera frame (metres, pixels)."""
    translation = crop_camera_to_full(
        pred["camera"][row : row + 1], torch.as_tensor(k_crop)[None], size
    )[0].numpy()
    joints = pred["joints_3d"][row].double().numpy() + translation
    vertices = pred["vertices"][row].double().numpy() + translation
    uvw = joints @ k_full.T
    return {
        "pose": matrix_to_axis_angle(pred["rotmat"][row].double()).reshape(72).numpy(),
        "rotmat": pred["rotmat"][row].double().numpy(),
        "betas": pred["betas"][row].double().numpy(),
        "camera": pred["camera"][row].double().numpy(),  # PARE's [s, tx, ty] of the crop
        "translation": translation,
        "joints_3d": joints,  # (24, 3) SMPL joints
        "keypoints_2d": uvw[:, :2] / uvw[:, 2:],  # (24, 2) their projection, image pixels
        "vertices": vertices,
        "intrinsics": k_full,
    }


def write_person(out_dir: Path, stem: str, arrays: dict, box: tuple[np.ndarray, float]) -> None:
    centre, side = box
    arrays = arrays | {"box_center": centre, "box_side": np.float64(side)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes_atomic(out_dir / f"{stem}.npz", buf.getvalue())
    write_json_atomic(
        out_dir / f"{stem}.json",
        {k: np.round(np.asarray(v, float), 6).tolist() for k, v in arrays.items()},
    )


def overlay_people(image: np.ndarray, people: list[dict], faces: np.ndarray) -> np.ndarray:
    """The image with every person's mesh blended over it (nearest surface wins)."""
    h, w = image.shape[:2]
    if not people:
        return image.copy()
    camera = Camera(people[0]["intrinsics"], np.eye(3), np.zeros(3), w, h)
    layers = render([Mesh(p["vertices"], faces) for p in people], camera)
    out = image.copy()
    covered = layers.mask
    out[covered] = (0.3 * image[covered] + 0.7 * layers.image[covered]).astype(np.uint8)
    return out
