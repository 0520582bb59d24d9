"""Which annotated MPII person a validation-list entry or an EFT fit names.

MPII's community validation split (2,958 people, HRNet's ``valid.json``) names people, not
images, and EFT's ``annotId`` is documented for COCO only. Both are resolved here against the
``.mat``'s rects, once, in the packer's main process:

- validation lists (:func:`read_val_list`, :func:`validation_people`): HRNet's ``valid.json``
  and pytorch-pose's ``mpii_annotations.json`` (people by image + ``center``/``objpos`` and
  ``scale``), text lines ``IMAGE RECT`` (0-based annorect index, as in the sample keys
  ``mpii_<image>_r<rect>``) and the older text lines ``IMAGE`` (every person of the image);
  entries that name no annotated person are counted and reported, never dropped silently;
- EFT fits (:func:`match_eft_fits`): by the fit's ``gt_keypoint_2d`` (MPII's annotation in
  SPIN's slots) against each person's joints, else by its box; a unique match joins, an
  ambiguous, unmatched, duplicate or malformed fit is a counted skip.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pare.body.joints import MPII16_TO_49
from pare.data.packing.readers import DatasetLayoutError, MPIIRect, PersonMPII, Skips

# A list entry's centre matches a rect's objpos within this many pixels or this fraction of the
# person's height (200 px x scale), whichever is larger, and its scale within this ratio. HRNet's
# file copies objpos and scale from the .mat (1-based); the slack absorbs rounding and 0/1-based
# copies, far less than the distance between two people.
CENTER_TOL_PX, CENTER_TOL_HEIGHT, SCALE_TOL = 3.0, 0.05, 0.1

# A fit's joints match a person's when their median distance is within this many PCKh head units
# (0.6 x head-box diagonal): EFT copies the annotation, so the true person is ~1 px away and any
# other is far beyond half a head. Without usable keypoints the fit's box centre must lie within
# BOX_TOL person heights of objpos, with a scale ratio in BOX_SCALE_RATIO.
KEYPOINT_TOL, BOX_TOL, BOX_SCALE_RATIO = 0.5, 0.15, (0.5, 2.0)

# An EFT fit's fields (see datasets.md): name -> shape. gt_keypoint_2d is optional (box fallback).
EFT_FIELDS = {
    "parm_pose": (24, 3, 3),
    "parm_shape": (10,),
    "parm_cam": (3,),
    "bbox_scale": (),
    "bbox_center": (2,),
}
EFT_KEYPOINTS = ("gt_keypoint_2d", (49, 3))


# ----------------------------------------------------------------------------- validation lists


@dataclass(frozen=True)
class ValEntry:
    """One entry of a validation list: an image, optionally narrowed to one person."""

    where: str  # "FILE:LINE" or "FILE[INDEX]", for messages
    image: str  # basename
    rect: int | None = None  # 0-based annorect index
    center: tuple[float, float] | None = None  # objpos, 1-based (MATLAB) pixels as in the .mat
    scale: float | None = None  # person height / 200 px


def read_val_list(path: Path) -> list[ValEntry]:
    """A validation list: JSON (HRNet's ``valid.json``: ``[{"image", "center", "scale", ...}]``;
    pytorch-pose's ``mpii_annotations.json``: ``[{"img_paths", "objpos", "scale_provided",
    "isValidation", ...}]``, of which the ``isValidation`` people) or text, one entry a line:
    ``IMAGE RECT`` (one person, 0-based annorect index) or ``IMAGE`` (everyone in the image;
    several names on a line are read as several images); ``#`` starts a comment. Raises
    :class:`DatasetLayoutError` for a missing file and ValueError naming the file, the entry and
    the fix for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"validation list not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        return _json_val_list(path, text)
    entries = []
    for n, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        where = f"{path}:{n}"
        if len(tokens) == 2 and tokens[1].lstrip("-").isdigit():
            rect = int(tokens[1])
            if rect < 0:
                raise ValueError(f"{where}: rect index {rect} is negative; use 0-based indices")
            entries.append(ValEntry(where, Path(tokens[0]).name, rect))
        elif any(t.lstrip("-").isdigit() for t in tokens):
            raise ValueError(
                f"{where}: {line.strip()!r} is not 'IMAGE RECT' or 'IMAGE'; write one person "
                "(image name, 0-based annorect index) or one image per line"
            )
        else:
            entries += [ValEntry(where, Path(t).name) for t in tokens]
    return entries


def _json_val_list(path: Path, text: str) -> list[ValEntry]:
    try:
        items = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e}); pass HRNet's valid.json") from None
    if isinstance(items, dict) and isinstance(items.get("root"), list):
        items = items["root"]  # pytorch-pose's file wraps its list
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of people (HRNet's valid.json)")
    entries = []
    for k, item in enumerate(items):
        where = f"{path}[{k}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where}: expected an object with image, center and scale")
        if "isValidation" in item and not item["isValidation"]:
            continue  # pytorch-pose's file lists training people too
        try:
            image = item["image"] if "image" in item else item["img_paths"]
            center = item["center"] if "center" in item else item["objpos"]
            scale = item["scale"] if "scale" in item else item["scale_provided"]
            cx, cy = (float(v) for v in center)
            entries.append(ValEntry(where, Path(str(image)).name, None, (cx, cy), float(scale)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{where}: {type(e).__name__} {e}; each person needs image, center [x, y] and "
                "scale (HRNet's valid.json) or img_paths, objpos and scale_provided (pytorch-pose)"
            ) from None
    return entries


@dataclass
class Validation:
    """The validation people: ``members`` are the (image, rect) pairs that go to val (every rect
    of a named image for an image entry; unannotated ones are then counted as skips there)."""

    members: set[tuple[str, int]]
    people: int  # annotated people among members
    source: str  # the list's path, or "every 10th image"
    entries: int = 0
    unmatched: list[str] = field(default_factory=list)  # one line per unmatched entry

    def record(self) -> dict:
        """The manifest's ``validation`` block."""
        return {
            "source": self.source,
            "people": self.people,
            "list_entries": self.entries,
            "unmatched_entries": len(self.unmatched),
            "unmatched_examples": self.unmatched[:5],
        }


def validation_people(
    rects: list[MPIIRect], entries: list[ValEntry] | None, source: str = ""
) -> Validation:
    """Resolve ``entries`` (None: every 10th image, MPII's packer default) to validation people.
    An entry with a centre takes the nearest annotated rect of its image within
    :data:`CENTER_TOL_PX` / :data:`CENTER_TOL_HEIGHT` and :data:`SCALE_TOL`; one with a rect index
    that rect; one with neither every rect of the image. Entries naming no annotated person
    (unknown image, test image, index out of range, no rect near the centre) are listed in
    ``unmatched``."""
    if entries is None:
        members = {(r.image, r.rect) for r in rects if r.image_index % 10 == 0}
        people = sum(r.annotated for r in rects if r.image_index % 10 == 0)
        return Validation(members, people, "every 10th image")
    by_image: dict[str, list[MPIIRect]] = {}
    for r in rects:
        by_image.setdefault(r.image, []).append(r)
    members, unmatched = set(), []
    for e in entries:
        found = by_image.get(e.image, [])
        annotated = [r for r in found if r.annotated]
        if e.center is not None:
            picked = _nearest_rect(e, annotated)
            chosen = [picked] if picked is not None else []
            why = f"no annotated person of {e.image} near center {list(e.center)} scale {e.scale}"
        elif e.rect is not None:
            chosen = [r for r in annotated if r.rect == e.rect]
            why = f"{e.image} has no annotated rect {e.rect} ({len(found)} rects)"
        else:
            chosen = found if annotated else []
            why = f"{e.image} holds no annotated person"
        if not found:
            why = f"{e.image} is not in the annotation file"
        if not chosen:
            unmatched.append(f"{e.where}: {why}")
        members |= {(r.image, r.rect) for r in chosen}
    annotated_members = {(r.image, r.rect) for r in rects if r.annotated} & members
    return Validation(members, len(annotated_members), source, len(entries), unmatched)


def _nearest_rect(entry: ValEntry, rects: list[MPIIRect]) -> MPIIRect | None:
    best, best_d = None, math.inf
    center = np.asarray(entry.center) - 1.0  # 1-based (MATLAB), like the .mat's objpos
    for r in rects:
        if r.center is None or r.scale is None:
            continue
        d = float(np.linalg.norm(center - r.center))
        tol = max(CENTER_TOL_PX, CENTER_TOL_HEIGHT * 200.0 * r.scale)
        scale_ok = entry.scale is None or abs(entry.scale / r.scale - 1.0) <= SCALE_TOL
        if d <= tol and scale_ok and d < best_d:
            best, best_d = r, d
    return best


# ----------------------------------------------------------------------------- EFT fits


def malformed_fit(fit) -> str:
    """What makes an EFT fit unusable ('' if nothing), naming the field; never raises."""
    if not isinstance(fit, dict):
        return f"not an object but {type(fit).__name__}"
    if not isinstance(fit.get("imageName"), str) or not fit["imageName"]:
        return "imageName is missing" if "imageName" not in fit else "imageName is not a name"
    fields = dict(EFT_FIELDS)
    if EFT_KEYPOINTS[0] in fit:
        fields[EFT_KEYPOINTS[0]] = EFT_KEYPOINTS[1]
    for name, shape in fields.items():
        if name not in fit:
            return f"{name} is missing"
        try:
            value = np.asarray(fit[name], dtype=np.float64)
        except (TypeError, ValueError):
            return f"{name} is not numeric"
        if value.shape != shape:
            return f"{name} has shape {value.shape}, expected {shape}"
        if not np.isfinite(value).all():
            return f"{name} is not finite"
    if not (fit["parm_cam"][0] > 0 and fit["bbox_scale"] > 0):
        return "parm_cam scale and bbox_scale must be positive"
    return ""


def fit_keypoints(fit: dict) -> np.ndarray | None:
    """(16, 3) MPII joints (x, y, confidence; image pixels) from a well-formed fit's
    ``gt_keypoint_2d`` SPIN slots, or None when it has none annotated. SPIN writes absent joints
    as (0, 0), with confidence 0 (or 1 in some files), so both count as absent."""
    if EFT_KEYPOINTS[0] not in fit:
        return None
    kp = np.asarray(fit[EFT_KEYPOINTS[0]], dtype=np.float64)[MPII16_TO_49]  # (16, 3)
    kp[np.all(kp[:, :2] == 0, axis=1), 2] = 0.0
    return kp if (kp[:, 2] > 0).any() else None


def _fit_error(fit: dict, kp: np.ndarray | None, person: PersonMPII) -> float:
    """How far ``fit`` lies from ``person``: median joint distance in PCKh head units, or (no
    keypoints) box-centre distance in person heights; inf when they cannot be the same."""
    if kp is not None:
        common = (kp[:, 2] > 0) & (person.keypoints[:, 2] > 0)
        if common.sum() < max(1, math.ceil(0.5 * (kp[:, 2] > 0).sum())):
            return math.inf
        head = 0.6 * float(np.hypot(*(person.head_box[2:] - person.head_box[:2])))
        d = np.linalg.norm(kp[common, :2] - person.keypoints[common, :2], axis=1)
        error = float(np.median(d)) / head
        return error if error <= KEYPOINT_TOL else math.inf
    ratio = float(fit["bbox_scale"]) / person.scale
    if not BOX_SCALE_RATIO[0] <= ratio <= BOX_SCALE_RATIO[1]:
        return math.inf
    d = float(np.linalg.norm(np.asarray(fit["bbox_center"], float) - person.center))
    error = d / (200.0 * person.scale)
    return error if error <= BOX_TOL else math.inf


def match_eft_fits(
    fits: list,
    people: list[PersonMPII],
    others: list[PersonMPII],
    known_images: set[str],
    skips: Skips,
    source: str,
    count_unknown: bool,
) -> int:
    """Join each EFT fit to the annotated person it was fitted to: sets ``person.fit`` on
    ``people`` (this split's) and returns how many joined. ``others`` are the other split's
    people in the same images (a fit of theirs joins no one here, silently). Counted in
    ``skips``, each naming ``source`` and the fit's position, for fits in this split's images:
    ``malformed_eft_fit`` (a field missing or misshapen, :func:`malformed_fit`),
    ``eft_unmatched`` (no person within :data:`KEYPOINT_TOL` / :data:`BOX_TOL`),
    ``eft_ambiguous`` (two or more people within it) and ``eft_duplicate`` (a later or farther
    fit of a person another fit already joins); fits naming images absent from the .mat
    (``known_images``) count as ``eft_unmatched`` when ``count_unknown`` (the train split)."""
    by_image: dict[str, list[PersonMPII]] = {}
    for p in people:
        by_image.setdefault(p.image, []).append(p)
    split_images = set(by_image)
    for p in others:
        if p.image in split_images:
            by_image[p.image].append(p)
    mine = {id(p) for p in people}
    joined: dict[int, list[tuple[float, int, dict]]] = {}  # id(person) -> (error, k, fit)
    persons = {id(p): p for p in people}
    for k, fit in enumerate(fits):
        name = fit.get("imageName") if isinstance(fit, dict) else None
        image = Path(name).name if isinstance(name, str) else None
        counted = image in split_images or (count_unknown and image not in known_images)
        if not counted:
            continue
        what = f"{source}: fit {k} ({image or 'no image'})"
        problem = malformed_fit(fit)
        if problem:
            skips.add("malformed_eft_fit", f"{what}: {problem}")
            continue
        if image not in split_images:
            skips.add("eft_unmatched", f"{what}: image not in the annotation file")
            continue
        kp = fit_keypoints(fit)
        errors = [(_fit_error(fit, kp, p), p) for p in by_image[image]]
        close = sorted((e, p.rect, p) for e, p in errors if e < math.inf)
        if not close:
            by = "keypoints" if kp is not None else "box (no gt_keypoint_2d)"
            skips.add("eft_unmatched", f"{what}: no annotated person matches its {by}")
        elif len(close) > 1:
            rects = ", ".join(f"#{r} ({e:.2f})" for e, r, _ in close)
            skips.add("eft_ambiguous", f"{what}: matches people {rects}")
        elif id(close[0][2]) in mine:
            joined.setdefault(id(close[0][2]), []).append((close[0][0], k, fit))
    for key, candidates in joined.items():
        candidates.sort(key=lambda c: (c[0], c[1]))
        persons[key].fit = candidates[0][2]
        for _, k, _ in candidates[1:]:
            p = persons[key]
            skips.add(
                "eft_duplicate",
                f"{source}: fit {k} ({p.image}): {p.image}#{p.rect} is joined by fit "
                f"{candidates[0][1]}, closer",
            )
    return len(joined)
