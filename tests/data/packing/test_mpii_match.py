"""MPII's person-level validation lists and EFT fits joined to the right person (#17 items 7, 8).

Hand-built inputs with known answers: a .mat whose one image holds a validation person and a
training person, HRNet-style and text lists, EFT fits with swapped annotIds, a fit midway
between two people and fits with missing fields."""

import io
import json
import tarfile

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pare.body.joints import MPII16_TO_49
from pare.data.packing.mpii_match import (
    match_eft_fits,
    read_val_list,
    validation_people,
)
from pare.data.packing.pack import pack_mpii
from pare.data.packing.readers import MPIIRect, PersonMPII, Skips
from pare.data.packing.shard_writer import ShardOptions
from pare.data.synthetic.mpii import _release_struct

OPTS = ShardOptions(maxcount=6, progress=False)
IMAGE = "000000001.jpg"


def _keys(folder):
    keys = set()
    for shard in folder.glob("*.tar"):
        with tarfile.open(shard) as tar:
            keys |= {m.name.partition(".")[0] for m in tar}
    return keys


def _rect(objpos, joints):
    """An annorect (1-based, as in the .mat): head box above objpos, ``joints`` {id: (x, y)}."""
    x, y = objpos
    one = lambda v: np.array([[float(v)]])  # noqa: E731
    points = [{"x": one(px), "y": one(py), "id": np.array([[j]], np.uint8)} for j, (px, py) in joints.items()]  # fmt: skip
    return {
        "x1": one(x - 10), "y1": one(y - 70), "x2": one(x + 10), "y2": one(y - 50),
        "scale": one(0.6), "objpos": {"x": one(x), "y": one(y)}, "annopoints": {"point": points},
    }  # fmt: skip


@pytest.fixture(scope="module")
def two_people(tmp_path_factory):
    """One 240 x 240 training image: rect 0 (left, 4 joints: fewer than --min-joints 6) and
    rect 1 (right, 10 joints)."""
    root = tmp_path_factory.mktemp("mpii_two")
    (root / "images").mkdir()
    Image.fromarray(np.full((240, 240, 3), 128, np.uint8)).save(root / "images" / IMAGE)
    left = _rect((60, 120), {j: (50 + 3 * j, 60 + 8 * j) for j in range(4)})
    right = _rect((180, 120), {j: (170 + 2 * j, 60 + 8 * j) for j in range(10)})
    entry = {"image": IMAGE, "rects": [left, right], "train": True, "vididx": 1, "frame_sec": 1}
    release = _release_struct([entry], [1], [[]], [("", "", -1)], ["vid00000000"])
    scipy.io.savemat(root / "mpii_human_pose_v1_u12_1.mat", {"RELEASE": release})
    return root


# ----------------------------------------------------------------------------- item 7


@pytest.mark.parametrize("kind", ["text", "hrnet"])
def test_a_validation_person_stays_out_of_train_though_their_image_holds_a_training_person(
    two_people, tmp_path, kind
):
    """The list names rect 0 only. Before, the text line was read as two image names (both
    people went to val, where the training filter then dropped rect 0's 4 joints, and train was
    empty) and HRNet's file was not understood. Now val = {r0} with its 4 joints, train = {r1}."""
    if kind == "text":
        val_list = tmp_path / "valid.txt"
        val_list.write_text(f"# image rect\n{IMAGE} 0\n")
    else:  # HRNet's valid.json: 1-based objpos and scale as in the .mat (here 1 px off)
        val_list = tmp_path / "valid.json"
        people = [{"image": IMAGE, "center": [61.0, 119.0], "scale": 0.6, "joints_vis": [1] * 16}]
        val_list.write_text(json.dumps(people))
    results = {
        split: pack_mpii(two_people, split, tmp_path / split, "standin", OPTS, val_list=val_list)
        for split in ("train", "val")
    }
    assert _keys(tmp_path / "val") == {"mpii_000000001_r0"}
    assert _keys(tmp_path / "train") == {"mpii_000000001_r1"}
    for result in results.values():
        block = json.loads(result["manifest"].read_text())["validation"]
        assert block["people"] == 1 and block["list_entries"] == 1
        assert block["unmatched_entries"] == 0 and block["source"] == str(val_list)


def _rects():
    """Two people in a.jpg (objpos 0-based (100, 200) scale 2, and (400, 200) scale 1.5), an
    unannotated rect in b.jpg."""
    return [
        MPIIRect("a.jpg", 0, 0, True, np.array([100.0, 200.0]), 2.0),
        MPIIRect("a.jpg", 0, 1, True, np.array([400.0, 200.0]), 1.5),
        MPIIRect("b.jpg", 1, 0, False, np.array([50.0, 50.0]), 1.0),
    ]


def test_validation_lists_resolve_people_and_count_unmatched_entries(tmp_path):
    hrnet = tmp_path / "valid.json"
    hrnet.write_text(json.dumps([
        {"image": "a.jpg", "center": [402.0, 200.0], "scale": 1.5},  # rect 1 (2 px off, 1-based)
        {"image": "a.jpg", "center": [250.0, 200.0], "scale": 1.5},  # between: nobody within 5%
        {"image": "a.jpg", "center": [101.0, 201.0], "scale": 3.0},  # rect 0's place, wrong scale
        {"image": "zzz.jpg", "center": [1.0, 1.0], "scale": 1.0},  # not in the file
    ]))  # fmt: skip
    v = validation_people(_rects(), read_val_list(hrnet), str(hrnet))
    assert v.members == {("a.jpg", 1)} and v.people == 1 and v.entries == 4
    assert [u.split(": ", 1)[0] for u in v.unmatched] == [f"{hrnet}[{k}]" for k in (1, 2, 3)]
    assert "zzz.jpg is not in the annotation file" in v.unmatched[2]

    pytorch_pose = tmp_path / "mpii_annotations.json"
    pytorch_pose.write_text(json.dumps([
        {"img_paths": "a.jpg", "objpos": [101.0, 201.0], "scale_provided": 2.0, "isValidation": 1.0},
        {"img_paths": "a.jpg", "objpos": [401.0, 201.0], "scale_provided": 1.5, "isValidation": 0.0},
    ]))  # fmt: skip
    assert validation_people(_rects(), read_val_list(pytorch_pose)).members == {("a.jpg", 0)}

    text = tmp_path / "valid.txt"
    text.write_text("a.jpg 1  # one person\nb.jpg\nc.jpg 0\na.jpg 7\n")
    v = validation_people(_rects(), read_val_list(text), str(text))
    assert v.members == {("a.jpg", 1)} and v.people == 1
    assert [u.split(": ", 1)[0] for u in v.unmatched] == [f"{text}:{n}" for n in (2, 3, 4)]
    assert "a.jpg has no annotated rect 7" in v.unmatched[2]

    old = tmp_path / "images.txt"  # the former format: image names, every person in them
    old.write_text("a.jpg\n")
    v = validation_people(_rects(), read_val_list(old))
    assert v.members == {("a.jpg", 0), ("a.jpg", 1)} and v.people == 2 and not v.unmatched

    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1\na.jpg 1 2\n")
    with pytest.raises(ValueError, match=r"bad\.txt:2: .* not 'IMAGE RECT' or 'IMAGE'"):
        read_val_list(bad)


# ----------------------------------------------------------------------------- item 8


def _person(image, rect, joints):
    """An MPII person with ``joints`` (16, 2) all annotated and a 50 px wide head box (PCKh unit
    0.6 x diagonal = 0.6 x 50 sqrt(2) = 42.4 px)."""
    kp = np.concatenate([joints, np.ones((16, 1))], 1)
    center = joints.mean(0)
    head = np.array([center[0] - 25, center[1] - 100, center[0] + 25, center[1] - 50])
    return PersonMPII(image, 0, rect, True, kp, np.ones(16), head, center, 1.0)


def _fit(image, annot_id, joints=None, center=(0.0, 0.0), drop=()):
    gt = np.zeros((49, 3))
    if joints is not None:
        gt[MPII16_TO_49] = np.concatenate([joints, np.ones((16, 1))], 1)
    fit = {
        "parm_pose": np.broadcast_to(np.eye(3), (24, 3, 3)).tolist(),
        "parm_shape": [0.0] * 10, "parm_cam": [1.0, 0.0, 0.0], "bbox_scale": 1.1,
        "bbox_center": list(center), "gt_keypoint_2d": gt.tolist(), "imageName": image,
        "annotId": annot_id, "smpltype": "smpl",
    }  # fmt: skip
    for name in drop:
        del fit[name]
    return fit


def test_eft_fits_join_the_person_their_keypoints_match_whatever_the_annot_id():
    rng = np.random.default_rng(0)
    a_joints = rng.uniform(0, 150, (16, 2))
    b_joints = a_joints + [300.0, 0.0]
    a, b = _person("x.jpg", 0, a_joints), _person("x.jpg", 1, b_joints)
    # Two people 10 px apart (0.24 head units): a fit midway is within 0.5 of both.
    c, d = _person("y.jpg", 0, a_joints), _person("y.jpg", 1, a_joints + [10.0, 0.0])
    fits = [
        _fit("x.jpg", 0, b_joints + 0.5),  # annotIds swapped: this is rect 1's fit
        _fit("images/x.jpg", 1, a_joints - 0.5),  # and rect 0's (path: basename counts)
        _fit("y.jpg", 0, a_joints + [5.0, 0.0]),  # equidistant: ambiguous
        _fit("x.jpg", 2, a_joints + 400.0),  # nobody there: unmatched
        _fit("x.jpg", 3, a_joints + 2.0),  # rect 0 again, farther than fit 1: duplicate
        _fit("x.jpg", 4, b_joints, drop=("parm_shape",)),  # missing field: malformed, no KeyError
        {"annotId": 5},  # no imageName at all (counted: train split)
        _fit("elsewhere.jpg", 6, a_joints),  # image not in the .mat
    ]
    skips = Skips()
    joined = match_eft_fits(fits, [a, b, c, d], [], {"x.jpg", "y.jpg"}, skips, "EFT.json", True)
    assert joined == 2 and a.fit is fits[1] and b.fit is fits[0]
    assert c.fit is None and d.fit is None
    assert skips.counts == {
        "eft_ambiguous": 1,
        "eft_unmatched": 2,
        "eft_duplicate": 1,
        "malformed_eft_fit": 2,
    }
    assert "EFT.json: fit 2 (y.jpg): matches people #0 (0.12), #1 (0.12)" in skips.examples["eft_ambiguous"]  # fmt: skip
    malformed = " ".join(skips.examples["malformed_eft_fit"])
    assert "fit 5 (x.jpg): parm_shape is missing" in malformed
    assert "fit 6 (no image): imageName is missing" in malformed
    assert "image not in the annotation file" in skips.examples["eft_unmatched"][1]


def test_an_eft_fit_without_keypoints_joins_by_its_box_and_other_splits_fits_are_not_counted():
    rng = np.random.default_rng(1)
    a = _person("x.jpg", 0, rng.uniform(0, 150, (16, 2)))
    b = _person("x.jpg", 1, rng.uniform(0, 150, (16, 2)) + [300.0, 0.0])  # the val split's
    fits = [
        _fit("x.jpg", 9, None, center=a.center + [5.0, 5.0], drop=("gt_keypoint_2d",)),
        _fit("x.jpg", 9, None, center=b.center),  # all-zero keypoints: box, joins b (not here)
        _fit("z.jpg", 0, None, center=(1.0, 1.0)),  # an image of the other split only
    ]
    skips = Skips()
    assert match_eft_fits(fits, [a], [b], {"x.jpg", "z.jpg"}, skips, "EFT.json", False) == 1
    # fit 0 lies 5 sqrt(2) / (200 x scale 1) = 0.035 person heights from a's objpos (< 0.15).
    assert a.fit is fits[0] and b.fit is None and skips.counts == {}


def test_packed_mpii_fits_belong_to_their_people(raw, packed):
    """The synthetic EFT file numbers its fits (annotId != rect); each packed fit's betas must
    be those the generator gave that very person."""
    truth = json.loads((raw / "mpii" / "synthetic_ground_truth.json").read_text())
    betas = {
        f"mpii_{t['image'][:-4]}_r{r}": p["betas"] for t in truth for r, p in enumerate(t["people"])
    }
    fits = json.loads((raw / "mpii" / "MPII_ver01.json").read_text())["data"]
    assert any(f["annotId"] != 0 for f in fits)
    checked = 0
    for split in ("mpii", "mpii_val"):
        manifest = json.loads((packed / split / "manifest.json").read_text())
        bad = {"eft_unmatched", "eft_ambiguous", "malformed_eft_fit"}
        assert not bad & set(manifest["skipped"])
        for shard in sorted((packed / split).glob("*.tar")):
            with tarfile.open(shard) as tar:
                for m in tar:
                    if m.name.endswith(".npz"):
                        z = np.load(io.BytesIO(tar.extractfile(m).read()))
                        if z["has_smpl"]:
                            key = m.name.partition(".")[0]
                            np.testing.assert_allclose(z["betas"], betas[key], rtol=1e-5)
                            checked += 1
        assert manifest["eft"]["fits"] == len(fits)
    assert checked == sum(
        json.loads((packed / s / "manifest.json").read_text())["eft"]["joined"]
        for s in ("mpii", "mpii_val")
    )
    assert checked >= 0.9 * len(fits)
