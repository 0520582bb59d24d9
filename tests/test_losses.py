"""PARE's loss terms against hand computations (plain Python loops and scipy)."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from pare.config import load_config
from pare.losses import TERMS, pare_loss

B, K = 3, 49  # SPIN's 49 keypoint slots: 25 OpenPose-style, then 24 ground-truth


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = {
        "keypoints_2d": torch.rand(B, K, 2, generator=g) * 2 - 1,
        "joints_3d": torch.randn(B, 24, 3, generator=g),
        "rotmat": torch.randn(B, 24, 3, 3, generator=g),
        "betas": torch.randn(B, 10, generator=g),
        "part_logits": torch.randn(B, 25, 4, 4, generator=g),
        "camera": torch.randn(B, 3, generator=g),
    }
    batch = {
        "image": torch.zeros(B, 3, 224, 224, dtype=torch.uint8),
        "keypoints_2d": torch.cat(
            [torch.rand(B, K, 2, generator=g) * 224, torch.rand(B, K, 1, generator=g)], -1
        ),
        "joints_3d": torch.randn(B, 24, 3, generator=g),
        "pose": torch.randn(B, 72, generator=g) * 0.5,
        "betas": torch.randn(B, 10, generator=g),
        "part_labels": torch.randint(0, 25, (B, 4, 4), generator=g, dtype=torch.uint8),
        "has_smpl": torch.tensor([True, False, True]),
        "has_joints_3d": torch.tensor([False, True, True]),
        "has_part_labels": torch.tensor([True, True, False]),
    }
    return pred, batch


def _hand(pred, batch, openpose_weight=0.0):
    p = {k: v.double().numpy() for k, v in pred.items()}
    t = {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in batch.items()}
    out = {}
    # 2D: mean over every coordinate of all 49 slots of conf * squared error, targets normalised
    # to [-1, 1]; the 25 OpenPose-style slots' confidences times openpose_weight.
    acc = 0.0
    for b in range(B):
        for j in range(K):
            conf = t["keypoints_2d"][b, j, 2] * (openpose_weight if j < 25 else 1.0)
            for c in range(2):
                target = t["keypoints_2d"][b, j, c] / 112.0 - 1.0
                acc += conf * (p["keypoints_2d"][b, j, c] - target) ** 2
    out["keypoints_2d"] = acc / (B * K * 2)

    def masked(values, mask):  # per-sample lists of squared errors, mean over kept samples
        kept = [v for v, m in zip(values, mask, strict=True) if m]
        return float(np.mean(np.concatenate(kept))) if kept else 0.0

    def centred(joints):  # on the midpoint of SPIN's right (2) and left (3) hips
        return joints - (joints[2] + joints[3]) / 2

    rel = [(centred(p["joints_3d"][b]) - centred(t["joints_3d"][b])).ravel() ** 2 for b in range(B)]
    out["joints_3d"] = masked(rel, t["has_joints_3d"])
    gt_rot = [Rotation.from_rotvec(t["pose"][b].reshape(24, 3)).as_matrix() for b in range(B)]
    out["smpl_pose"] = masked(
        [((p["rotmat"][b] - gt_rot[b]) ** 2).ravel() for b in range(B)], t["has_smpl"]
    )
    out["smpl_shape"] = masked(
        [(p["betas"][b] - t["betas"][b]) ** 2 for b in range(B)], t["has_smpl"]
    )
    ce = []
    for b in range(B):
        pixels = []
        for y in range(4):
            for x in range(4):
                logits = p["part_logits"][b, :, y, x]
                label = int(t["part_labels"][b, y, x])
                pixels.append(math.log(np.exp(logits).sum()) - logits[label])
        ce.append(np.array(pixels))
    out["part_segmentation"] = masked(ce, t["has_part_labels"])
    out["camera"] = float(np.mean([math.exp(-10 * p["camera"][b, 0]) ** 2 for b in range(B)]))
    return out


def test_each_term_and_the_weighted_total_match_a_hand_computation():
    pred, batch = _case()
    weights = load_config([], []).loss
    total, terms = pare_loss(pred, batch, weights)
    expected = _hand(pred, batch)
    for name in TERMS:
        assert float(terms[name]) == pytest.approx(expected[name], rel=1e-5), name
    by_hand = 60.0 * (
        5 * expected["keypoints_2d"]
        + 5 * expected["joints_3d"]
        + 1 * expected["smpl_pose"]
        + 0.001 * expected["smpl_shape"]
        + 1 * expected["part_segmentation"]
        + 1 * expected["camera"]
    )
    assert float(total) == pytest.approx(by_hand, rel=1e-5)


def test_unsupervised_terms_are_zero_and_keep_the_graph():
    pred, batch = _case(1)
    for flag in ("has_smpl", "has_joints_3d", "has_part_labels"):
        batch[flag] = torch.zeros(B, dtype=torch.bool)
    pred = {k: v.requires_grad_() for k, v in pred.items()}
    total, terms = pare_loss(pred, batch, load_config([], []).loss)
    for name in ("joints_3d", "smpl_pose", "smpl_shape", "part_segmentation"):
        assert float(terms[name]) == 0.0
    total.backward()
    assert not pred["rotmat"].grad.any() and pred["keypoints_2d"].grad.any()


def test_terms_are_fp32_under_bf16_autocast():
    pred, batch = _case(2)
    low = {k: v.bfloat16() for k, v in pred.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, terms = pare_loss(low, batch, load_config([], []).loss)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in terms.values())
    expected = _hand({k: v.float() for k, v in low.items()}, batch)
    for name in TERMS:
        assert float(terms[name]) == pytest.approx(expected[name], rel=1e-5), name


def test_weights_come_from_the_config():
    pred, batch = _case(3)
    _, terms = pare_loss(pred, batch, load_config([], []).loss)
    only_camera = load_config(
        [],
        [f"loss.{n}=0" for n in TERMS if n != "camera"] + ["loss.camera=2", "loss.total_scale=1"],
    ).loss
    total, _ = pare_loss(pred, batch, only_camera)
    assert float(total) == pytest.approx(2 * float(terms["camera"]), rel=1e-6)


def test_part_loss_upsamples_the_logits_to_the_labels_as_pare_does():
    """PARE's CrossEntropy (pare/losses/segmentation.py) upsamples (B, 25, h, w) logits
    bilinearly with aligned corners to the labels' size; here against a bilinear written out."""
    from pare.losses import part_segmentation_loss

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 25, 3, 3, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 25, (2, 5, 5), generator=g)
    mask = torch.tensor([True, False])
    got = float(part_segmentation_loss(logits, labels, mask))
    lo = logits.numpy()
    pixels = []
    for y in range(5):
        for x in range(5):
            # Aligned corners: output pixel i sits at input coordinate i * (3 - 1) / (5 - 1).
            sy, sx = y * 2 / 4, x * 2 / 4
            y0, x0 = min(int(sy), 1), min(int(sx), 1)
            fy, fx = sy - y0, sx - x0
            z = (
                (1 - fy) * (1 - fx) * lo[0, :, y0, x0]
                + (1 - fy) * fx * lo[0, :, y0, x0 + 1]
                + fy * (1 - fx) * lo[0, :, y0 + 1, x0]
                + fy * fx * lo[0, :, y0 + 1, x0 + 1]
            )
            pixels.append(math.log(np.exp(z).sum()) - z[int(labels[0, y, x])])
    assert got == pytest.approx(float(np.mean(pixels)), rel=1e-5)


def _pare_projected_keypoint_loss(pred_keypoints_2d, gt_keypoints_2d, openpose_weight, gt_weight):
    """PARE's projected_keypoint_loss (pare/losses/losses.py), written out from its definition:
    gt (B, 49, 3) already normalised to [-1, 1] as PARE's dataset stores it."""
    conf = gt_keypoints_2d[:, :, -1].unsqueeze(-1).clone()
    conf[:, :25] *= openpose_weight
    conf[:, 25:] *= gt_weight
    squared = torch.nn.MSELoss(reduction="none")(pred_keypoints_2d, gt_keypoints_2d[:, :, :-1])
    return (conf * squared).mean()


@pytest.mark.parametrize("openpose_weight", [0.0, 0.3])
def test_pares_weight_5_means_what_it_means_in_pare(openpose_weight):
    """The whole 2D contribution to the loss, with PARE's KEYPOINT_LOSS_WEIGHT 5 and LOSS_WEIGHT
    60, equals PARE's: 60 x 5 x projected_keypoint_loss on the same 49-slot example."""
    pred, batch = _case(4)
    batch["keypoints_2d"][:, :25, 2] = 1.0  # OpenPose-style slots present: the weight shows
    only_2d = load_config(
        [],
        [f"loss.{n}=0" for n in TERMS if n != "keypoints_2d"]
        + ["loss.keypoints_2d=5", "loss.total_scale=60", f"loss.openpose_weight={openpose_weight}"],
    ).loss
    total, _ = pare_loss(pred, batch, only_2d)
    gt = batch["keypoints_2d"].clone()
    gt[..., :2] = 2.0 * gt[..., :2] / 224 - 1.0  # PARE's dataset: 2 x / crop_size - 1
    pare = _pare_projected_keypoint_loss(pred["keypoints_2d"], gt, openpose_weight, 1.0)
    assert float(total) == pytest.approx(60 * 5 * float(pare), rel=1e-6)
    assert float(total) != pytest.approx(60 * 5 * float(pare) * 49 / 24, rel=1e-3)


def test_the_openpose_weight_scales_only_the_openpose_slots():
    pred, batch = _case(5)
    config = load_config([], ["loss.openpose_weight=0.7"]).loss
    _, terms = pare_loss(pred, batch, config)
    expected = _hand(pred, batch, openpose_weight=0.7)
    assert float(terms["keypoints_2d"]) == pytest.approx(expected["keypoints_2d"], rel=1e-6)
    # Moving only an OpenPose slot's prediction changes nothing at PARE's default weight 0.
    default = load_config([], []).loss
    moved = dict(pred, keypoints_2d=pred["keypoints_2d"].clone())
    moved["keypoints_2d"][:, :25] += 0.5
    a = pare_loss(pred, batch, default)[1]["keypoints_2d"]
    b = pare_loss(moved, batch, default)[1]["keypoints_2d"]
    assert float(a) == float(b)


def test_the_3d_term_ignores_a_shift_of_the_hips_midpoint_only():
    """Centred on the hips' midpoint as PARE: a common translation costs nothing, a move of
    SMPL's root-like pelvis slot (14) costs only that joint's error."""
    pred, batch = _case(6)
    batch["has_joints_3d"] = torch.ones(B, dtype=torch.bool)
    pred["joints_3d"] = batch["joints_3d"] + torch.tensor([0.3, -0.2, 1.0])
    _, terms = pare_loss(pred, batch, load_config([], []).loss)
    assert float(terms["joints_3d"]) == pytest.approx(0.0, abs=1e-10)
    pred["joints_3d"][:, 14, 1] += 0.1
    _, terms = pare_loss(pred, batch, load_config([], []).loss)
    assert float(terms["joints_3d"]) == pytest.approx(0.01 / (24 * 3), rel=1e-5)
