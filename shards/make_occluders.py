"""Object cut-outs for PARE's synthetic occlusion (data.augment.occluders) from Pascal VOC 2012.

    python shards/make_occluders.py --voc data/VOCdevkit/VOC2012 --out data/occluders/voc2012

--voc is the folder of VOCtrainval_11-May-2012.tar that holds Annotations/, JPEGImages/ and
SegmentationObject/. The selection and the cut-outs are PARE's load_occluders
(pare/dataset/occlusion.py, after Sárándi et al.'s synthetic-occlusion): only images with
instance masks; every object but people, truncated and difficult ones; its box from the XML and
its pixels from SegmentationObject; objects under 500 mask pixels dropped; a ring of alpha 192
(the mask minus its erosion by an 8 x 8 ellipse) softens the edge; then half size. Each cut-out
becomes OUT/<image>_<object index>.png (RGBA), written under a temporary name and renamed, so
the folder's sorted listing is PARE's occluder list in order.
"""

from __future__ import annotations

import argparse
import io
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from pare.io_utils import write_bytes_atomic

SUBFOLDERS = ("Annotations", "JPEGImages", "SegmentationObject")
MIN_PIXELS = 500  # PARE: cv2.countNonZero(object_mask) < 500 -> "Ignore small objects"
EDGE_ALPHA = 192
DOWNSCALE = 0.5  # PARE: "Downscale for efficiency"
# cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (8, 8)), PARE's structuring element; its anchor
# is the centre (4, 4), as scipy's for an 8 x 8 footprint.
ELLIPSE_8 = np.array(
    [
        [0, 0, 0, 0, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1],
        [0, 1, 1, 1, 1, 1, 1, 1],
    ],
    bool,
)


class VOCError(RuntimeError):
    """A VOC folder that is missing or lacks a file an annotation names."""


def check_voc(voc: Path) -> None:
    """Raise VOCError, one line naming the expected path, unless ``voc`` has VOC's layout."""
    for sub in SUBFOLDERS:
        if not (voc / sub).is_dir():
            raise VOCError(
                f"Pascal VOC 2012 folder not found: expected {voc / sub} (--voc is the "
                "VOCdevkit/VOC2012 folder of VOCtrainval_11-May-2012.tar, with "
                f"{', '.join(SUBFOLDERS)})"
            )


def _flag(obj: ET.Element, name: str) -> bool:
    # PARE reads obj.find(name).text != '0'; an object without the tag counts as not flagged.
    node = obj.find(name)
    return node is not None and (node.text or "0").strip() != "0"


def selected_objects(annotation: Path, skipped: Counter) -> tuple[str, list[tuple[int, tuple]]]:
    """(image file name, [(object index, (xmin, ymin, xmax, ymax)), ...]) of one VOC XML: the
    objects PARE keeps. ``skipped`` counts the rest by their first reason."""
    root = ET.parse(annotation).getroot()
    filename = root.findtext("filename", "")
    if root.findtext("segmented", "0").strip() == "0":
        skipped["image without instance masks"] += 1
        return filename, []
    kept = []
    for index, obj in enumerate(root.findall("object")):
        if obj.findtext("name", "").strip() == "person":
            skipped["person"] += 1
        elif _flag(obj, "difficult"):
            skipped["difficult"] += 1
        elif _flag(obj, "truncated"):
            skipped["truncated"] += 1
        else:
            box = obj.find("bndbox")
            kept.append(
                (
                    index,
                    tuple(int(float(box.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")),
                )
            )
    return filename, kept


def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in): each output pixel averages the input pixels it covers, partial ones by
    the fraction covered (cv2's INTER_AREA)."""
    step = n_in / n_out
    start = np.arange(n_out)[:, None] * step
    j = np.arange(n_in)[None, :]
    return np.clip(np.minimum(start + step, j + 1) - np.maximum(start, j), 0, None) / step


def resize_area(image: np.ndarray, factor: float) -> np.ndarray:
    """(h, w, C) uint8 shrunk to round(h * factor) x round(w * factor), every channel alike (no
    premultiplied alpha), rounded as PARE's cv2.resize(..., INTER_AREA) rounds: halves up when
    both sides halve exactly (its 2 x 2 fast path), to even otherwise; so the cut-outs equal
    PARE's byte for byte."""
    h, w = image.shape[:2]
    h_out, w_out = (int(v) for v in np.round(np.array([h, w]) * factor))
    rows, cols = _area_weights(h, h_out), _area_weights(w, w_out)
    out = np.einsum("ih,hwc->iwc", rows, image.astype(np.float64))  # (h', w, C)
    out = np.einsum("jw,iwc->ijc", cols, out)  # (h', w', C)
    halved = h == 2 * h_out and w == 2 * w_out
    return np.clip(np.floor(out + 0.5) if halved else np.rint(out), 0, 255).astype(np.uint8)


def cut_out(image: np.ndarray, labels: np.ndarray, index: int, box: tuple) -> np.ndarray | None:
    """(h, w, 4) uint8 RGBA of object ``index`` (0-based; its SegmentationObject value is
    index + 1) inside ``box`` at half size, or None when its mask is under MIN_PIXELS. Like
    PARE, the box's VOC coordinates index the arrays as they are."""
    xmin, ymin, xmax, ymax = box
    mask = (labels[ymin:ymax, xmin:xmax] == index + 1).astype(np.uint8) * 255
    if np.count_nonzero(mask) < MIN_PIXELS:
        return None
    # Outside the image counts as object (cv2.erode's default border), so only the object's
    # own outline turns translucent.
    eroded = ndimage.grey_erosion(mask, footprint=ELLIPSE_8, mode="constant", cval=255)
    mask[eroded < mask] = EDGE_ALPHA
    rgba = np.concatenate([image[ymin:ymax, xmin:xmax], mask[..., None]], axis=-1)
    return resize_area(rgba, DOWNSCALE)


def make_occluders(voc: Path, out: Path) -> tuple[list[Path], Counter]:
    """Write every cut-out of ``voc`` into ``out``; returns the files and the skip counts."""
    check_voc(voc)
    written, skipped = [], Counter()
    for annotation in sorted(p for p in (voc / "Annotations").iterdir() if p.is_file()):
        filename, objects = selected_objects(annotation, skipped)
        if not objects:
            continue
        image_path = voc / "JPEGImages" / filename
        labels_path = voc / "SegmentationObject" / Path(filename).with_suffix(".png")
        for path in (image_path, labels_path):
            if not path.is_file():
                raise VOCError(f"{annotation.name} names {path}, which does not exist")
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(labels_path) as im:
            labels = np.asarray(im)  # palette indices: 1..n the objects, 0 and 255 the rest
        for index, box in objects:
            rgba = cut_out(image, labels, index, box)
            if rgba is None:
                skipped[f"under {MIN_PIXELS} mask pixels"] += 1
                continue
            buffer = io.BytesIO()
            Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
            written.append(
                write_bytes_atomic(
                    out / f"{Path(filename).stem}_{index:02d}.png", buffer.getvalue()
                )
            )
    return written, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voc", type=Path, required=True, help="VOCdevkit/VOC2012 folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the RGBA cut-outs")
    args = parser.parse_args(argv)
    try:
        written, skipped = make_occluders(args.voc, args.out)
    except VOCError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    skips = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
    print(f"wrote {len(written)} cut-outs to {args.out} (skipped: {skips or 'none'})")
    others = set(args.out.glob("*.png")) - set(written)
    if others:
        print(
            f"note: {len(others)} other *.png in {args.out} were left as they were; "
            "data.augment.occluders uses every *.png there",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
