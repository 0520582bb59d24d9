"""Export for the official 3DPW evaluator: the camera conversion, the global part rotations and
the per-sequence files, each checked against an independent computation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare.body.joints import SMPL_PARENTS
from pare.export import (
    EVALUATOR_SPLITS,
    EVALUATOR_TRACKS,
    ORIENTATION_PARTS,
    assemble_3dpw_predictions,
    export_fields,
    ground_truth_frames,
    read_3dpw_predictions,
    write_evaluator_input,
    write_prediction_file,
)
from pare.geometry import crop_camera_to_full, global_rotations


def test_full_camera_translation_reproduces_the_weak_perspective_image():
    rng = np.random.default_rng(0)
    size = 128
    cam = torch.tensor([[0.9, 0.1, -0.2], [1.3, -0.3, 0.05]], dtype=torch.float64)
    k = torch.tensor(
        [
            [[300.0, 0, 40.0], [0, 300.0, 90.0], [0, 0, 1]],
            [[150.0, 0, 64.0], [0, 150.0, 64], [0, 0, 1]],
        ],
        dtype=torch.float64,
    )
    t = crop_camera_to_full(cam, k, size).numpy()
    # The body's origin: weak perspective puts it at S/2 + s S/2 t in input pixels.
    for b in range(2):
        s, tx, ty = cam[b].numpy()
        expected = size / 2 + s * size / 2 * np.array([tx, ty])
        fx, fy, cx, cy = k[b, 0, 0], k[b, 1, 1], k[b, 0, 2], k[b, 1, 2]
        pinhole = np.array([fx * t[b, 0] / t[b, 2] + cx, fy * t[b, 1] / t[b, 2] + cy])
        np.testing.assert_allclose(pinhole, expected, atol=1e-9)
        # and a body-sized offset lands where weak perspective puts it, up to perspective
        x = rng.normal(0, 0.05, 3)
        u = fx * (x[0] + t[b, 0]) / (x[2] + t[b, 2]) + cx
        assert abs(u - (size / 2 + s * size / 2 * (x[0] + tx))) < 0.05 * size


def test_global_rotations_follow_the_kinematic_chain_like_scipy():
    local = Rotation.random(2 * 24, random_state=3)
    rotmat = torch.as_tensor(local.as_matrix()).view(2, 24, 3, 3)
    out = global_rotations(rotmat, SMPL_PARENTS).numpy()
    for b in range(2):
        chain = {}
        for j in range(24):
            r = local[b * 24 + j]
            chain[j] = r if SMPL_PARENTS[j] < 0 else chain[SMPL_PARENTS[j]] * r
            np.testing.assert_allclose(out[b, j], chain[j].as_matrix(), atol=1e-12)


def test_export_round_trip_gives_each_key_its_joints_and_orientations(tmp_path):
    rng = np.random.default_rng(1)
    keys = [
        "3dpw_downtown_walk_00_a1_f00007",
        "3dpw_downtown_walk_00_a0_f00002",
        "3dpw_outdoors_fencing_01_a0_f00004",
    ]
    joints = rng.normal(size=(3, 24, 3))
    orient = Rotation.random(27, random_state=4).as_matrix().reshape(3, 9, 3, 3)
    walk_valid = np.zeros((2, 10), bool)
    walk_valid[1, 5:9] = walk_valid[0, 2] = True  # scored: (1, 5..8) and (0, 2)
    truth = {
        "test": {"downtown_walk_00": walk_valid, "unused_00": np.ones((1, 3), bool)},
        "validation": {"outdoors_fencing_01": np.ones((1, 5), bool)},
    }
    predictions, missing = assemble_3dpw_predictions(keys, joints, orient, truth)
    # Every ground-truth sequence of each split gets arrays; scored frames without a prediction
    # are counted: walk (1, 5), (1, 6), (1, 8); fencing 0..3; all 3 of unused.
    assert {split: sorted(seqs) for split, seqs in predictions.items()} == {
        "test": ["downtown_walk_00", "unused_00"],
        "validation": ["outdoors_fencing_01"],
    }
    assert missing == 3 + 4 + 3
    path = write_prediction_file(tmp_path / "walk.pkl", predictions["test"]["downtown_walk_00"])
    walk = read_3dpw_predictions(path)
    assert walk["jointPositions"].shape == (2, 10, 24, 3)
    assert walk["orientations"].shape == (2, 10, 9, 3, 3)
    np.testing.assert_array_equal(walk["jointPositions"][1, 7], joints[0])
    np.testing.assert_array_equal(walk["jointPositions"][0, 2], joints[1])
    np.testing.assert_array_equal(walk["orientations"][0, 2], orient[1])
    filled = np.ones((2, 10), bool)
    filled[1, 7] = filled[0, 2] = False
    assert not walk["jointPositions"][filled].any()  # frames without a prediction stay zero
    fencing = predictions["validation"]["outdoors_fencing_01"]
    np.testing.assert_array_equal(fencing["jointPositions"][0, 4], joints[2])
    with pytest.raises(ValueError, match="outside the ground truth"):
        small = {**truth, "test": {**truth["test"], "downtown_walk_00": np.ones((1, 10), bool)}}
        assemble_3dpw_predictions(keys, joints, orient, small)
    with pytest.raises(ValueError, match="not in the ground truth"):
        assemble_3dpw_predictions(keys, joints, orient, {"test": truth["test"]})


def _evaluator_pairs(input_dir):
    """The official evaluator's file pairing and track count, written from its evaluate.py
    (aymenmir1/3dpw-eval, ``get_paths``, ``get_data``): for train, validation and test, glob
    ``<dir>/<split>/*.pkl`` under ref/ and res/; assert equal counts; sort each whole list and
    zip; count the actor tracks (len of the ground truth's genders) it reads predictions for."""
    import glob
    import os

    from pare.safe_pickle import load_pickle

    gt, pred = [], []
    for key in ("train", "validation", "test"):
        gt += sorted(glob.glob(os.path.join(input_dir, "ref", key, "") + "*.pkl"))
        pred += sorted(glob.glob(os.path.join(input_dir, "res", key, "") + "*.pkl"))
    assert len(gt) == len(pred)
    pairs, tracks = list(zip(sorted(gt), sorted(pred), strict=True)), 0
    for path_gt, path_pred in pairs:
        data_gt, data_pred = load_pickle(path_gt), load_pickle(path_pred)
        for i in range(len(data_gt["genders"])):
            valid = np.asarray(data_gt["campose_valid"][i]).astype(bool)
            # its check_valid_inds, then its indexing of the prediction
            valid &= np.abs(np.asarray(data_gt["poses2d"][i])).mean(axis=(1, 2)) != 0
            np.asarray(data_pred["jointPositions"])[i, np.where(valid)[0]]
            tracks += 1
    return pairs, tracks


def _export_splits(raw, splits, folder, body_folder=None):
    truth = {split: ground_truth_frames(raw / "3dpw", split) for split in splits}
    keys = [
        f"3dpw_{seq}_a{a}_f{f:05d}"
        for frames in truth.values()
        for seq, valid in frames.items()
        for a, f in zip(*np.nonzero(valid), strict=True)
    ]
    joints, orient = np.ones((len(keys), 24, 3)), np.zeros((len(keys), 9, 3, 3))
    predictions, missing = assemble_3dpw_predictions(keys, joints, orient, truth)
    assert missing == 0
    return write_evaluator_input(predictions, folder, raw / "3dpw", body_folder)


def test_evaluator_input_follows_the_evaluators_path_rules(raw, tmp_path, standin_folder):
    folder = tmp_path / "input_dir"
    # One split: the evaluator pairs every file by name, reads every track, and the
    # instructions give the NUM_SEQS it needs for them.
    one = _export_splits(raw, ["validation"], folder, standin_folder)
    pairs, tracks = _evaluator_pairs(folder)
    assert pairs and all(Path(g).name == Path(p).name for g, p in pairs)
    assert {Path(g).parent.name for g, _ in pairs} == {"validation"}
    assert one.tracks == {"validation": tracks} and one.smpl_missing == []
    assert f"NUM_SEQS = {tracks}" in one.instructions()
    assert (folder / "HOW_TO_SCORE.txt").read_text().strip() == one.instructions()
    for theirs in ("basicmodel_m_lbs_10_207_0_v1.0.0.pkl", "basicModel_f_lbs_10_207_0_v1.0.0.pkl"):
        assert (folder / "ref" / theirs).resolve().parent == standin_folder.resolve()
    stale = folder / "res" / "validation" / "stale.pkl"
    stale.write_bytes(b"")

    # All splits: every ground-truth file has its prediction, and the export replaced res/ as a
    # whole (the stale file is gone).
    every = _export_splits(raw, list(EVALUATOR_SPLITS), folder)
    pairs, tracks = _evaluator_pairs(folder)
    n_files = sum(
        len(list((raw / "3dpw/sequenceFiles" / s).glob("*.pkl"))) for s in EVALUATOR_SPLITS
    )
    assert len(pairs) == n_files and not stale.exists()
    assert every.total_tracks == tracks and set(every.tracks) == set(EVALUATOR_SPLITS)
    if tracks != EVALUATOR_TRACKS:  # the synthetic dataset is smaller than 3DPW's 87 tracks
        assert f"NUM_SEQS = {tracks}" in every.instructions()

    # Back to one split: the other splits' ref links go, so the counts still agree.
    _export_splits(raw, ["test"], folder)
    pairs, _ = _evaluator_pairs(folder)
    assert {Path(g).parent.name for g, _ in pairs} == {"test"}
    assert sorted(p.name for p in (folder / "ref").iterdir() if p.is_symlink() and p.is_dir()) == [
        "test"
    ]
    # A real folder for a split not exported would pair with nothing: refused, naming it.
    (folder / "ref" / "train").mkdir()
    with pytest.raises(ValueError, match=r"ref/train holds a split that was not exported"):
        _export_splits(raw, ["test"], folder)


def test_instructions_for_all_87_tracks_and_missing_smpl_files(tmp_path):
    from pare.export import EvaluatorInput

    full = EvaluatorInput(tmp_path, [], {"train": 34, "validation": 16, "test": 37}, [])
    assert "NUM_SEQS" not in full.instructions()
    assert f"python evaluate.py {tmp_path.resolve()} {tmp_path.resolve() / 'scores'}" in (
        full.instructions()
    )
    part = EvaluatorInput(tmp_path, [], {"test": 37}, ["basicmodel_m_lbs_10_207_0_v1.0.0.pkl"])
    text = part.instructions()
    assert "NUM_SEQS = 37" in text and "basicmodel_m_lbs_10_207_0_v1.0.0.pkl" in text


def test_export_fields_from_predictions():
    rotmat = torch.as_tensor(Rotation.random(24, random_state=5).as_matrix()).float()[None]
    pred = {
        "rotmat": rotmat,
        "camera": torch.tensor([[1.0, 0.0, 0.0]]),
        "smpl_joints": torch.zeros(1, 24, 3),
    }
    size = 224
    f = 5000.0 * size / 224
    batch = {
        "image": torch.zeros(1, 3, size, size, dtype=torch.uint8),
        "intrinsics": torch.tensor([[[f, 0, size / 2], [0, f, size / 2], [0, 0, 1]]]),
    }
    out = export_fields(pred, batch)
    # PARE's own camera (focal 5000 on a 224 crop, centred): tz = 2 f / (S s) = 44.64 m.
    np.testing.assert_allclose(out["joint_positions"][0, 0], [0, 0, 2 * 5000 / 224], rtol=1e-6)
    np.testing.assert_allclose(out["orientations"][0, 0], rotmat[0, 0].double().numpy(), atol=1e-6)
    assert out["orientations"].shape == (1, len(ORIENTATION_PARTS), 3, 3)


def test_ground_truth_frames_are_the_evaluators_valid_frames(raw):
    from pare.safe_pickle import load_pickle

    frames = ground_truth_frames(raw / "3dpw", "validation")
    assert frames
    for name, valid in frames.items():
        seq = load_pickle(raw / "3dpw" / "sequenceFiles" / "validation" / f"{name}.pkl")
        assert valid.shape == (len(seq["poses"]), len(seq["poses"][0]))
        for actor in range(valid.shape[0]):
            for frame in range(valid.shape[1]):
                detected = np.any(np.asarray(seq["poses2d"][actor][frame]) != 0)
                aligned = bool(seq["campose_valid"][actor][frame])
                assert valid[actor, frame] == (detected and aligned)
    with pytest.raises(FileNotFoundError, match="sequenceFiles"):
        ground_truth_frames(raw / "nowhere", "validation")


# Loads a pickle as an interpreter with numpy 1 would: numpy._core does not exist there, and
# Python 3.7's default encoding is ASCII. Prints the arrays' shapes as JSON.
_NUMPY1_LOADER = """
import json, pickle, sys
import numpy as np
from scipy.sparse import spmatrix

class Numpy1(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith(("numpy._core", "scipy.sparse._")):
            raise ModuleNotFoundError(f"No module named {module!r}")
        return super().find_class(module, name)

with open(sys.argv[1], "rb") as f:
    data = Numpy1(f).load()
print(json.dumps({k: list(np.shape(v.toarray() if isinstance(v, spmatrix) else v))
                  for k, v in data.items() if not isinstance(v, str)}))
"""


def test_exported_and_stand_in_pickles_load_without_numpy_core(tmp_path, standin_folder):
    """The official evaluator runs Python 3.7 with numpy <= 1.21 (no numpy._core): every pickle
    the project writes for other tools names numpy 1's modules, and loads there."""
    import json
    import pickletools
    import subprocess
    import sys

    arrays = {"jointPositions": np.zeros((2, 5, 24, 3)), "orientations": np.zeros((2, 5, 9, 3, 3))}
    exported = write_prediction_file(tmp_path / "downtown_walk_00.pkl", arrays)
    for path in (exported, standin_folder / "SMPL_NEUTRAL.pkl"):
        names = [arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"]
        assert names and not any("_core" in n or "sparse._" in n for n in names), names
        out = subprocess.run(
            [sys.executable, "-c", _NUMPY1_LOADER, str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        shapes = json.loads(out.stdout)
        if path == exported:
            assert shapes == {"jointPositions": [2, 5, 24, 3], "orientations": [2, 5, 9, 3, 3]}
        else:
            assert shapes["v_template"] == [6890, 3] and shapes["J_regressor"] == [24, 6890]
