"""Synthetic MPII, read back with scipy.io.loadmat as users' code reads the real file."""

import json

import numpy as np
import pytest
import scipy.io
import torch
from scipy.spatial.transform import Rotation

from pare.body import build_body_model, load_eval_assets
from pare.body.joints import MPII_16
from pare.data.synthetic.mpii import EFT_NAME, GT_NAME, MAT_NAME, SyntheticMPIIConfig, make_mpii

IMAGES = 40


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("mpii")
    make_mpii(
        root, SyntheticMPIIConfig(images=IMAGES, seed=3, image_scale=0.35, eft=True), progress=False
    )
    return root


def _people(rect_field):
    """annorect as a list, whatever shape loadmat gave it (empty, 1x1, 1xN)."""
    if isinstance(rect_field, np.ndarray):  # empty, or an object array of structs
        return list(rect_field.ravel())
    return [rect_field]  # squeeze_me collapsed a single rect to a struct


def test_release_struct_with_default_loadmat(dataset):
    mat = scipy.io.loadmat(dataset / MAT_NAME)
    release = mat["RELEASE"]
    assert release.shape == (1, 1)
    assert set(release.dtype.names) == {
        "annolist",
        "img_train",
        "version",
        "single_person",
        "act",
        "video_list",
    }
    annolist = release["annolist"][0, 0]
    assert annolist.shape == (1, IMAGES)
    assert set(annolist.dtype.names) >= {"image", "annorect", "frame_sec", "vididx"}
    img_train = release["img_train"][0, 0]
    assert img_train.shape == (1, IMAGES) and set(np.unique(img_train)) <= {0, 1}
    assert release["single_person"][0, 0].shape == (IMAGES, 1)
    act = release["act"][0, 0]
    assert act.shape == (IMAGES, 1) and set(act.dtype.names) == {"act_name", "cat_name", "act_id"}
    names = [annolist[0, i]["image"][0, 0]["name"][0] for i in range(IMAGES)]
    assert all(name.endswith(".jpg") and len(name) == 13 for name in names)
    for name in names:
        assert (dataset / "images" / name).is_file()
    # Train rects carry the head box and (mostly) points; each leaf is a (1, 1) array.
    dtypes, vis_kinds, fields_seen, n_points = set(), set(), set(), []
    for i in range(IMAGES):
        rects = annolist[0, i]["annorect"]
        if rects.size == 0:
            continue
        fields_seen.add(rects.dtype.names)
        if not img_train[0, i]:
            assert set(rects.dtype.names) == {"scale", "objpos"}
            continue
        for r in range(rects.shape[1]):
            rect = rects[0, r]
            assert rect["x1"].shape == (1, 1) and rect["scale"].shape == (1, 1)
            if rect["annopoints"].size == 0:
                continue
            points = rect["annopoints"][0, 0]["point"]
            n_points.append(points.shape[1])
            for p in range(points.shape[1]):
                dtypes |= {points[0, p]["x"].dtype, points[0, p]["y"].dtype}
                if "is_visible" in points.dtype.names:
                    vis = points[0, p]["is_visible"]
                    vis_kinds.add("empty" if vis.size == 0 else vis.dtype.kind)
                else:
                    vis_kinds.add("missing")
    assert {np.dtype("uint8"), np.dtype("float64")} <= dtypes
    assert {"u", "U", "empty", "missing"} <= vis_kinds
    assert min(n_points) < 16 and max(n_points) <= 16
    assert len(fields_seen) >= 2


def test_squeezed_record_objects_and_quirks(dataset):
    mat = scipy.io.loadmat(dataset / MAT_NAME, squeeze_me=True, struct_as_record=False)
    release = mat["RELEASE"]
    annolist = np.atleast_1d(release.annolist)
    assert len(annolist) == IMAGES and str(release.version) == "12"
    unsorted = single_rect = several = no_points = 0
    for entry, train in zip(annolist, np.atleast_1d(release.img_train), strict=True):
        people = _people(entry.annorect)
        single_rect += len(people) == 1 and not isinstance(entry.annorect, np.ndarray)
        several += len(people) > 1
        for rect in people:
            if not train:
                continue
            if isinstance(rect.annopoints, np.ndarray):
                no_points += 1
                continue
            points = np.atleast_1d(rect.annopoints.point)  # a single point collapses to a struct
            ids = [int(p.id) for p in points]
            assert len(set(ids)) == len(ids) and set(ids) <= set(range(16))
            unsorted += ids != sorted(ids)
    assert unsorted > 0 and single_rect > 0 and several > 0 and no_points > 0


def test_annotated_joints_are_the_rendered_bodies_joints(dataset):
    """1-based x/y within 1 px of the body's joints projected with the image's camera: SMPL's
    own joints for limbs, and for hips, pelvis, thorax, upper neck and head top the rows of
    J_regressor_extra that SPIN reads them as (its joints_idx and JOINT_MAP)."""
    mat = scipy.io.loadmat(dataset / MAT_NAME, squeeze_me=True, struct_as_record=False)
    truth = {t["image"]: t["people"] for t in json.loads((dataset / GT_NAME).read_text())}
    smpl_of_mpii = {
        "right_ankle": 8,
        "right_knee": 5,
        "left_knee": 4,
        "left_ankle": 7,
        "right_wrist": 21,
        "right_elbow": 19,
        "right_shoulder": 17,
        "left_shoulder": 16,
        "left_elbow": 18,
        "left_wrist": 20,
        # Rows of J_regressor_extra, after SMPL's 24: LSP hips, LSP neck, LSP head top, MPII pelvis
        # and thorax.
        "right_hip": 24 + 0,
        "left_hip": 24 + 1,
        "upper_neck": 24 + 2,
        "head_top": 24 + 3,
        "pelvis": 24 + 4,
        "thorax": 24 + 5,
    }
    extra = torch.from_numpy(load_eval_assets("standin").extra_regressor).float()
    models = {g: build_body_model("standin", gender=g) for g in ("male", "female")}
    checked = 0
    for entry, train in zip(
        np.atleast_1d(mat["RELEASE"].annolist), np.atleast_1d(mat["RELEASE"].img_train), strict=True
    ):
        people = _people(entry.annorect)
        if not train or not people:
            continue
        gts = truth[entry.image.name]
        assert len(gts) == len(people)
        for rect, gt in zip(people, gts, strict=True):
            if isinstance(rect.annopoints, np.ndarray):
                continue
            pose = np.asarray(gt["pose"])
            with torch.no_grad():
                out = models[gt["gender"]](
                    betas=torch.tensor([gt["betas"]], dtype=torch.float32),
                    global_orient=torch.tensor(pose[None, :3], dtype=torch.float32),
                    body_pose=torch.tensor(pose[None, 3:], dtype=torch.float32),
                    transl=torch.tensor([gt["trans"]], dtype=torch.float32),
                )
            joints = torch.cat([out.joints[0, :24], extra @ out.vertices[0]]).double().numpy()
            cam = joints @ np.asarray(gt["R"]).T + np.asarray(gt["t"])
            uvw = cam @ np.asarray(gt["K"]).T
            proj = uvw[:, :2] / uvw[:, 2:]
            for p in np.atleast_1d(rect.annopoints.point):
                name = MPII_16[int(p.id)]
                if name in smpl_of_mpii:
                    xy = np.array([float(p.x), float(p.y)]) - 1.0  # MATLAB is 1-based
                    assert np.hypot(*(xy - proj[smpl_of_mpii[name]])) < 1.0
                    checked += 1
    assert checked > 100


def test_eft_fits(dataset):
    eft = json.loads((dataset / EFT_NAME).read_text())
    assert eft["ver"] == 0.1 and len(eft["data"]) > 5
    model = build_body_model("standin")
    for item in eft["data"]:
        assert set(item) == {
            "parm_pose",
            "parm_shape",
            "parm_cam",
            "bbox_scale",
            "bbox_center",
            "gt_keypoint_2d",
            "imageName",
            "annotId",
            "smpltype",
        }
        rot = np.asarray(item["parm_pose"])
        assert (
            rot.shape == (24, 3, 3) and len(item["parm_shape"]) == 10 and len(item["parm_cam"]) == 3
        )
        np.testing.assert_allclose(
            rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9
        )
        gt = np.asarray(item["gt_keypoint_2d"])
        assert gt.shape == (49, 3) and not gt[:25].any()
        # The weak-perspective crop camera reproduces the annotated joints (projection of the
        # fitted body, crop-normalised, back to pixels) to within a few percent of the box.
        with torch.no_grad():
            aa = torch.tensor(Rotation.from_matrix(rot).as_rotvec(), dtype=torch.float32)
            out = model(
                betas=torch.tensor([item["parm_shape"]], dtype=torch.float32),
                global_orient=aa[None, 0],
                body_pose=aa[None, 1:].reshape(1, 69),
            )
        s, tx, ty = item["parm_cam"]
        joints = out.joints[0, :24].double().numpy()
        xy = s * (joints[:, :2] + [tx, ty]) * 100 * item["bbox_scale"] + item["bbox_center"]
        for slot, smpl in ((25 + 0, 8), (25 + 5, 7), (25 + 6, 21), (25 + 11, 20), (25 + 14, 0)):
            if gt[slot, 2] > 0:
                # The neutral model stands in for the gendered fit, hence the loose bound.
                assert np.hypot(*(xy[smpl] - gt[slot, :2])) < 0.12 * 200 * item["bbox_scale"]


def test_deterministic_for_a_seed(tmp_path):
    cfg = SyntheticMPIIConfig(images=3, seed=9, image_scale=0.2, eft=True)
    for run in ("a", "b"):
        make_mpii(tmp_path / run, cfg, progress=False)
    for name in ("images/000000000.jpg", "images/000000002.jpg", GT_NAME, EFT_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = scipy.io.loadmat(tmp_path / "a" / MAT_NAME)["RELEASE"]["annolist"][0, 0]
    b = scipy.io.loadmat(tmp_path / "b" / MAT_NAME)["RELEASE"]["annolist"][0, 0]
    assert repr(a) == repr(b)


def test_root_records_the_body_model(dataset):
    from pare.body import body_model_identity, read_body_model_record

    assert read_body_model_record(dataset) == body_model_identity("standin")
