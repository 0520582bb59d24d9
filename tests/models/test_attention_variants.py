"""The self-attention variant as the design document writes it (gate 1, one head, full
resolution) against the document's formula computed naively; the attention's logged statistics
against hand computations; the attention's own learning rate."""

import math
from pathlib import Path

import pytest
import torch

from pare.config import load_config
from pare.models import build_model
from pare.models.attention import PartSelfAttention, attention_statistics
from pare.optim import build_optimizer

ROOT = Path(__file__).parents[2]
SMALL = ["model.backbone=resnet18", "model.branch_channels=16", "model.branch_layers=1"]


def _document_formula(heatmaps, w_q, w_k):
    """Section 2.3 of the design document, written out: H_f = H flattened to (HW x J),
    Q = H_f W_q, K = H_f W_k (W in R^(J x D_k)), A = softmax(Q K^T / sqrt(D_k)) over each row,
    H~ = A H_f, reshaped back to (J, H, W). One image at a time, the full (HW x HW) matrix."""
    out = []
    for h in heatmaps.double():  # (J, H, W)
        j, height, width = h.shape
        h_f = h.reshape(j, height * width).T  # (HW, J)
        q, k = h_f @ w_q.double(), h_f @ w_k.double()  # (HW, D_k)
        scores = q @ k.T / math.sqrt(w_q.shape[1])  # (HW, HW)
        a = torch.exp(scores - scores.max(1, keepdim=True).values)
        a = a / a.sum(1, keepdim=True)
        out.append((a @ h_f).T.reshape(j, height, width))
    return torch.stack(out)


def test_gate_one_at_full_resolution_is_the_documents_corrected_heatmaps():
    torch.manual_seed(0)
    module = PartSelfAttention(
        num_parts=5, dim=5, heads=1, resolution=0, gate_init=1.0, learn_gate=False
    )
    heatmaps = 3.0 * torch.randn(2, 5, 6, 7)
    # nn.Linear computes x W^T: its weight is W_q transposed.
    expected = _document_formula(heatmaps, module.query.weight.T, module.key.weight.T)
    torch.testing.assert_close(module(heatmaps).double(), expected, rtol=1e-5, atol=1e-5)
    assert not module.gate.requires_grad and torch.equal(module.gate, torch.ones(5))


def test_the_document_config_builds_that_module_and_its_gate_stays_shut_to_training():
    cfg = load_config(
        [ROOT / "configs/hrnet_w32_attention_doc.yaml", ROOT / "configs/loss_document.yaml"],
        [*SMALL, "model.backbone_weights=random"],
    )
    attention = build_model(cfg.model, cfg.body).head.attention
    assert (attention.heads, attention.resolution, attention.value) == (1, 0, None)
    assert attention.query.weight.shape == (24, 24)  # D_k = J
    assert cfg.loss.part_segmentation == 0 and cfg.loss.camera == 0 and cfg.loss.joints_3d > 0
    # A training step moves W_q but not the fixed gate.
    model = build_model(cfg.model, cfg.body)
    optimizer, _ = build_optimizer(model, cfg.optim, 10)
    out = model(torch.randn(1, 3, 64, 64))
    (out["rotmat"].sum() + out["betas"].sum()).backward()
    before = model.head.attention.query.weight.detach().clone()
    optimizer.step()
    assert torch.equal(model.head.attention.gate, torch.ones(24))
    assert not torch.equal(model.head.attention.query.weight, before)


def test_statistics_of_uniform_attention_match_a_hand_computation():
    torch.manual_seed(1)
    module = PartSelfAttention(num_parts=4, dim=8, heads=2, resolution=0)
    with torch.no_grad():
        module.query.weight.zero_()  # every score 0: uniform attention
        module.gate.copy_(torch.tensor([0.0, 0.5, -1.0, 2.0]))
    heatmaps = torch.randn(3, 4, 5, 5)
    stats = attention_statistics(module, heatmaps)
    n = 25
    assert stats["entropy"].item() == pytest.approx(math.log(n), rel=1e-6)
    assert stats["entropy_max"].item() == pytest.approx(math.log(n))
    assert stats["gate_abs_mean"].item() == pytest.approx((0 + 0.5 + 1 + 2) / 4)
    # Uniform attention averages the tokens: H~ = H + g (mean_hw H - H).
    mean = heatmaps.mean((-2, -1), keepdim=True)
    corrected = heatmaps + module.gate.detach().view(1, 4, 1, 1) * (mean - heatmaps)
    expected = ((corrected - heatmaps).norm() / heatmaps.norm()).item()
    assert stats["relative_change"].item() == pytest.approx(expected, rel=1e-5)


def test_peaked_attention_has_low_entropy():
    module = PartSelfAttention(num_parts=2, dim=2, heads=1, resolution=0)
    with torch.no_grad():  # scores 100 x (query . key) / sqrt(2): the strong token wins
        module.query.weight.copy_(10 * torch.eye(2))
        module.key.weight.copy_(10 * torch.eye(2))
    heatmaps = torch.full((1, 2, 4, 4), 0.1)
    heatmaps[0, :, 1, 2] = 3.0  # one strong token, which every query's scores favour
    stats = attention_statistics(module, heatmaps)
    assert stats["entropy"].item() < 0.5 * math.log(16)


@pytest.mark.parametrize("scale, groups", [(1.0, 2), (20.0, 3)])
def test_the_attention_gets_its_own_learning_rate(scale, groups):
    cfg = load_config(
        [], [*SMALL, "model.attention.enabled=true", f"optim.attention_lr_scale={scale}"]
    )
    model = build_model(cfg.model, cfg.body)
    optimizer, _ = build_optimizer(model, cfg.optim, 10)
    assert len(optimizer.param_groups) == groups  # 2: earlier checkpoints still resume
    attention = {id(p) for p in model.head.attention.parameters()}
    group = next(g for g in optimizer.param_groups if attention & {id(p) for p in g["params"]})
    assert group["lr"] == pytest.approx(cfg.optim.lr * scale)
    if groups == 3:
        assert {id(p) for p in group["params"]} == attention
    every = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())  # each exactly once
