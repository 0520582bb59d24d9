"""Predictions in the official 3DPW evaluator's format: one pickle per sequence, named like the
ground truth's ``sequenceFiles/<split>/<sequence>.pkl``, holding

- ``jointPositions`` (P, N, 24, 3): the 24 SMPL joints in metres, camera frame;
- ``orientations`` (P, N, 9, 3, 3): global rotations of SMPL parts 0, 1, 2, 4, 5, 16, 17, 18, 19,

for P actors and N frames. The evaluator reads only the frames it counts as valid (camera pose
aligned, 2D pose detected), so frames without a prediction stay zero. P and N come from the ground
truth's sequence files when the dataset root is given, otherwise from the largest actor and frame
index predicted.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pare.body.joints import SMPL_PARENTS
from pare.evaluation import parse_3dpw_key
from pare.geometry import crop_camera_to_full, global_rotations
from pare.io_utils import write_bytes_atomic
from pare.safe_pickle import load_pickle

ORIENTATION_PARTS = (0, 1, 2, 4, 5, 16, 17, 18, 19)


def export_fields(pred: dict, batch: dict) -> dict[str, np.ndarray]:
    """Per-sample arrays for :func:`write_3dpw_predictions`, from a model's predictions and the
    evaluation batch they came from (its input size and crop intrinsics)."""
    size = batch["image"].shape[-1]
    translation = crop_camera_to_full(pred["camera"], batch["intrinsics"].to(pred["camera"]), size)
    joints = pred["joints_3d"].double() + translation[:, None]  # (B, 24, 3) camera frame
    rotations = global_rotations(pred["rotmat"].double(), SMPL_PARENTS)[:, ORIENTATION_PARTS]
    return {
        "joint_positions": joints.cpu().numpy(),
        "orientations": rotations.cpu().numpy(),  # (B, 9, 3, 3)
    }


def sequence_shapes(dataset_root: Path, split: str) -> dict[str, tuple[int, int]]:
    """(actors, frames) of every ground-truth sequence of a 3DPW split."""
    folder = Path(dataset_root) / "sequenceFiles" / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: pass the 3DPW root (with sequenceFiles/) and its split"
        )
    shapes = {}
    for path in sorted(folder.glob("*.pkl")):
        seq = load_pickle(path)
        shapes[path.stem] = (len(seq["poses"]), len(seq["poses"][0]))
    return shapes


def write_3dpw_predictions(
    keys: list[str],
    joint_positions: np.ndarray,
    orientations: np.ndarray,
    out_dir: Path,
    shapes: dict[str, tuple[int, int]] | None = None,
) -> list[Path]:
    """Write one ``<sequence>.pkl`` per sequence under ``out_dir``; returns the paths."""
    by_sequence: dict[str, list[tuple[int, int, int]]] = {}
    for row, key in enumerate(keys):
        sequence, actor, frame = parse_3dpw_key(key)
        by_sequence.setdefault(sequence, []).append((row, actor, frame))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for sequence, rows in sorted(by_sequence.items()):
        if shapes is not None:
            if sequence not in shapes:
                raise ValueError(
                    f"sequence {sequence!r} is not in the ground truth's split: were the shards "
                    "packed from another split?"
                )
            actors, frames = shapes[sequence]
        else:
            actors = 1 + max(a for _, a, _ in rows)
            frames = 1 + max(f for _, _, f in rows)
        joints = np.zeros((actors, frames, 24, 3))
        rotations = np.zeros((actors, frames, len(ORIENTATION_PARTS), 3, 3))
        for row, actor, frame in rows:
            if actor >= actors or frame >= frames:
                raise ValueError(
                    f"{sequence} actor {actor} frame {frame} is outside the ground truth's "
                    f"{actors} actors x {frames} frames"
                )
            joints[actor, frame] = joint_positions[row]
            rotations[actor, frame] = orientations[row]
        # Protocol 2 reads in every Python the evaluator may run under.
        data = pickle.dumps({"jointPositions": joints, "orientations": rotations}, protocol=2)
        written.append(write_bytes_atomic(out_dir / f"{sequence}.pkl", data))
    return written


def read_3dpw_predictions(path: Path) -> dict[str, np.ndarray]:
    """An exported prediction file, read back through the restricted unpickler."""
    data = load_pickle(path)
    return {k: np.asarray(v) for k, v in data.items()}
