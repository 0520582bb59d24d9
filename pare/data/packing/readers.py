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


@dataclass
class Skips:
    """Counts of skipped samples by reason, with a few examples of each."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, what: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(what)

    def merge(self, other: Skips) -> None:
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
    """Every valid (campose_valid) actor-frame of one sequence; problems are counted in ``skips``."""
    try:
        seq = load_pickle(path)
        missing = [k for k in THREEDPW_KEYS if k not in seq]
        if missing:
            raise ValueError(f"missing keys {missing}")
    except Exception as e:  # any unreadable file is skipped and counted, not fatal
        skips.add("unreadable_sequence", f"{path.name}: {e}")
        return []
    name = str(seq["sequence"])
    cam_poses = to_numpy(seq["cam_poses"]).astype(np.float64)
    intrinsics = to_numpy(seq["cam_intrinsics"]).astype(np.float64)
    frame_ids = np.arange(len(cam_poses))
    out = []
    for actor in range(len(seq["genders"])):
        valid = to_numpy(seq["campose_valid"][actor]).astype(bool)
        poses2d = to_numpy(seq["poses2d"][actor]).astype(np.float64)  # (N, 3, 18)
        gender = {"m": "male", "f": "female"}.get(str(seq["genders"][actor]), "neutral")
        betas = to_numpy(seq["betas"][actor]).astype(np.float64)[:10]
        poses = to_numpy(seq["poses"][actor]).astype(np.float64)
        trans = to_numpy(seq["trans"][actor]).astype(np.float64)
        if (~valid).any():
            skips.add("campose_invalid", f"{name}/{actor}", int((~valid).sum()))
        for i in frame_ids[valid]:
            out.append(PersonFrame3DPW(
                sequence=name, actor=actor, frame=int(i), image=root / "imageFiles" / name / f"image_{i:05d}.jpg",
                keypoints=poses2d[i].T.copy(), pose=poses[i], betas=betas, trans=trans[i], gender=gender,
                cam_pose=cam_poses[i], intrinsics=intrinsics,
            ))  # fmt: skip
    return out


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


def read_mpii(mat_path: Path, skips: Skips, include=None) -> list[PersonMPII]:
    """All people with usable annotations; rects without ``annopoints`` and malformed entries are
    counted in ``skips``. Coordinates become 0-based. ``include(index, name)`` limits the images
    considered (and counted), e.g. to one split."""
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
    annolist = np.atleast_1d(release.annolist)
    img_train = np.atleast_1d(release.img_train).astype(bool)
    people = []
    for i, entry in enumerate(annolist):
        name = str(entry.image.name)
        if include is not None and not include(i, name):
            continue
        rects = entry.annorect
        rects = list(rects.ravel()) if isinstance(rects, np.ndarray) else [rects]
        for r, rect in enumerate(rects):
            what = f"{name}#{r}"
            if not img_train[i]:
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
                people.append(
                    PersonMPII(
                        name, i, r, bool(img_train[i]), kp, visible, head, center, _num(rect.scale)
                    )
                )
            except (AttributeError, ValueError, TypeError) as e:
                skips.add("malformed_annotation", f"{what}: {e}")
    return people


def read_eft(path: Path) -> dict[tuple[str, int], dict]:
    """EFT fits keyed by (image basename, annotId)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(
            f"EFT fits not found: {path} (e.g. MPII_ver01.json from the EFT release)"
        )
    try:
        data = json.loads(path.read_text())
        return {(Path(item["imageName"]).name, int(item["annotId"])): item for item in data["data"]}
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetLayoutError(
            f"{path}: not readable JSON ({e}); the file is truncated or corrupt, download it again"
        ) from None
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetLayoutError(
            f"{path}: not EFT fits (expected {{'data': [{{'imageName', 'annotId', ...}}]}}; "
            f"{type(e).__name__}: {e})"
        ) from None
