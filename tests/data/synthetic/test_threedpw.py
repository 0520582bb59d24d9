"""Synthetic 3DPW, read back the way users' code reads the real files."""

import hashlib
import pickle

import numpy as np
import pytest
import simplejpeg

from pare.data.synthetic.threedpw import Synthetic3DPWConfig, make_3dpw, split_plan
from pare.safe_pickle import load_pickle

WIDTH, HEIGHT, FRAMES = 135, 240, 8
PER_ACTOR = {
    "genders",
    "betas",
    "betas_clothed",
    "v_template_clothed",
    "texture_maps",
    "poses",
    "trans",
    "poses_60Hz",
    "trans_60Hz",
    "jointPositions",
    "poses2d",
    "campose_valid",
}
SHARED = {"sequence", "cam_poses", "cam_intrinsics", "img_frame_ids"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("3dpw")
    paths = make_3dpw(
        root,
        Synthetic3DPWConfig(sequences=4, frames=FRAMES, seed=5, width=WIDTH, height=HEIGHT),
        progress=False,
    )
    return root, paths


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # how SPIN, VIBE and PARE read 3DPW


def test_layout(dataset):
    root, paths = dataset
    assert sorted({p.parent.name for p in paths}) == ["test", "train", "validation"]
    for path in paths:
        seq = _load(path)
        assert seq["sequence"] == path.stem
        images = sorted((root / "imageFiles" / path.stem).glob("*.jpg"))
        assert [p.name for p in images] == [f"image_{i:05d}.jpg" for i in range(FRAMES)]
        header = simplejpeg.decode_jpeg_header(images[0].read_bytes())
        assert header[:2] == (HEIGHT, WIDTH)


def test_python2_pickle_format(dataset):
    _, paths = dataset
    raw = paths[0].read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw and b"numpy._core" not in raw
    assert load_pickle(paths[0]).keys() == _load(paths[0]).keys()  # the restricted reader agrees


def test_keys_types_and_shapes(dataset):
    _, paths = dataset
    for path in paths:
        seq = _load(path)
        assert set(seq) == PER_ACTOR | SHARED
        actors = len(seq["genders"])
        assert actors in (1, 2)
        assert all(len(seq[k]) == actors and isinstance(seq[k], list) for k in PER_ACTOR)
        assert isinstance(seq["sequence"], str)
        n = len(seq["img_frame_ids"])
        assert n == FRAMES
        np.testing.assert_array_equal(seq["img_frame_ids"], 2 * np.arange(n))
        assert seq["cam_poses"].shape == (n, 4, 4) and seq["cam_poses"].dtype == np.float64
        assert seq["cam_intrinsics"].shape == (3, 3) and seq["cam_intrinsics"].dtype == np.float64
        # Image size from intrinsics, as readers derive it: w = 2 cx, h = 2 cy.
        assert (2 * seq["cam_intrinsics"][0, 2], 2 * seq["cam_intrinsics"][1, 2]) == (WIDTH, HEIGHT)
        rot = seq["cam_poses"][:, :3, :3]
        np.testing.assert_allclose(
            rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9
        )
        np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-9)
        np.testing.assert_array_equal(
            seq["cam_poses"][:, 3], np.broadcast_to([0, 0, 0, 1.0], (n, 4))
        )
        for a in range(actors):
            assert seq["genders"][a] in ("m", "f")
            betas = seq["betas"][a]
            assert betas.shape in ((10,), (300,)) and betas.dtype == np.float64
            assert not betas[10:].any()
            assert seq["betas_clothed"][a].shape == (10,)
            assert seq["v_template_clothed"][a].shape == (6890, 3)
            tex = seq["texture_maps"][a]
            assert tex.ndim == 3 and tex.shape[2] == 3 and tex.dtype == np.uint8
            assert seq["poses"][a].shape == (n, 72) and seq["poses"][a].dtype == np.float64
            assert seq["trans"][a].shape == (n, 3)
            assert seq["jointPositions"][a].shape == (n, 72)
            assert seq["poses2d"][a].shape == (n, 3, 18)
            assert seq["campose_valid"][a].shape == (n,)
            assert set(np.unique(seq["campose_valid"][a].astype(bool))) <= {True, False}
            # 60 Hz arrays, indexed by img_frame_ids, give the 30 Hz ones.
            np.testing.assert_array_equal(
                seq["poses_60Hz"][a][seq["img_frame_ids"]], seq["poses"][a]
            )
            np.testing.assert_array_equal(
                seq["trans_60Hz"][a][seq["img_frame_ids"]], seq["trans"][a]
            )


def test_variety_invalid_frames_and_occlusion(dataset):
    _, paths = dataset
    seqs = [_load(p) for p in paths]
    assert {len(s["genders"]) for s in seqs} == {1, 2}
    for s in seqs:
        for valid in s["campose_valid"]:
            assert 0 < (~valid.astype(bool)).sum() <= 0.5 * len(valid)  # some invalid frames
        # Smooth motion: joint angles change little between 30 Hz frames, but they change.
        step = np.abs(np.diff(s["poses"][0][:, 3:], axis=0)).max()
        assert 0 < step < 0.5
    # Partial detections: frames with enough joints found, yet some joints missing.
    partial = [
        ((kp[:, 2] > 0).sum(-1) >= 6) & ((kp[:, 2] == 0).sum(-1) > 0)
        for s in seqs
        for kp in s["poses2d"]
    ]
    assert any(p.any() for p in partial)


# OpenPose-18 entries that are SMPL joints: (OpenPose index, SMPL index).
SHARED_JOINTS = [
    (1, 12),
    (2, 17),
    (3, 19),
    (4, 21),
    (5, 16),
    (6, 18),
    (7, 20),
    (8, 2),
    (9, 5),
    (10, 8),
    (11, 1),
    (12, 4),
    (13, 7),
]


def test_poses2d_are_the_projected_joints(dataset):
    """Detected OpenPose joints lie within 1 px of jointPositions projected with the camera."""
    _, paths = dataset
    checked = 0
    for path in paths:
        seq = _load(path)
        k = seq["cam_intrinsics"]
        for a in range(len(seq["genders"])):
            joints = seq["jointPositions"][a].reshape(-1, 24, 3)
            for i in range(len(joints)):
                kp = seq["poses2d"][a][i]  # (3, 18): x, y, confidence
                conf = kp[2]
                if not conf.any():
                    assert not kp.any()  # frames with too few detections are all zero
                    continue
                assert (conf > 0).sum() >= 6
                cam = seq["cam_poses"][i]
                world = joints[i]
                x_cam = world @ cam[:3, :3].T + cam[:3, 3]
                uvw = x_cam @ k.T
                proj = uvw[:, :2] / uvw[:, 2:]
                for op, smpl in SHARED_JOINTS:
                    if conf[op] > 0:
                        assert np.hypot(*(kp[:2, op] - proj[smpl])) < 1.0
                        checked += 1
                    else:
                        assert kp[0, op] == 0 and kp[1, op] == 0
    assert checked > 100


def test_deterministic_for_a_seed(tmp_path):
    cfg = Synthetic3DPWConfig(sequences=1, frames=2, seed=11, width=64, height=96)
    digests = []
    for run in ("a", "b"):
        make_3dpw(tmp_path / run, cfg, progress=False)
        files = sorted(p for p in (tmp_path / run).rglob("*") if p.is_file())
        digests.append(
            [
                (p.relative_to(tmp_path / run), hashlib.sha256(p.read_bytes()).hexdigest())
                for p in files
            ]
        )
    assert digests[0] == digests[1]
    other = make_3dpw(
        tmp_path / "c",
        Synthetic3DPWConfig(sequences=1, frames=2, seed=12, width=64, height=96),
        progress=False,
    )
    first = next((tmp_path / "a" / "sequenceFiles").rglob("*.pkl"))
    assert not np.array_equal(_load(other[0])["poses"][0], _load(first)["poses"][0])


def test_split_plan_ratio_and_activities():
    plan = split_plan(16, (3, 1, 0))
    splits = [split for split, _ in plan]
    assert splits[:8] == ["train"] * 3 + ["validation"] + ["train"] * 3 + ["validation"]
    assert splits.count("train") == 12 and splits.count("validation") == 4
    for split in ("train", "validation"):
        acts = [activity for s, activity in plan if s == split]
        # Every activity once in each three sequences of a split, in order.
        assert all(
            set(acts[i : i + 3]) == {"walk", "wave", "squat"} for i in range(0, len(acts) - 2, 3)
        )
    assert [s for s, _ in split_plan(6)] == ["train", "validation", "test"] * 2
    with pytest.raises(ValueError, match="split ratio"):
        split_plan(3, (0, 0, 0))


def test_split_ratio_writes_sequences_where_planned(tmp_path):
    paths = make_3dpw(
        tmp_path,
        Synthetic3DPWConfig(sequences=3, frames=2, width=64, height=96, split_ratio=(2, 1, 0)),
        progress=False,
    )
    assert [p.parent.name for p in paths] == ["train", "train", "validation"]
    assert [p.stem.split("_")[1] for p in paths] == ["walk", "wave", "walk"]


def test_root_records_the_body_model(dataset):
    from pare.body import body_model_identity, read_body_model_record

    root, _ = dataset
    assert read_body_model_record(root) == body_model_identity("standin")
