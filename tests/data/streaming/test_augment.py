"""Augmentation keeps every target on the person: checked by re-rendering the body."""

import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from pare.body import GENDERS, build_body_model, load_eval_assets
from pare.body.joints import GT_SLOTS, KEYPOINTS_49
from pare.config import AugmentConfig, part_label_size
from pare.data.streaming.augment import (
    EXTREME_CROPS,
    AugmentParams,
    augment,
    draw_params,
    flip,
)
from pare.data.streaming.stream import decode_sample
from pare.render import Camera, Mesh, render

# (OpenPose slot, ground-truth slot) pairs of the joints both blocks take from SMPL's skeleton.
SHARED_SLOTS = [
    (KEYPOINTS_49.index(f"op_{side}_{joint}"), KEYPOINTS_49.index(f"{side}_{joint}", 25))
    for side in ("left", "right")
    for joint in ("shoulder", "elbow", "wrist", "knee", "ankle")
]


def _decoded(folder, limit=8):
    out = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {}
            for m in tar:
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {"__key__": key})[ext] = tar.extractfile(m).read()
        out += [decode_sample(raw) for raw in members.values()]
        if len(out) >= limit:
            return out[:limit]
    return out


def test_flip_twice_is_the_identity(packed):
    base = augment(_decoded(packed / "3dpw", 1)[0], AugmentParams(rotation_deg=20, scale=1.1))
    twice = flip(flip(base, 224), 224)
    for key in ("image", "part_labels"):
        np.testing.assert_array_equal(twice[key], base[key], err_msg=key)
    for key in (
        "keypoints_2d",
        "joints_3d",
        "h36m_3d",
        "pose",
        "intrinsics",
    ):  # float32: 224 - (224 - x)
        np.testing.assert_allclose(twice[key], base[key], atol=1e-4, err_msg=key)
    once = flip(base, 224)
    assert not np.array_equal(once["image"], base["image"])
    assert set(np.unique(once["part_labels"])) - {0} != set()  # labels swapped, still parts


def test_augment_with_flip_is_flip_after_augment(packed):
    sample = _decoded(packed / "3dpw", 1)[0]
    a = augment(sample, AugmentParams(rotation_deg=-15, flip=True))
    b = flip(augment(sample, AugmentParams(rotation_deg=-15)), 224)
    for key in ("image", "part_labels", "keypoints_2d", "joints_3d", "pose", "intrinsics"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("seed", range(4))
def test_targets_stay_on_the_rendered_person(packed, seed):
    """After random augmentation: 2D keypoints equal the projected 3D joints, and the part map
    equals a fresh render of the SMPL body placed by the augmented targets."""
    cfg = AugmentConfig(
        rotation_prob=1.0, translation=0.1, occlusion_prob=0.5, extreme_crop_prob=0.5
    )
    rng = np.random.default_rng(seed)
    assets = load_eval_assets("standin")
    labels, extra_regressor = assets.part_labels, assets.extra_regressor.astype(np.float64)
    models = {}
    agreement, stray = [], []
    for sample in _decoded(packed / "3dpw", 6):
        params = draw_params(rng, cfg)
        out = augment(sample, params)
        uvw = out["joints_3d"] @ out["intrinsics"].T
        proj = uvw[:, :2] / uvw[:, 2:]
        # The ground-truth slots are those joints' projections; the OpenPose detections of
        # joints SMPL has (shoulders, elbows, wrists, knees, ankles) lie on the same points.
        kp = out["keypoints_2d"]
        assert np.abs(kp[GT_SLOTS, :2] - proj).max() < 1e-3 and (kp[GT_SLOTS, 2] == 1).all()
        for op_slot, gt_slot in SHARED_SLOTS:
            if kp[op_slot, 2] > 0:
                assert np.hypot(*(kp[op_slot, :2] - kp[gt_slot, :2])) < 1e-3
        gender = GENDERS[int(out["gender"])]
        model = models.setdefault(gender, build_body_model("standin", gender=gender))
        pose = torch.tensor(out["pose"][None], dtype=torch.float32)
        with torch.no_grad():
            body = model(
                betas=torch.tensor(out["betas"][None], dtype=torch.float32),
                global_orient=pose[:, :3],
                body_pose=pose[:, 3:],
            )
        # joints_3d are SPIN's 24, LSP hips from J_regressor_extra: their midpoint places the body.
        extra = extra_regressor @ body.vertices[0].double().numpy()  # (9, 3)
        shift = out["joints_3d"][2:4].mean(0) - extra[:2].mean(0)
        verts = body.vertices[0].double().numpy() + shift
        size = part_label_size(224)
        assert out["part_labels"].shape == (size, size) == (112, 112)
        k = np.diag([size / 224, size / 224, 1.0]) @ out["intrinsics"]
        fresh = render(
            [Mesh(verts, model.faces.astype(np.int64), labels)],
            Camera(k, np.eye(3), np.zeros(3), size, size),
        ).parts
        # Other actors and props occlude the packed map but not the fresh render, so compare
        # labels where both see this person, and require the packed labels to lie on it.
        packed_person = out["part_labels"] > 0
        both = (fresh > 0) & packed_person
        agreement.append((fresh[both] == out["part_labels"][both]).mean())
        stray.append((packed_person & (fresh == 0)).sum() / max(1, packed_person.sum()))
    print(f"label agreement {np.round(agreement, 3)}, stray {np.round(stray, 3)}")
    assert np.mean(agreement) > 0.9 and np.mean(stray) < 0.1


def test_colour_and_occlusion_change_only_the_image(packed):
    sample = _decoded(packed / "3dpw", 1)[0]
    plain = augment(sample, AugmentParams())
    styled = augment(sample, AugmentParams(color=(0.7, 1.2, 1.0), occlusion=(0.2, 0.2, 0.3, 0.3)))
    assert not np.array_equal(plain["image"], styled["image"])
    for key in ("keypoints_2d", "part_labels", "pose", "joints_3d"):
        np.testing.assert_array_equal(plain[key], styled[key])


def test_augmented_example_is_saved(packed, test_output):
    rng = np.random.default_rng(0)
    tiles = []
    for sample in _decoded(packed / "3dpw", 4):
        out = augment(sample, draw_params(rng, AugmentConfig(rotation_prob=1.0)))
        image = out["image"].astype(float)
        labels = np.asarray(
            Image.fromarray(out["part_labels"]).resize((224, 224), Image.Resampling.NEAREST)
        )
        image[labels > 0] = 0.6 * image[labels > 0] + [0, 100, 0]
        for x, y, c in out["keypoints_2d"]:
            if c > 0 and 0 <= x < 224 and 0 <= y < 224:
                image[max(0, int(y) - 2) : int(y) + 3, max(0, int(x) - 2) : int(x) + 3] = [
                    255,
                    0,
                    0,
                ]
        tiles.append(image.clip(0, 255).astype(np.uint8))
    Image.fromarray(np.concatenate(tiles, 1)).save(test_output / "augmented_3dpw.png")
    assert (test_output / "augmented_3dpw.png").stat().st_size > 1000


def test_fast_resize_path_matches_the_affine_warp():
    from pare.data.streaming.augment import _warp, _warp_image, input_matrix

    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (40, 40, 3)).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(noise).resize((320, 320), Image.Resampling.BILINEAR))
    m = input_matrix(320, 224, AugmentParams(scale=1.15, shift=(0.05, -0.03)))
    fast = _warp_image(smooth, m, 224, axis_aligned=True).astype(float)
    general = _warp(smooth, m, 224, Image.Resampling.BILINEAR).astype(float)
    assert np.abs(fast - general).mean() < 1.0 and np.abs(fast - general).max() <= 4


def test_read_npz_equals_np_load(packed):
    from pare.data.streaming.stream import read_npz

    checked = 0
    for shard in sorted((packed / "mpii").glob("*.tar")) + sorted((packed / "3dpw").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar:
                if m.name.endswith(".npz"):
                    data = tar.extractfile(m).read()
                    ours = read_npz(data)
                    with np.load(io.BytesIO(data), allow_pickle=False) as ref:
                        assert set(ours) == set(ref.files)
                        for k in ref.files:
                            assert ours[k].dtype == ref[k].dtype and ours[k].shape == ref[k].shape
                            np.testing.assert_array_equal(ours[k], ref[k])
                    checked += 1
    buf = io.BytesIO()
    np.savez_compressed(buf, a=np.arange(5))  # compressed members take the np.load route
    np.testing.assert_array_equal(read_npz(buf.getvalue())["a"], np.arange(5))
    assert checked > 20


def test_turn_about_z_matches_scipy():
    from scipy.spatial.transform import Rotation

    from pare.data.streaming.augment import turn_about_z

    rng = np.random.default_rng(1)
    vecs = list(rng.normal(size=(200, 3))) + [
        np.zeros(3),
        np.array([0, 0, np.pi]),
        np.array([np.pi, 0, 0]),
    ]
    for v in vecs:
        angle = float(rng.uniform(-np.pi, np.pi))
        ours = Rotation.from_rotvec(turn_about_z(np.asarray(v, float), angle)).as_matrix()
        ref = (Rotation.from_euler("z", angle) * Rotation.from_rotvec(v)).as_matrix()
        np.testing.assert_allclose(ours, ref, atol=1e-10)


def test_extreme_crop_zooms_on_the_region(packed):
    sample = _decoded(packed / "3dpw", 1)[0]
    whole = augment(sample, AugmentParams())
    upper = augment(sample, AugmentParams(extreme="upper_body"))
    # The upper-body keypoints spread wider in the zoomed crop than in the whole-body one.
    idx = [2, 5, 1]  # OpenPose-style shoulders and neck
    spread = lambda o: np.ptp(o["keypoints_2d"][idx, :2], axis=0).max()  # noqa: E731
    assert spread(upper) > 1.3 * spread(whole)
    uvw = upper["joints_3d"] @ upper["intrinsics"].T
    np.testing.assert_allclose(
        uvw[[8, 9], :2] / uvw[[8, 9], 2:], upper["keypoints_2d"][[2, 5], :2], atol=1e-3
    )


def test_extreme_crops_are_drawn_at_their_rate():
    rng = np.random.default_rng(0)
    draws = [draw_params(rng, AugmentConfig(extreme_crop_prob=0.5)).extreme for _ in range(400)]
    assert set(draws) == {None, *EXTREME_CROPS}
    assert 0.43 < np.mean([d is not None for d in draws]) < 0.57
    # Off draws nothing: the other parameters are what they were without the setting.
    with_off = draw_params(np.random.default_rng(3), AugmentConfig(extreme_crop_prob=0.0))
    plain = draw_params(np.random.default_rng(3), AugmentConfig())
    assert with_off == plain and plain.extreme is None
