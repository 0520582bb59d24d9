"""Predictions in the official 3DPW evaluator's format: one pickle per sequence, named like the
ground truth's ``sequenceFiles/<split>/<sequence>.pkl``, holding

- ``jointPositions`` (P, N, 24, 3): the 24 SMPL joints in metres, camera frame;
- ``orientations`` (P, N, 9, 3, 3): global rotations of SMPL parts 0, 1, 2, 4, 5, 16, 17, 18, 19,

for P actors and N frames. The evaluator scores the frames it counts as valid (camera pose
aligned, 2D pose detected); frames without a prediction stay zero. With the ground truth's
sequence files (the dataset root), every ground-truth sequence gets a file shaped like it, and the
valid frames that have no prediction (the packer skipped them, e.g. fewer than two confident
keypoints or an unreadable image) are counted, since the evaluator will score those zeros.
Without it, P and N are the largest actor and frame index predicted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pare.body.joints import SMPL_PARENTS
from pare.data.packing.keys import parse_3dpw_key
from pare.geometry import crop_camera_to_full, global_rotations
from pare.io_utils import write_bytes_atomic
from pare.safe_pickle import dumps_numpy1, load_pickle, to_numpy

ORIENTATION_PARTS = (0, 1, 2, 4, 5, 16, 17, 18, 19)


def export_fields(pred: dict, batch: dict) -> dict[str, np.ndarray]:
    """Per-sample ``joint_positions`` (B, 24, 3) in metres, camera frame, and ``orientations``
    (B, 9, 3, 3), gathered by :func:`pare.evaluation.evaluate` (its ``extra``) for
    :func:`assemble_3dpw_predictions`, from a model's predictions and the evaluation batch they
    came from (its crop size and crop intrinsics)."""
    size = batch["image"].shape[-1]
    translation = crop_camera_to_full(pred["camera"], batch["intrinsics"].to(pred["camera"]), size)
    # The evaluator's jointPositions are SMPL's kinematic joints.
    joints = pred["smpl_joints"].double() + translation[:, None]  # (B, 24, 3) camera frame
    rotations = global_rotations(pred["rotmat"].double(), SMPL_PARENTS)[:, ORIENTATION_PARTS]
    return {
        "joint_positions": joints.cpu().numpy(),
        "orientations": rotations.cpu().numpy(),  # (B, 9, 3, 3)
    }


def ground_truth_frames(dataset_root: Path, split: str) -> dict[str, np.ndarray]:
    """The frames the official evaluator scores, (P, N) bool per ground-truth sequence of a 3DPW
    split: camera pose aligned (``campose_valid``) and a 2D pose detected (``poses2d`` not all 0)."""
    folder = Path(dataset_root) / "sequenceFiles" / split
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found: pass the 3DPW root (with sequenceFiles/) and its split"
        )
    frames = {}
    for path in sorted(folder.glob("*.pkl")):
        seq = load_pickle(path)
        frames[path.stem] = np.stack(
            [
                to_numpy(seq["campose_valid"][a]).astype(bool)
                & (np.abs(to_numpy(seq["poses2d"][a])).mean(axis=(1, 2)) != 0)
                for a in range(len(seq["poses"]))
            ]
        )
    if not frames:
        raise FileNotFoundError(f"{folder} holds no sequence files (*.pkl)")
    return frames


def assemble_3dpw_predictions(
    keys: list[str],
    joint_positions: np.ndarray,
    orientations: np.ndarray,
    truth: dict[str, np.ndarray] | None = None,
) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """Per sequence the evaluator's arrays, and how many scored frames have no prediction.

    ``truth`` is :func:`ground_truth_frames`; a prediction outside it is an error (shards
    packed from another split or dataset)."""
    by_sequence: dict[str, list[tuple[int, int, int]]] = {}
    for row, key in enumerate(keys):
        sequence, actor, frame = parse_3dpw_key(key)
        by_sequence.setdefault(sequence, []).append((row, actor, frame))
    if truth is not None:
        unknown = sorted(set(by_sequence) - set(truth))
        if unknown:
            raise ValueError(
                f"sequences {unknown[:3]} are not in the ground truth's split: were the shards "
                "packed from another split?"
            )
    out, missing = {}, 0
    for sequence in sorted(set(by_sequence) | set(truth or {})):
        rows = by_sequence.get(sequence, [])
        if truth is not None:
            actors, frames = truth[sequence].shape
        else:
            actors = 1 + max(a for _, a, _ in rows)
            frames = 1 + max(f for _, _, f in rows)
        joints = np.zeros((actors, frames, 24, 3))
        rotations = np.zeros((actors, frames, len(ORIENTATION_PARTS), 3, 3))
        predicted = np.zeros((actors, frames), bool)
        for row, actor, frame in rows:
            if actor >= actors or frame >= frames:
                raise ValueError(
                    f"{sequence} actor {actor} frame {frame} is outside the ground truth's "
                    f"{actors} actors x {frames} frames"
                )
            joints[actor, frame] = joint_positions[row]
            rotations[actor, frame] = orientations[row]
            predicted[actor, frame] = True
        if truth is not None:
            missing += int((truth[sequence] & ~predicted).sum())
        out[sequence] = {"jointPositions": joints, "orientations": rotations}
    return out, missing


def save_3dpw_predictions(predictions: dict[str, dict], out_dir: Path) -> list[Path]:
    """One ``<sequence>.pkl`` per sequence under ``out_dir``; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Protocol 2 with numpy 1's module names: the evaluator's own setup is Python 3.7 with
    # numpy <= 1.21, which has no numpy._core.
    return [
        write_bytes_atomic(out_dir / f"{sequence}.pkl", dumps_numpy1(arrays))
        for sequence, arrays in sorted(predictions.items())
    ]


def read_3dpw_predictions(path: Path) -> dict[str, np.ndarray]:
    """An exported prediction file, read back through the restricted unpickler."""
    data = load_pickle(path)
    return {k: np.asarray(v) for k, v in data.items()}
