"""Inference on user images: inputs (images, folders, videos), person boxes (given, from 2D
keypoints, or a centred crop), batched prediction, per-person outputs and mesh overlays.

A person box is SPIN's: a centre and a side (1.2 x the extent of the keypoints or of a detector's
box). Its crop goes through the network; the crop camera ``[s, tx, ty]`` becomes a translation in
the full image's camera (focal ``--focal``, default the image diagonal, principal point at the
centre), so meshes, joints and the overlay live in that camera. Crops come from the full image;
the overlay is drawn on a copy at most ``OVERLAY_MAX_SIDE`` px on its longer side, with the
camera scaled to it, so its memory stays bounded whatever the input's size.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from pare.data.packing.samples import BOX_EXTENT
from pare.geometry import crop_camera_to_full, matrix_to_axis_angle
from pare.io_utils import write_bytes_atomic, write_json_atomic
from pare.render import Camera, Mesh, render

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
OVERLAY_MAX_SIDE = 1920  # px, the overlay's longer side at most (a full-HD frame is drawn as is)


@dataclass
class Frame:
    name: str  # output stem: the image's stem, or <video stem>_f<frame>
    image: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass
class Unreadable:
    """An input that did not decode: an image, a video that did not open, or one that stopped
    decoding part way (its frames before that point came as frames)."""

    path: Path
    reason: str  # one line naming the file, what went wrong and what to do


def iter_frames(inputs: list[Path], video_step: int = 1) -> Iterator[Frame | Unreadable]:
    """Frames of the inputs in order: images, the images of folders (sorted, not recursive) and
    every ``video_step``-th frame of videos (which need ``pip install 'pare[video]'``). An input
    that does not decode comes as an :class:`Unreadable` in its place, for the caller to skip."""
    for path in map(Path, inputs):
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{path} holds no images ({sorted(IMAGE_SUFFIXES)})")
            for file in files:
                yield _image_frame(file)
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _video_frames(path, video_step)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield _image_frame(path)
        else:
            raise ValueError(
                f"{path}: not an image ({sorted(IMAGE_SUFFIXES)}), video "
                f"({sorted(VIDEO_SUFFIXES)}) or folder"
            )


def _image_frame(path: Path) -> Frame | Unreadable:
    try:
        return Frame(path.stem, read_image(path))
    except ValueError as e:
        return Unreadable(path, str(e))


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, as an image viewer shows the file: turned by its EXIF orientation
    (phone photos are stored in sensor orientation), and 16-bit grey rescaled to 8 bits
    (65535 -> 255) rather than clipped. Anything Pillow cannot decode (an empty or truncated
    file, another format under an image suffix, an image past Pillow's decompression-bomb limit)
    or a pixel format with no unambiguous 8-bit picture (32-bit integer or float) raises
    ValueError naming the file."""
    try:
        with Image.open(path) as im:
            # In place: without a tag it returns a copy, and a 100-megapixel photo held twice
            # is what the overlay limit is there to avoid.
            ImageOps.exif_transpose(im, in_place=True)
            return _to_rgb8(im, path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        if isinstance(e, _UnsupportedMode):
            raise ValueError(str(e)) from None
        if path.is_file() and path.stat().st_size == 0:
            reason = "an empty file"
        elif isinstance(e, UnidentifiedImageError):
            reason = "not in a format Pillow reads"
        else:
            reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"{path} is not a readable image ({reason}); re-export it as JPEG or PNG"
        ) from e


class _UnsupportedMode(ValueError):
    pass


def _to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    if im.mode.startswith("I;16") or (im.mode == "I" and im.getextrema()[1] <= 65535):
        # 16-bit grey (PNG, TIFF; Pillow may open it as "I"): Pillow's convert("RGB") would clip
        # everything above 255 to white.
        grey = np.asarray(im, dtype=np.float64) * (255.0 / 65535.0)
        return np.repeat(np.rint(grey).astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode in ("I", "F"):
        raise _UnsupportedMode(
            f"{path} holds {'32-bit integer' if im.mode == 'I' else 'floating-point'} pixels, "
            "which have no fixed 8-bit scale; re-export it as an 8-bit JPEG or PNG"
        )
    # convert() to the same mode copies: a 100-megapixel JPEG would briefly be held twice
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _video_frames(path: Path, step: int) -> Iterator[Frame | Unreadable]:
    """Every ``step``-th frame, as a video player shows it: ffmpeg turns and mirrors the frames
    by the container's display matrix (phone videos are stored in sensor orientation with a
    rotation of 90, 180 or 270 degrees), so sizes and boxes refer to the upright picture.
    ffmpeg itself conceals or drops a damaged frame inside a video; a video it cannot open,
    that fails part way (a truncated file) or that is turned by an angle other than a multiple
    of 90 degrees ends in an Unreadable."""
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        import imageio.v3 as iio
        import imageio_ffmpeg  # noqa: F401  imageio's FFMPEG plugin, named below, runs its ffmpeg
    except ImportError as e:
        raise ImportError(
            "reading videos needs imageio with ffmpeg: pip install 'pare[video]'"
        ) from e
    imageio_log = logging.getLogger("imageio_ffmpeg")
    imageio_log.addFilter(_drop_upright_size_notice)
    i = -1
    try:
        # ffmpeg is the one place frames are turned: it reads the whole display matrix (flips
        # included, which its log and imageio's "rotate" field do not report) and imageio
        # reshapes by the size ffmpeg outputs. The ffmpeg command line turns by default since
        # 2.7; -autorotate says so rather than rely on that. The plugin is named because the
        # option is its ffmpeg's, and PyAV, where installed, would read the video another way.
        frames = iio.imiter(path, plugin="FFMPEG", input_params=["-autorotate"])
        for i, frame in enumerate(frames):
            if i % step == 0:
                yield Frame(f"{path.stem}_f{i:06d}", np.ascontiguousarray(frame[..., :3]))
    except (OSError, RuntimeError, ValueError) as e:
        if "Odd rotation angle" in str(e):
            # ffmpeg would turn the picture inside its own frame, and its warning breaks
            # imageio's reading of the log: no frame comes out either way.
            reason = "its display rotation is not a multiple of 90 degrees"
        else:
            # imageio appends ffmpeg's whole log to the message: its first line is the reason
            reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if i < 0:
            message = f"{path} is not a readable video ({reason}); re-encode or re-download it"
        else:
            message = (
                f"{path} stopped decoding after frame {i} ({reason}); the frames before it "
                "were predicted, re-encode or re-download it for the rest"
            )
        yield Unreadable(path, message)
    finally:
        imageio_log.removeFilter(_drop_upright_size_notice)


def _drop_upright_size_notice(record: logging.LogRecord) -> bool:
    """imageio-ffmpeg warns when ffmpeg's output size differs from the stored one: for a video
    turned by 90 or 270 degrees that is the upright picture asked for, not a problem."""
    return not record.getMessage().startswith("The frame size for reading")


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


@dataclass
class Prepared:
    """What a frame leaves for the batched forward pass and its overlay: the full-resolution
    image can go as soon as its people are cropped, so a batch never holds several of them."""

    name: str
    image_size: tuple[int, int]  # (H, W) of the full image
    boxes: list[tuple[np.ndarray, float]]
    crops: list[np.ndarray]  # (S, S, 3) uint8 per box, from the full image
    background: np.ndarray | None  # (h, w, 3) uint8 overlay background; None: no overlay


def prepare_frame(
    frame: Frame, boxes: list[tuple[np.ndarray, float]], size: int, overlay_max_side: int | None
) -> Prepared:
    """The frame's crops (``size`` px, from the full image, so the model sees what it would
    without overlays) and, unless ``overlay_max_side`` is None, its overlay background."""
    background = None
    if overlay_max_side is not None:
        background = overlay_background(frame.image, overlay_max_side)
    return Prepared(
        frame.name,
        frame.image.shape[:2],
        boxes,
        [crop_person(frame.image, centre, side, size) for centre, side in boxes],
        background,
    )


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
    joints = pred["smpl_joints"][row].double().numpy() + translation
    vertices = pred["vertices"][row].double().numpy() + translation
    uvw = joints @ k_full.T
    return {
        "pose": matrix_to_axis_angle(pred["rotmat"][row].double()).reshape(72).numpy(),
        "rotmat": pred["rotmat"][row].double().numpy(),
        "betas": pred["betas"][row].double().numpy(),
        "camera": pred["camera"][row].double().numpy(),  # PARE's [s, tx, ty] of the crop
        "translation": translation,
        "smpl_joints": joints,  # (24, 3) SMPL's kinematic joints
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


def overlay_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(height, width) of the overlay: the image's, scaled (aspect kept) so that the longer side
    is at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay_background(image: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:
    """The (h, w, 3) uint8 picture the overlay is drawn on: ``image`` itself, or scaled down to
    :func:`overlay_size`. Rendering takes ~90 bytes a pixel: a 10000 x 10000 photo drawn at full
    size took 8.5 GB; at 1920 px the overlay adds under 0.5 GB whatever the input's size."""
    h, w = image.shape[:2]
    oh, ow = overlay_size(h, w, max_side)
    if (oh, ow) == (h, w):
        return image
    # Pillow's resize filters (antialiased) in uint8; reducing_gap first box-reduces by an integer
    # factor, so a 100-megapixel photo is not filtered at full resolution.
    pil = Image.fromarray(image).resize((ow, oh), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(pil)


def overlay_people(
    background: np.ndarray,
    people: list[dict],
    faces: np.ndarray,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """``background`` (h, w, 3) uint8 with every person's mesh blended over it (nearest surface
    wins). The people's ``intrinsics`` are the full image's, of ``image_size`` (H, W; default
    the background's own): they are scaled to the background's pixels, so a background from
    :func:`overlay_background` shows each mesh where it lies in the full image, scaled."""
    h, w = background.shape[:2]
    if not people:
        return background.copy()
    full_h, full_w = image_size or (h, w)
    # Pixel x of the full image covers [x, x + 1); the resized one maps [0, W) onto [0, w).
    to_background = np.diag([w / full_w, h / full_h, 1.0])
    camera = Camera(to_background @ people[0]["intrinsics"], np.eye(3), np.zeros(3), w, h)
    layers = render([Mesh(p["vertices"], faces) for p in people], camera)
    out = background.copy()
    covered = layers.mask
    image, mesh = background[covered].astype(np.uint16), layers.image[covered].astype(np.uint16)
    out[covered] = ((3 * image + 7 * mesh) // 10).astype(np.uint8)  # 0.3 image + 0.7 mesh
    return out
