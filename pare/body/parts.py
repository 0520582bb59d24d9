"""Per-vertex SMPL part labels: converting the public segmentations, and checking a label file.

``smpl_part_labels.npy`` holds, for each of SMPL's 6890 vertices, the SMPL joint 0..23 whose part
it belongs to. Everything downstream takes that order for granted: part map label l + 1 is
supervised on the head's part channel l + 1, part attention pools heatmap j into joint j's pose
regressor, and a horizontal flip swaps labels through :data:`pare.body.joints.SMPL_FLIP`. A file
in any other order trains without an error and quietly pairs parts with the wrong joints, so the
loader checks it (:func:`check_part_labels`) and this module's command writes it:

    pare-convert-parts smpl_vert_segmentation.json [--out FILE|DIR] [--body-model PATH]
    pare-convert-parts smpl_partSegmentation_mapping.pkl [--out FILE|DIR] [--body-model PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from pare.body.joints import SMPL_24, SMPL_FLIP
from pare.config import ConfigError
from pare.io_utils import atomic_open
from pare.safe_pickle import load_pickle, to_numpy

NUM_VERTICES = 6890
NUM_PARTS = len(SMPL_24)
PART_LABELS_FILE = "smpl_part_labels.npy"

# Meshcapade's smpl_vert_segmentation.json (https://meshcapade.wiki/SMPL, "Mesh templates &
# samples"; a copy is mmhuman3d's mmhuman3d/core/conventions/segmentation/smpl.py) names its 24
# parts after Mixamo bones. SMPL's part k is the region joint k moves, i.e. the segment distal to
# joint k, which gives this table. Mind the offsets: the file's "spine", "spine1", "spine2" are
# SMPL's spine1, spine2, spine3; its "leftFoot"/"leftToeBase" are SMPL's left_ankle/left_foot;
# "leftArm"/"leftForeArm"/"leftHand"/"leftHandIndex1" are left_shoulder/elbow/wrist/hand; its
# "leftShoulder" is SMPL's left_collar. Keyed in SMPL joint order.
SMPL_TO_SEGMENTATION_NAME = {
    "pelvis": "hips",
    "left_hip": "leftUpLeg",
    "right_hip": "rightUpLeg",
    "spine1": "spine",
    "left_knee": "leftLeg",
    "right_knee": "rightLeg",
    "spine2": "spine1",
    "left_ankle": "leftFoot",
    "right_ankle": "rightFoot",
    "spine3": "spine2",
    "left_foot": "leftToeBase",
    "right_foot": "rightToeBase",
    "neck": "neck",
    "left_collar": "leftShoulder",
    "right_collar": "rightShoulder",
    "head": "head",
    "left_shoulder": "leftArm",
    "right_shoulder": "rightArm",
    "left_elbow": "leftForeArm",
    "right_elbow": "rightForeArm",
    "left_wrist": "leftHand",
    "right_wrist": "rightHand",
    "left_hand": "leftHandIndex1",
    "right_hand": "rightHandIndex1",
}
# The JSON's part names in SMPL joint order: part k of the labels is SEGMENTATION_NAMES[k].
SEGMENTATION_NAMES = tuple(SMPL_TO_SEGMENTATION_NAME[joint] for joint in SMPL_24)

# PARE's data/smpl_partSegmentation_mapping.pkl: a dict whose 'smpl_index' is a (6890,) array of
# SMPL joint indices 0..23. PARE's pare/utils/image_utils.py (get_body_part_texture) colours vertex
# v by smpl_index[v] / 24 and pare/core/trainer.py bins the rendered colour back to smpl_index + 1
# (0 = background) for the 25-class part loss; pare/utils/kp_utils.py (map_smpl_to_common) lists
# the indices in SMPL joint order (0 pelvis, 15 head, 22/23 hands). So it is already our format.
PARE_MAPPING_KEY = "smpl_index"

FIX = (
    "rebuild it with pare-convert-parts from smpl_vert_segmentation.json or PARE's "
    "smpl_partSegmentation_mapping.pkl"
)

# Left/right parts must mirror each other to within this fraction of the body's size (the
# largest extent of its rest-pose bounding box: ~5 cm on a 1.7 m body). The stand-in's pairs
# agree to 11 mm; a boundary moved by one vertex ring shifts a centroid by well under 1 cm,
# while a part that takes in a neighbour's vertices on one side only moves by several cm.
MIRROR_TOLERANCE = 0.03


class PartLabelError(ConfigError):
    """A part-label file or segmentation source that is missing pieces or in the wrong order. A
    ``ConfigError`` (so a ``ValueError``): entry points print it as one line and exit 2."""


def swap_side(name: str) -> str:
    """``leftUpLeg`` <-> ``rightUpLeg`` (the JSON's camelCase names); other names unchanged."""
    for a, b in (("left", "right"), ("right", "left")):
        if name.startswith(a):
            return b + name[len(a) :]
    return name


def flip_from_segmentation_names() -> np.ndarray:
    """The part flip permutation read off the JSON's part names: ``p[k]`` is the part that part
    k becomes in a mirrored image. Equal to :data:`pare.body.joints.SMPL_FLIP` (tested)."""
    index = {name: k for k, name in enumerate(SEGMENTATION_NAMES)}
    return np.array([index[swap_side(name)] for name in SEGMENTATION_NAMES], dtype=np.int64)


# ---- the two public sources -> labels in SMPL joint order ----


def labels_from_vert_segmentation(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Meshcapade's ``smpl_vert_segmentation.json`` (part name -> vertex ids) -> ``(labels, shared)``.

    ``labels`` (6890,) int64 in SMPL joint order, through :data:`SMPL_TO_SEGMENTATION_NAME`, not
    the file's key order. The file lists boundary vertices under both neighbouring parts (496
    of 6890 in the public file, a few under three); such a vertex goes to the part of the highest
    SMPL joint index, which along a kinematic chain is the distal one (SMPL numbers every child
    after its parent) and treats left and right alike. ``shared`` counts those vertices.
    Raises :class:`PartLabelError` (one line, naming the file) for anything else.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PartLabelError(f"{path}: no such file") from None
    except OSError as e:
        raise PartLabelError(f"{path}: cannot read it ({e.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PartLabelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise PartLabelError(
            f"{path}: expected a JSON object of part name -> vertex ids, got {type(data).__name__}"
        )
    missing = [n for n in SEGMENTATION_NAMES if n not in data]
    unknown = sorted(n for n in data if n not in SMPL_TO_SEGMENTATION_NAME.values())
    if missing or unknown:
        raise PartLabelError(
            f"{path}: not SMPL's smpl_vert_segmentation.json (missing parts {missing}, unknown "
            f"parts {unknown}); expected exactly these 24: {', '.join(SEGMENTATION_NAMES)}"
        )
    owner = np.full(NUM_VERTICES, -1, np.int64)
    listed = np.zeros(NUM_VERTICES, np.int64)
    # In SMPL joint order, so a later (higher) part overwrites: the tie rule above.
    for part, name in enumerate(SEGMENTATION_NAMES):
        ids = data[name]
        if not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids
        ):
            raise PartLabelError(f"{path}: part '{name}' is not a list of integer vertex ids")
        ids = np.unique(np.asarray(ids, np.int64))
        if len(ids) == 0:
            raise PartLabelError(f"{path}: part '{name}' lists no vertices")
        if ids[0] < 0 or ids[-1] >= NUM_VERTICES:
            raise PartLabelError(
                f"{path}: part '{name}' has vertex ids {ids[0]}..{ids[-1]}, outside SMPL's "
                f"0..{NUM_VERTICES - 1} (is this the SMPL-X file?)"
            )
        owner[ids] = part
        listed[ids] += 1
    if (owner < 0).any():
        raise PartLabelError(
            f"{path}: {int((owner < 0).sum())} of {NUM_VERTICES} vertices belong to no part "
            f"(the first is vertex {int(np.argmax(owner < 0))})"
        )
    return owner, int((listed > 1).sum())


def labels_from_pare_mapping(path: str | os.PathLike) -> np.ndarray:
    """PARE's ``smpl_partSegmentation_mapping.pkl`` -> labels (6890,) int64, SMPL joint order.

    Read through the restricted unpickler (:func:`pare.safe_pickle.load_pickle`): a Python 2
    pickle of a dict whose ``'smpl_index'`` already is what we store (see
    :data:`PARE_MAPPING_KEY`); other keys are ignored. Raises :class:`PartLabelError`.
    """
    path = Path(path)
    try:
        data = load_pickle(path)
    except FileNotFoundError:
        raise PartLabelError(f"{path}: no such file") from None
    except OSError as e:
        raise PartLabelError(f"{path}: cannot read it ({e.strerror})") from None
    except (ValueError, pickle.UnpicklingError) as e:  # truncated, corrupt or crafted
        raise PartLabelError(str(e)) from None
    if not isinstance(data, dict) or PARE_MAPPING_KEY not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise PartLabelError(
            f"{path}: expected PARE's dict with '{PARE_MAPPING_KEY}' (a (6890,) array of SMPL "
            f"joint ids), got {keys}"
        )
    try:
        index = to_numpy(data[PARE_MAPPING_KEY])
    except ValueError as e:
        raise PartLabelError(f"{path}: '{PARE_MAPPING_KEY}' is not an array ({e})") from None
    if index.dtype.kind not in "iuf" or index.shape != (NUM_VERTICES,):
        raise PartLabelError(
            f"{path}: '{PARE_MAPPING_KEY}' has shape {index.shape} and dtype {index.dtype}, "
            f"expected ({NUM_VERTICES},) integers"
        )
    labels = np.rint(index).astype(np.int64)
    if not np.array_equal(labels, index):
        raise PartLabelError(f"{path}: '{PARE_MAPPING_KEY}' holds non-integer values")
    _check_range(labels, path, fix="")
    return labels


def convert(source: str | os.PathLike) -> tuple[np.ndarray, str]:
    """Either public source -> ``(labels, note)``, picked by suffix (``.json`` or ``.pkl``)."""
    source = Path(source)
    if source.suffix == ".json":
        labels, shared = labels_from_vert_segmentation(source)
        note = f"{shared} vertices listed under several parts went to the higher SMPL joint"
        return labels, note
    if source.suffix == ".pkl":
        return labels_from_pare_mapping(source), "PARE's smpl_index"
    raise PartLabelError(
        f"{source}: unknown source type '{source.suffix}'; expected smpl_vert_segmentation.json "
        "or PARE's smpl_partSegmentation_mapping.pkl"
    )


def write_part_labels(labels: np.ndarray, path: str | os.PathLike) -> Path:
    """``np.save`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_open(path) as f:
        np.save(f, np.asarray(labels, np.int64))
    return Path(path)


# ---- the loader's check ----


def _check_range(labels: np.ndarray, source: str | os.PathLike, fix: str = FIX) -> None:
    """Part ids within 0..23, every part present; ``fix`` ends the message ("" for a source)."""
    fix = f"; {fix}" if fix else ""
    if labels.min() < 0 or labels.max() >= NUM_PARTS:
        hint = " (1-based?)" if labels.min() == 1 and labels.max() == NUM_PARTS else ""
        raise PartLabelError(
            f"{source}: part ids span {labels.min()}..{labels.max()}, expected SMPL joints "
            f"0..{NUM_PARTS - 1}{hint}{fix}"
        )
    absent = sorted(set(range(NUM_PARTS)) - set(np.unique(labels).tolist()))
    if absent:
        names = ", ".join(f"{k} '{SMPL_24[k]}'" for k in absent)
        raise PartLabelError(f"{source}: no vertex has part {names}{fix}")


def check_part_labels(
    labels: np.ndarray, vertices: np.ndarray, joints: np.ndarray, source: str | os.PathLike
) -> None:
    """Refuse part labels that are not in SMPL joint order or whose sides do not mirror.

    ``labels`` (V,), ``vertices`` (V, 3) the rest-pose template, ``joints`` (24, 3) its rest
    joints (``J_regressor @ vertices``). Raises :class:`PartLabelError`, one line naming
    ``source``, what is wrong and the fix.

    Order: the one-to-one assignment of part centroids to joints that minimises the summed
    squared distance must be the identity. Asking each part for its *nearest* joint is not
    robust: part k is the segment distal to joint k, so a long part's centroid (mid-thigh,
    mid-shin) lies about halfway to the child joint and can be nearer to it, and on the
    stand-in the spine3 part's centroid is 87 mm from spine3 but 89 mm from a collar. The
    optimal assignment is the identity whenever, along each chain, the centroids are ordered
    like the joints (in 1D, matching sorted to sorted is optimal for a convex cost), which any
    segmentation along the kinematic tree satisfies; a file in another order (the JSON's key
    order, left and right swapped) puts parts at other places in the body and is refused.

    Mirror: with x mirrored about the body's mid-plane (the mean vertex x), each left part's
    centroid must land on its right partner's (:data:`pare.body.joints.SMPL_FLIP`), and each
    middle part's on itself, within :data:`MIRROR_TOLERANCE` of the body's size: the flip
    augmentation swaps part labels through that table.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(vertices):
        raise PartLabelError(
            f"{source}: shape {labels.shape}, expected ({len(vertices)},) (one label per vertex "
            f"of the body model); {FIX}"
        )
    if labels.dtype.kind not in "iu":
        raise PartLabelError(f"{source}: dtype {labels.dtype}, expected integers; {FIX}")
    _check_range(labels, source)

    counts = np.bincount(labels, minlength=NUM_PARTS)  # (J,)
    centroids = np.zeros((NUM_PARTS, 3))
    np.add.at(centroids, labels, vertices)
    centroids /= counts[:, None]  # (J, 3)
    cost = ((centroids[:, None] - joints[None]) ** 2).sum(-1)  # (J parts, J joints)
    _, assigned = linear_sum_assignment(cost)
    wrong = np.flatnonzero(assigned != np.arange(NUM_PARTS))
    if len(wrong):
        k = int(wrong[0])
        cause = (
            "left and right swapped: SMPL's left is the subject's left, +x"
            if np.array_equal(assigned[wrong], SMPL_FLIP[wrong])
            else "e.g. numbered in smpl_vert_segmentation.json's key order"
        )
        raise PartLabelError(
            f"{source}: not in SMPL joint order: part {k} should be SMPL joint '{SMPL_24[k]}' "
            f"but its vertices lie around '{SMPL_24[assigned[k]]}' ({len(wrong)} of {NUM_PARTS} "
            f"parts misplaced; {cause}); {FIX}"
        )

    size = float(np.ptp(vertices, axis=0).max())
    mirrored = centroids.copy()
    mirrored[:, 0] = 2 * vertices[:, 0].mean() - mirrored[:, 0]
    error = np.linalg.norm(mirrored[SMPL_FLIP] - centroids, axis=1)  # (J,)
    worst = int(np.argmax(error))
    if error[worst] > MIRROR_TOLERANCE * size:
        pair = SMPL_24[SMPL_FLIP[worst]]
        what = (
            f"parts '{SMPL_24[worst]}' and '{pair}' do not mirror each other"
            if pair != SMPL_24[worst]
            else f"part '{pair}' is not symmetric about the body's mid-plane"
        )
        raise PartLabelError(
            f"{source}: {what} (centroids {100 * error[worst]:.1f} cm apart after mirroring in x, "
            f"tolerance {100 * MIRROR_TOLERANCE * size:.1f} cm), so flipped part maps would be "
            f"wrong; {FIX}"
        )


# ---- command line ----


def main(argv: list[str] | None = None) -> int:
    # Imported here: pare.body.model imports this module for the loader's check.
    from pare.body.model import load_rest_pose

    parser = argparse.ArgumentParser(
        prog="pare-convert-parts",
        description="Write smpl_part_labels.npy (SMPL joint order) from a public segmentation.",
    )
    parser.add_argument(
        "source",
        type=Path,
        help="Meshcapade's smpl_vert_segmentation.json or PARE's smpl_partSegmentation_mapping.pkl",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output file, or a folder to write {PART_LABELS_FILE} into (default: beside SOURCE)",
    )
    parser.add_argument(
        "--body-model",
        help="also check the labels against this body model ('standin', a folder or a file) "
        "before writing, as loading will",
    )
    args = parser.parse_args(argv)
    out = args.out or args.source.parent
    if out.is_dir():
        out = out / PART_LABELS_FILE
    try:
        labels, note = convert(args.source)
        if args.body_model:
            vertices, joints = load_rest_pose(args.body_model)
            where = f"{args.source} (converted, checked against body model '{args.body_model}')"
            check_part_labels(labels, vertices, joints, where)
        write_part_labels(labels, out)
    except (PartLabelError, FileNotFoundError, ValueError, pickle.UnpicklingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 1
    checked = f"; checked against {args.body_model}" if args.body_model else ""
    print(f"{args.source} -> {out}: {len(labels)} vertices, {NUM_PARTS} parts ({note}{checked})")
    return 0
