"""Predictions in the official 3DPW evaluator's format (aymenmir1/3dpw-eval, ``evaluate.py``).

The evaluator is run as ``python evaluate.py INPUT_DIR OUTPUT_DIR`` and reads

- ``INPUT_DIR/ref/{train,validation,test}/<sequence>.pkl``: 3DPW's ``sequenceFiles``;
- ``INPUT_DIR/ref/basicmodel_m_lbs_10_207_0_v1.0.0.pkl`` and ``basicModel_f_...``: SMPL's
  gendered model files (the ground truth is the gendered fit);
- ``INPUT_DIR/res/{train,validation,test}/<sequence>.pkl``: one prediction per ground-truth
  file, same name, holding ``jointPositions`` (P, N, 24, 3), the 24 SMPL joints in metres in
  the camera frame, and ``orientations`` (P, N, 9, 3, 3), the global rotations of SMPL parts
  0, 1, 2, 4, 5, 16, 17, 18, 19, for P actors and N frames.

It pairs the two sorted file lists (asserting equal counts) and scores only when the
predictions cover ``NUM_SEQS = 87`` actor tracks, every track of all three splits; with fewer
it writes a ``scores.txt`` without those metrics and no error. :func:`write_evaluator_input`
builds such an ``INPUT_DIR``: ``res/`` for the splits predicted, ``ref/<split>`` linked to the
dataset's ``sequenceFiles/<split>`` for exactly those splits, and the SMPL files linked when the
body-model folder has them; :meth:`EvaluatorInput.instructions` says how to score it (for
fewer than 87 tracks, with ``NUM_SEQS`` set to the number written).

The evaluator scores the frames it counts as valid (camera pose aligned, 2D pose detected);
frames without a prediction stay zero. Every ground-truth sequence gets a file shaped like it,
and the valid frames that have no prediction (the packer skipped them, e.g. fewer than two
confident keypoints or an unreadable image) are counted, since the evaluator will score those
zeros.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
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
    truth: dict[str, dict[str, np.ndarray]],
) -> tuple[dict[str, dict[str, dict[str, np.ndarray]]], int]:
    """Per split and sequence the evaluator's arrays, and how many scored frames have no
    prediction.

    ``keys`` are sample keys (``3dpw_<sequence>_a<actor>_f<frame>``) with their rows of
    ``joint_positions`` (K, 24, 3) and ``orientations`` (K, 9, 3, 3). ``truth`` maps each split
    to its :func:`ground_truth_frames`; every sequence of those splits gets arrays shaped like
    its ground truth. Raises ``ValueError`` for a prediction outside them (shards packed from
    another split or dataset, or an actor or frame the ground truth does not have)."""
    split_of = {seq: split for split, frames in truth.items() for seq in frames}
    by_sequence: dict[str, list[tuple[int, int, int]]] = {}
    for row, key in enumerate(keys):
        sequence, actor, frame = parse_3dpw_key(key)
        by_sequence.setdefault(sequence, []).append((row, actor, frame))
    unknown = sorted(set(by_sequence) - set(split_of))
    if unknown:
        raise ValueError(
            f"sequences {unknown[:3]} are not in the ground truth's splits {sorted(truth)}: were "
            "the shards packed from another split?"
        )
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {split: {} for split in truth}
    missing = 0
    for sequence, split in sorted(split_of.items()):
        valid = truth[split][sequence]  # (P, N) frames the evaluator scores
        actors, frames = valid.shape
        joints = np.zeros((actors, frames, 24, 3))
        rotations = np.zeros((actors, frames, len(ORIENTATION_PARTS), 3, 3))
        predicted = np.zeros((actors, frames), bool)
        for row, actor, frame in by_sequence.get(sequence, []):
            if actor >= actors or frame >= frames:
                raise ValueError(
                    f"{sequence} actor {actor} frame {frame} is outside the ground truth's "
                    f"{actors} actors x {frames} frames"
                )
            joints[actor, frame] = joint_positions[row]
            rotations[actor, frame] = orientations[row]
            predicted[actor, frame] = True
        missing += int((valid & ~predicted).sum())
        out[split][sequence] = {"jointPositions": joints, "orientations": rotations}
    return out, missing


# The evaluator's constants (its evaluate.py): the splits it globs, in order, and the number of
# actor tracks it needs before it scores (34 + 16 + 37 in the real dataset).
EVALUATOR_SPLITS = ("train", "validation", "test")
EVALUATOR_TRACKS = 87
# SMPL's gendered files as the evaluator's SMPL.py opens them from ref/, by our folder's names.
EVALUATOR_SMPL_FILES = {
    "SMPL_MALE.pkl": "basicmodel_m_lbs_10_207_0_v1.0.0.pkl",
    "SMPL_FEMALE.pkl": "basicModel_f_lbs_10_207_0_v1.0.0.pkl",
}


@dataclass
class EvaluatorInput:
    """What :func:`write_evaluator_input` wrote: the folder, the prediction files, the actor
    tracks per split, and the SMPL files the evaluator needs that are not in ``ref/``."""

    folder: Path
    files: list[Path]
    tracks: dict[str, int]
    smpl_missing: list[str]

    @property
    def total_tracks(self) -> int:
        return sum(self.tracks.values())

    def instructions(self) -> str:
        """How to score this folder with the official evaluator, step by step."""
        folder = self.folder.resolve()
        splits = ", ".join(f"{s} ({n} tracks)" for s, n in self.tracks.items())
        lines = [f"official 3DPW evaluator input: {folder} holds {splits}"]
        step = 1
        if self.smpl_missing:
            lines.append(
                f"{step}. put SMPL's gendered .pkl files in {folder / 'ref'} as "
                + " and ".join(self.smpl_missing)
            )
            step += 1
        lines.append(
            f"{step}. set up the evaluator: git clone https://github.com/aymenmir1/3dpw-eval "
            "and its environment (scripts/install_prep.sh: Python 3.7, numpy, scipy, "
            "opencv-python, numpy-quaternion, chumpy); skip its data download, ref/ is here"
        )
        step += 1
        if self.total_tracks != EVALUATOR_TRACKS:
            lines.append(
                f"{step}. it scores only {EVALUATOR_TRACKS} tracks (all three splits); for these "
                f"{self.total_tracks}, in its evaluate.py set NUM_SEQS = {self.total_tracks}: "
                f"sed -i 's/^NUM_SEQS = {EVALUATOR_TRACKS}$/NUM_SEQS = {self.total_tracks}/' "
                "evaluate.py"
            )
            step += 1
        lines.append(
            f"{step}. cd 3dpw-eval && python evaluate.py {folder} {folder / 'scores'}; "
            f"the numbers are in {folder / 'scores' / 'scores.txt'}"
        )
        return "\n".join(lines)


def write_evaluator_input(
    predictions: dict[str, dict[str, dict[str, np.ndarray]]],
    folder: Path,
    dataset_root: Path,
    body_model_folder: Path | None = None,
) -> EvaluatorInput:
    """Write the evaluator's ``INPUT_DIR`` (see the module docstring) for the splits in
    ``predictions`` (:func:`assemble_3dpw_predictions`'s first result).

    ``res/`` is replaced as a whole (written under a temporary name, then renamed), so stale
    files of an earlier export never pair with the wrong ground truth. ``ref/<split>`` become
    links to ``dataset_root/sequenceFiles/<split>`` for the splits written, and links for other
    splits are removed; the SMPL files are linked from ``body_model_folder`` when it has them and
    ``ref/`` does not. ``HOW_TO_SCORE.txt`` holds :meth:`EvaluatorInput.instructions`.

    Raises ``ValueError`` for a split the evaluator does not read, or a real folder
    ``ref/<split>`` for a split not written (it would pair with nothing); ``FileNotFoundError``
    for a missing ``sequenceFiles/<split>``."""
    folder, dataset_root = Path(folder), Path(dataset_root)
    unknown = sorted(set(predictions) - set(EVALUATOR_SPLITS))
    if unknown:
        raise ValueError(f"3DPW splits {unknown}: the evaluator reads only {EVALUATOR_SPLITS}")
    ref = folder / "ref"
    ref.mkdir(parents=True, exist_ok=True)
    for split in EVALUATOR_SPLITS:
        link = ref / split
        if split in predictions:
            target = (dataset_root / "sequenceFiles" / split).resolve()
            if not target.is_dir():
                raise FileNotFoundError(f"{target} not found: pass the 3DPW root as --dataset-root")
            if link.is_symlink():
                link.unlink()
            elif link.exists():
                if link.resolve() == target:
                    continue
                raise ValueError(f"{link} exists and is not a link to {target}: move it away")
            link.symlink_to(target, target_is_directory=True)
        elif link.is_symlink():
            link.unlink()
        elif link.exists():
            raise ValueError(
                f"{link} holds a split that was not exported: the evaluator would pair it with "
                "nothing; move it away or export that split too"
            )
    missing_smpl = []
    for ours, theirs in EVALUATOR_SMPL_FILES.items():
        source = Path(body_model_folder or "") / ours
        if not (ref / theirs).exists():
            if body_model_folder is not None and source.is_file():
                (ref / theirs).unlink(missing_ok=True)  # a dangling link
                (ref / theirs).symlink_to(source.resolve())
            else:
                missing_smpl.append(theirs)

    staging = Path(tempfile.mkdtemp(prefix=".res-", dir=folder))
    files, tracks = [], {}
    for split in EVALUATOR_SPLITS:
        if split not in predictions:
            continue
        (staging / split).mkdir()
        tracks[split] = 0
        for sequence, arrays in sorted(predictions[split].items()):
            write_prediction_file(staging / split / f"{sequence}.pkl", arrays)
            files.append(folder / "res" / split / f"{sequence}.pkl")
            tracks[split] += len(arrays["jointPositions"])
    res = folder / "res"
    old = folder / f".res-old-{os.getpid()}"
    if res.exists():
        res.rename(old)
    staging.rename(res)
    shutil.rmtree(old, ignore_errors=True)
    result = EvaluatorInput(folder, files, tracks, missing_smpl)
    write_bytes_atomic(folder / "HOW_TO_SCORE.txt", (result.instructions() + "\n").encode())
    return result


def write_prediction_file(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """One sequence's prediction pickle (``jointPositions``, ``orientations``), atomically.
    Protocol 2 with numpy 1's module names: the evaluator's own setup is Python 3.7 with numpy
    <= 1.21, which has no ``numpy._core``."""
    return write_bytes_atomic(Path(path), dumps_numpy1(arrays))


def read_3dpw_predictions(path: Path) -> dict[str, np.ndarray]:
    """An exported prediction file, read back through the restricted unpickler."""
    data = load_pickle(path)
    return {k: np.asarray(v) for k, v in data.items()}
