"""Run a trained model on images, folders of images or videos: SMPL parameters, camera, 3D joints
and vertices per person (npz and json), and an overlay PNG per image with the meshes drawn in.

    python train/predict.py IMAGES_OR_FOLDER_OR_VIDEO [...] --checkpoint CKPT --out DIR
        [--people boxes_or_keypoints.json | OPENPOSE_DIR] [--batch-size 16] [--focal PX]
        [--overlay-max-side 1920]

CKPT is a ``.safetensors`` file, a run folder or a checkpoint folder (as for evaluate.py). People
come from ``--people`` (detector boxes or 2D keypoints per image name), else one centred square
crop per image: no detector is needed. Videos need ``pip install 'pare[video]'``.

An image that does not decode (or a video that does not open) is skipped, named on stderr and
counted in the summary; the run exits 2 only when no input could be read. Overlays are drawn at
most ``--overlay-max-side`` px on their longer side; the crops the model sees come from the full
image.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pare.checkpoint import load_trained_model
from pare.config import ConfigError
from pare.data.streaming.batch import normalize_images
from pare.io_utils import write_bytes_atomic
from pare.launch import run_entry_point
from pare.predict import (
    OVERLAY_MAX_SIDE,
    Prepared,
    Unreadable,
    crop_intrinsics,
    full_intrinsics,
    iter_frames,
    overlay_people,
    person_boxes,
    person_outputs,
    prepare_frame,
    read_people_file,
    write_person,
)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="images, folders or videos")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", action="append", default=[], help="YAML config (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--people", type=Path, help="boxes/keypoints JSON or OpenPose folder")
    parser.add_argument("--batch-size", type=positive, default=16)
    parser.add_argument("--focal", type=float, help="focal length in pixels (default: diagonal)")
    parser.add_argument("--video-step", type=positive, default=1, help="every N-th video frame")
    parser.add_argument("--no-overlay", action="store_true", help="skip the overlay PNGs")
    parser.add_argument(
        "--overlay-max-side",
        type=positive,
        default=OVERLAY_MAX_SIDE,
        help="longer side of the overlay PNGs in pixels; larger images are drawn scaled down",
    )
    parser.add_argument("overrides", nargs="*", help="config key=value overrides")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for path in args.inputs:  # before the model loads
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
    model, cfg, _ = load_trained_model(args.checkpoint, "best", args.config, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    faces = model.smpl.faces
    size = cfg.data.crop_size
    overlay_side = None if args.no_overlay else args.overlay_max_side
    people_file = read_people_file(args.people) if args.people else {}
    args.out.mkdir(parents=True, exist_ok=True)

    pending: list[Prepared] = []  # frames waiting for a full batch of people
    counts = {"images": 0, "people": 0, "unlisted": 0}
    unreadable: list[str] = []  # one reason per input skipped
    seen: set[str] = set()  # output stems so far

    def flush() -> None:
        crops = [crop for item in pending for crop in item.crops]
        owners = [(f, p) for f, item in enumerate(pending) for p in range(len(item.boxes))]
        results: list[list[dict]] = [[] for _ in pending]
        for start in range(0, len(crops), args.batch_size):
            chunk = np.stack(crops[start : start + args.batch_size])  # (B, S, S, 3)
            images = torch.from_numpy(chunk).permute(0, 3, 1, 2).to(device)
            with torch.no_grad():
                pred = {k: v.float().cpu() for k, v in model(normalize_images(images)).items()}
            for row, (f, p) in enumerate(owners[start : start + args.batch_size]):
                item = pending[f]
                k_full = full_intrinsics(*item.image_size, args.focal)
                k_crop = crop_intrinsics(k_full, *item.boxes[p], size)
                out = person_outputs(pred, row, k_crop, k_full, size)
                write_person(args.out, f"{item.name}_p{p}", out, item.boxes[p])
                results[f].append(out)
        for item, people in zip(pending, results, strict=True):
            if item.background is not None:
                picture = overlay_people(item.background, people, faces, item.image_size)
                buf = io.BytesIO()
                Image.fromarray(picture).save(buf, format="PNG")
                write_bytes_atomic(args.out / f"{item.name}_overlay.png", buf.getvalue())
            counts["people"] += len(people)
        counts["images"] += len(pending)
        pending.clear()

    queued = 0
    # A bar updated by hand: tqdm wrapping the frames would hold the last full image while the
    # next one decodes.
    bar = tqdm(desc="predict", unit="image")
    for frame in iter_frames(args.inputs, args.video_step):
        if isinstance(frame, Unreadable):
            unreadable.append(frame.reason)
            tqdm.write(f"skipped: {frame.reason}", file=sys.stderr)
            continue
        if frame.name in seen:
            raise ValueError(
                f"two inputs would write {frame.name}_*: rename one, or run them separately"
            )
        seen.add(frame.name)
        if args.people and frame.name not in people_file:
            counts["unlisted"] += 1  # not in --people: nobody to predict, no made-up crop
        boxes = person_boxes(frame, people_file.get(frame.name, []) if args.people else None)
        pending.append(prepare_frame(frame, boxes, size, overlay_side))
        del frame  # the full image goes before the next one decodes
        bar.update()
        queued += len(boxes)
        if queued >= args.batch_size:
            flush()
            queued = 0
    if pending:
        flush()
    bar.close()
    if unreadable and not counts["images"]:
        if len(unreadable) == 1:
            raise ValueError(unreadable[0])
        raise ValueError(
            f"none of the {len(unreadable)} images or videos could be read (each is named "
            f"above), e.g. {unreadable[0]}"
        )
    print(f"{counts['people']} people in {counts['images']} images -> {args.out}")
    if counts["unlisted"]:
        print(f"{counts['unlisted']} images are not in {args.people}: no people predicted there")
    if unreadable:
        print(f"unreadable inputs skipped: {len(unreadable)} (named above)")
    return 0


if __name__ == "__main__":
    run_entry_point(main, (ConfigError, FileNotFoundError, ValueError, ImportError))
