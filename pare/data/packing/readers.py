"""Readers for the raw datasets: 3DPW sequence pickles, MPII's ``.mat`` and EFT fits.

They turn the on-disk formats into plain per-person records and name what they skip and why,
so the packer can count skips in its manifest. Pickles go through the restricted unpickler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io

from pare.safe_pickle import load_pickle, to_numpy

THREEDPW_SPLITS = ("train", "validation", "test")
THREEDPW_KEYS = ("sequence", "genders", "betas", "poses", "trans", "poses2d", "cam_poses", "cam_intrinsics",
                 "campose_valid", "img_frame_ids")  # fmt: skip


class DatasetLayoutError(FileNotFoundError):
    """A dataset root or sub-folder is missing; the message names the expected path."""


# Skip reasons that are the protocol's own selection of people, not damaged input (SPIN's and
# PARE's preprocessing drop the same): 3DPW frames whose camera pose is invalid or with too few
# detected keypoints for a box, MPII's test images and rects without joints, people with fewer
# than --min-joints. ``--strict`` lets these pass and fails on every other reason.
FILTERS = frozenset(
    {"campose_invalid", "too_few_keypoints", "test_image", "no_annopoints", "too_few_joints"}
)


class StrictSkip(ValueError):
    """Under ``--strict``: a record or sample that would have been skipped as damaged."""


@dataclass
class Skips:
    """Counts of skipped samples by reason, with a few examples of each. With ``strict``, adding
    a reason other than a protocol filter (:data:`FILTERS`) raises :class:`StrictSkip`."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    strict: bool = False

    def add(self, reason: str, what: str, n: int = 1) -> None:
        if self.strict and reason not in FILTERS:
            raise StrictSkip(
                f"--strict: {reason}: {what} (without --strict it is skipped and counted)"
            )
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(what)

    def merge(self, other: Skips) -> None:
        if self.strict:
            for reason, examples in other.examples.items():
                if reason not in FILTERS:
                    self.add(reason, examples[0] if examples else "(recorded earlier)")
        for reason, n in other.counts.items():
            for what in other.examples.get(reason, [])[
                : max(0, 5 - len(self.examples.get(reason, [])))
            ]:
                self.examples.setdefault(reason, []).append(what)
            self.counts[reason] = self.counts.get(reason, 0) + n
            self.examples.setdefault(reason, [])


# ----------------------------------------------------------------------------- 3DPW


@dataclass
class PersonFrame3DPW:
    """One actor in one frame of a 3DPW sequence (world-frame SMPL, camera of that frame)."""

    sequence: str
    actor: int
    frame: int
    image: Path
    keypoints: np.ndarray  # (18, 3) OpenPose-18 x, y, confidence in image pixels
    pose: np.ndarray  # (72,) world-frame axis-angle
    betas: np.ndarray  # (10,)
    trans: np.ndarray  # (3,)
    gender: str  # "male" / "female"
    cam_pose: np.ndarray  # (4, 4) world-to-camera
    intrinsics: np.ndarray  # (3, 3)


def threedpw_sequence_files(root: Path, split: str) -> list[Path]:
    if split not in THREEDPW_SPLITS:
        raise ValueError(f"3DPW split must be one of {THREEDPW_SPLITS}, got {split!r}")
    root = Path(root)
    for sub in (root, root / "sequenceFiles" / split, root / "imageFiles"):
        if not sub.is_dir():
            raise DatasetLayoutError(
                f"3DPW folder not found: {sub}. Expected {root}/imageFiles/<sequence>/image_%05d.jpg and "
                f"{root}/sequenceFiles/{{train,validation,test}}/<sequence>.pkl (3DPW's own layout)."
            )
    return sorted((root / "sequenceFiles" / split).glob("*.pkl"))


def read_3dpw_sequence(path: Path, root: Path, skips: Skips) -> list[PersonFrame3DPW]:
    """Every valid (campose_valid) actor-frame of one sequence. Problems are counted in
    ``skips``, naming the file and the field: an unreadable file or malformed sequence-level
    fields skip the sequence, a malformed actor (array lengths that disagree with the frame
    count, fewer than 10 betas, an unknown gender) skips the actor, and non-finite values skip
    the frame."""
    try:
        seq = load_pickle(path)
        missing = [k for k in THREEDPW_KEYS if k not in seq]
        if missing:
            raise ValueError(f"missing keys {missing}")
        name = str(seq["sequence"])
        cam_poses = _field(seq["cam_poses"], "cam_poses", (-1, 4, 4))
        intrinsics = _field(seq["cam_intrinsics"], "cam_intrinsics", (3, 3))
        if not np.isfinite(intrinsics).all():
            raise ValueError("cam_intrinsics: non-finite values")
    except Exception as e:  # any unreadable file is skipped and counted, not fatal
        skips.add("unreadable_sequence", f"{path.name}: {e}")
        return []
    n = len(cam_poses)
    out = []
    for actor in range(len(seq["genders"])):
        try:
            a = _actor_arrays(seq, actor, n)
        except (ValueError, TypeError, IndexError, KeyError) as e:
            skips.add("malformed_record", f"{path.name}: actor {actor}: {e}")
            continue
        valid = a["campose_valid"]
        if (~valid).any():
            skips.add("campose_invalid", f"{name}/{actor}", int((~valid).sum()))
        per_frame = {
            "poses": a["poses"],
            "trans": a["trans"],
            "poses2d": a["poses2d"],
            "cam_poses": cam_poses,
        }
        finite = {k: np.isfinite(v.reshape(n, -1)).all(1) for k, v in per_frame.items()}
        for i in np.flatnonzero(valid & ~np.logical_and.reduce(list(finite.values()))):
            bad = next(k for k in per_frame if not finite[k][i])
            skips.add("nonfinite_values", f"{path.name}: actor {actor} frame {i}: {bad}")
            valid[i] = False
        for i in np.flatnonzero(valid):
            out.append(PersonFrame3DPW(
                sequence=name, actor=actor, frame=int(i), image=root / "imageFiles" / name / f"image_{i:05d}.jpg",
                keypoints=a["poses2d"][i].T.copy(), pose=a["poses"][i], betas=a["betas"],
                trans=a["trans"][i], gender=a["gender"], cam_pose=cam_poses[i], intrinsics=intrinsics,
            ))  # fmt: skip
    return out


def _field(value, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A numeric 3DPW array as float64 with ``shape`` (-1: any length); ValueError naming it."""
    arr = np.asarray(to_numpy(value), dtype=np.float64)
    if arr.ndim != len(shape) or any(
        s not in (-1, d) for s, d in zip(shape, arr.shape, strict=True)
    ):
        want = "x".join("N" if s == -1 else str(s) for s in shape)
        raise ValueError(f"{name} has shape {arr.shape}, expected {want}")
    return arr


# The spellings of a 3DPW gender that mean one body model without doubt: the official files
# write 'm' / 'f'; files rewritten by other tools use the words or capitals. Anything else
# (numbers, 'n', '') is refused: a guess would fit the person with the wrong body.
_GENDER_SPELLINGS = {"m": "male", "male": "male", "f": "female", "female": "female"}


def read_gender(value) -> str:
    """A 3DPW ``genders`` entry -> ``"male"`` / ``"female"``. Takes str, bytes (Python 2
    pickles), numpy strings and 0-d or 1-element arrays of them, in any case, with surrounding
    spaces. Raises ValueError naming the value for anything else (never the neutral model)."""
    raw = value
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item()
    if isinstance(value, bytes | np.bytes_):
        value = bytes(value).decode("latin1")
    if isinstance(value, str | np.str_):
        gender = _GENDER_SPELLINGS.get(str(value).strip().lower())
        if gender is not None:
            return gender
    raise ValueError(
        f"genders is {raw!r}, expected 'm' or 'f' (or 'male'/'female'); fix the sequence file"
    )


def _actor_arrays(seq: dict, actor: int, n: int) -> dict:
    """One actor's arrays, checked against the sequence's frame count ``n``."""
    gender = read_gender(seq["genders"][actor])
    betas = _field(seq["betas"][actor], "betas", (-1,))
    if betas.size < 10:
        raise ValueError(f"betas has {betas.size} values, expected at least 10")
    if not np.isfinite(betas[:10]).all():
        raise ValueError("betas: non-finite values")
    return {
        "gender": gender,
        "betas": betas[:10],
        "poses": _field(seq["poses"][actor], "poses", (n, 72)),
        "trans": _field(seq["trans"][actor], "trans", (n, 3)),
        "poses2d": _field(seq["poses2d"][actor], "poses2d", (n, 3, 18)),  # (N, 3, 18)
        "campose_valid": _field(seq["campose_valid"][actor], "campose_valid", (n,)).astype(bool),
    }


# ----------------------------------------------------------------------------- MPII


@dataclass
class PersonMPII:
    """One annotated person of MPII (0-based pixel coordinates)."""

    image: str
    image_index: int
    rect: int
    train: bool
    keypoints: np.ndarray  # (16, 3) x, y, confidence (1 annotated, 0 absent); MPII joint order
    visible: np.ndarray  # (16,) MPII's is_visible (1 when the field is empty or missing)
    head_box: np.ndarray  # (4,) x1 y1 x2 y2
    center: np.ndarray  # (2,) objpos
    scale: float  # person height / 200 px
    fit: dict | None = None  # the EFT fit joined to this person (mpii_match.match_eft_fits)


def _num(value) -> float:
    """A MATLAB leaf as float64, whatever its stored type (uint8/uint16 overflow when subtracted)."""
    arr = np.asarray(value, dtype=np.float64).ravel()
    if arr.size != 1:
        raise ValueError(f"expected one number, got {arr.size}")
    return float(arr[0])


def _visibility(point) -> float:
    """``is_visible`` as 1/0; a number, a string '0'/'1', an empty array or a missing field."""
    if not hasattr(point, "is_visible"):
        return 1.0
    v = point.is_visible
    if isinstance(v, str):
        return float(v.strip() == "1") if v.strip() else 1.0
    arr = np.asarray(v).ravel()
    return 1.0 if arr.size == 0 else float(arr[0] != 0)


@dataclass
class MPIIRelease:
    """MPII's ``RELEASE`` struct as loaded (:func:`load_mpii`): one entry per image."""

    path: Path
    annolist: np.ndarray  # (N,) image structs
    img_train: np.ndarray  # (N,) bool


def load_mpii(mat_path: Path) -> MPIIRelease:
    """Load ``mpii_human_pose_v1_u12_1.mat``. Raises :class:`DatasetLayoutError` when it is
    missing and ValueError when it is not an MPII annotation file."""
    mat_path = Path(mat_path)
    if not mat_path.is_file():
        raise DatasetLayoutError(
            f"MPII annotation file not found: {mat_path}. Expected the dataset root to hold "
            "mpii_human_pose_v1_u12_1.mat and images/ (MPII Human Pose v1 u12)."
        )
    try:
        release = scipy.io.loadmat(mat_path, squeeze_me=True, struct_as_record=False)["RELEASE"]
    except Exception as e:
        raise ValueError(f"{mat_path}: not a readable MPII annotation file ({e})") from e
    return MPIIRelease(
        mat_path,
        np.atleast_1d(release.annolist),
        np.atleast_1d(release.img_train).astype(bool),
    )


def _rects(entry) -> list:
    rects = entry.annorect
    return list(rects.ravel()) if isinstance(rects, np.ndarray) else [rects]


@dataclass
class MPIIRect:
    """Where one ``annorect`` sits, read without its joints (see :func:`mpii_rects`)."""

    image: str
    image_index: int
    rect: int
    annotated: bool  # a training image's rect with ``annopoints``
    center: np.ndarray | None  # (2,) objpos, 0-based pixels; None when missing or malformed
    scale: float | None  # person height / 200 px; None when missing or malformed


def mpii_rects(release: MPIIRelease) -> list[MPIIRect]:
    """Every rect of every image, in file order: what a validation list is resolved against."""
    out = []
    for i, entry in enumerate(release.annolist):
        name = str(entry.image.name)
        for r, rect in enumerate(_rects(entry)):
            points = getattr(rect, "annopoints", None)
            annotated = bool(release.img_train[i]) and not (
                points is None or isinstance(points, np.ndarray)
            )
            try:
                center = np.array([_num(rect.objpos.x), _num(rect.objpos.y)]) - 1.0
                scale = _num(rect.scale)
            except (AttributeError, ValueError, TypeError):
                center, scale = None, None
            out.append(MPIIRect(name, i, r, annotated, center, scale))
    return out


def read_mpii(mat: Path | MPIIRelease, skips: Skips, include=None) -> list[PersonMPII]:
    """All people with usable annotations, from the file or an already loaded
    :class:`MPIIRelease`; rects without ``annopoints`` and malformed entries are counted in
    ``skips``. Coordinates become 0-based. ``include(image_index, image_name, rect_index)``
    limits the rects considered (and counted), e.g. to one split's people."""
    release = mat if isinstance(mat, MPIIRelease) else load_mpii(mat)
    people = []
    for i, entry in enumerate(release.annolist):
        name = str(entry.image.name)
        for r, rect in enumerate(_rects(entry)):
            if include is not None and not include(i, name, r):
                continue
            what = f"{name}#{r}"
            if not release.img_train[i]:
                skips.add("test_image", what)  # MPII's test people carry no joints
                continue
            try:
                points = getattr(rect, "annopoints", None)
                if points is None or isinstance(points, np.ndarray):
                    skips.add("no_annopoints", what)
                    continue
                kp = np.zeros((16, 3))
                visible = np.zeros(16)
                for p in np.atleast_1d(points.point):  # one point collapses to a struct
                    j = int(_num(p.id))
                    if not 0 <= j < 16:
                        raise ValueError(f"joint id {j} out of range")
                    # Annotated joints are supervised whether or not they are visible (as in SPIN).
                    kp[j] = [_num(p.x) - 1.0, _num(p.y) - 1.0, 1.0]
                    visible[j] = _visibility(p)
                head = np.array([_num(rect.x1), _num(rect.y1), _num(rect.x2), _num(rect.y2)]) - 1.0
                center = np.array([_num(rect.objpos.x), _num(rect.objpos.y)]) - 1.0
                scale = _num(rect.scale)
            except (AttributeError, ValueError, TypeError) as e:
                skips.add("malformed_annotation", f"{what}: {e}")
                continue
            problem = _degenerate(kp, head, center, scale)
            if problem:
                skips.add("degenerate_annotation", f"{what}: {problem}")
                continue
            people.append(
                PersonMPII(name, i, r, bool(release.img_train[i]), kp, visible, head, center, scale)
            )
    return people


def _degenerate(keypoints, head, center, scale: float) -> str:
    """What makes an MPII person unusable though its fields parse ('' if nothing): a crop needs
    a finite ``objpos`` and a positive ``scale``, PCKh a head box of positive size."""
    if not np.isfinite(keypoints).all():
        return "a joint's x or y is not finite"
    if not np.isfinite(center).all():
        return f"objpos is {center.tolist()}"
    if not (np.isfinite(scale) and scale > 0):
        return f"scale is {scale}"
    if not (np.isfinite(head).all() and head[2] > head[0] and head[3] > head[1]):
        return f"head box x1 y1 x2 y2 is {head.tolist()}"
    return ""


def read_eft(path: Path) -> list:
    """The items of an EFT fits file (``{"data": [...]}``), unchecked: a fit names its person
    by image and keypoints, not by ``annotId`` (see :mod:`pare.data.packing.mpii_match`).
    Raises :class:`DatasetLayoutError` naming the file when it is missing, not JSON, or has no
    ``data`` list."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(
            f"EFT fits not found: {path} (e.g. MPII_ver01.json from the EFT release)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(
            f"{path}: not readable JSON ({e}); the file is truncated or corrupt, download it again"
        ) from None
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise DatasetLayoutError(
            f"{path}: not EFT fits (expected {{'data': [{{'imageName', 'parm_pose', ...}}]}}); "
            "pass the EFT release's MPII_ver01.json"
        )
    return items
