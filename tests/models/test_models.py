"""The PARE model and the self-attention variant: shapes, gradients, equivalence at init,
attention properties, backbone weight loading."""

import copy

import pytest
import torch

from pare.config import load_config
from pare.losses import pare_loss
from pare.models import (
    PartSelfAttention,
    build_backbone,
    build_model,
    fused_attention,
    map_checkpoint_keys,
    naive_attention,
)
from pare.models.backbones import load_backbone_weights

SMALL = ["model.backbone=hrnet_w18_small", "model.branch_channels=32"]


def _model(*overrides, seed=0):
    cfg = load_config([], [*SMALL, *overrides])
    torch.manual_seed(seed)
    return build_model(cfg.model, cfg.body)


def _images(batch=2, seed=1):
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "backbone, extra",
    [
        ("hrnet_w32", []),
        ("resnet50", ["model.branch_layers=3", "model.branch_channels=256"]),
        ("hrnet_w18_small", []),
        ("resnet18", ["model.branch_layers=3", "model.branch_channels=64"]),
    ],
)
def test_output_shapes_for_every_backbone(backbone, extra):
    cfg = load_config([], [f"model.backbone={backbone}", *extra])
    model = build_model(cfg.model, cfg.body).eval()
    with torch.no_grad():
        out = model(_images(2))
    expected = {
        "part_logits": (2, 25, 56, 56),
        "part_attention": (2, 24, 56, 56),
        "pose_6d": (2, 24, 6),
        "rotmat": (2, 24, 3, 3),
        "betas": (2, 10),
        "camera": (2, 3),
        "translation": (2, 3),
        "vertices": (2, 6890, 3),
        "smpl_joints": (2, 24, 3),
        "h36m_3d": (2, 17, 3),
        "keypoints_3d": (2, 49, 3),
        "joints_3d": (2, 24, 3),
        "keypoints_2d": (2, 49, 2),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    # Part attention: each part's weights form a distribution over the 56 x 56 grid.
    torch.testing.assert_close(out["part_attention"].sum((-1, -2)), torch.ones(2, 24))
    if backbone == "hrnet_w32":
        assert model.backbone.out_channels == 480  # 32 + 64 + 128 + 256, PARE's fused width


def test_the_smpl_layer_has_no_trainable_or_saved_state_of_its_own():
    model = _model()
    assert not any(name.startswith("smpl.") for name, _ in model.named_parameters())
    assert not any(key.startswith("smpl.") for key in model.state_dict())


def _batch_for(out, batch=2):
    g = torch.Generator().manual_seed(5)
    return {
        "image": torch.zeros(batch, 3, 224, 224, dtype=torch.uint8),
        "keypoints_2d": torch.cat(
            [torch.rand(batch, 49, 2, generator=g) * 224, torch.ones(batch, 49, 1)], -1
        ),
        "joints_3d": torch.randn(batch, 24, 3, generator=g) * 0.3,
        "pose": torch.randn(batch, 72, generator=g) * 0.3,
        "betas": torch.randn(batch, 10, generator=g),
        "part_labels": torch.randint(0, 25, (batch, 112, 112), generator=g, dtype=torch.uint8),
        "has_smpl": torch.ones(batch, dtype=torch.bool),
        "has_joints_3d": torch.ones(batch, dtype=torch.bool),
        "has_part_labels": torch.ones(batch, dtype=torch.bool),
    }


@pytest.mark.parametrize("variant", [False, True])
def test_gradients_reach_every_trainable_parameter(variant):
    extra = ["model.attention.enabled=true", "model.attention.value_proj=true"] if variant else []
    model = _model(*extra).train()
    if variant:
        # At initialisation the zero gate blocks the attention's own gradients by design (only
        # the gate learns at first, as in ReZero); open it to check the path.
        with torch.no_grad():
            model.head.attention.gate.fill_(0.5)
    out = model(_images(2))
    total, _ = pare_loss(out, _batch_for(out), load_config([], []).loss)
    total.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, dead


@pytest.mark.parametrize("mode, precision", [("train", None), ("eval", None), ("eval", "bf16")])
def test_variant_with_a_zero_gate_equals_vanilla_bit_for_bit(mode, precision):
    vanilla = _model(seed=0)
    variant = _model("model.attention.enabled=true", "model.attention.value_proj=true", seed=7)
    missing, unexpected = variant.load_state_dict(vanilla.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("head.attention.") for k in missing)
    assert not variant.head.attention.gate.detach().any()
    getattr(vanilla, mode)(), getattr(variant, mode)()
    images = _images(2)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        a, b = vanilla(images), variant(images)
    assert (a["part_logits"].dtype == torch.bfloat16) == (precision == "bf16")
    assert a["vertices"].dtype == torch.float32  # the SMPL layer stays fp32 under autocast
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # And the gate is live: opening it changes the result.
    with torch.no_grad():
        variant.head.attention.gate.fill_(1.0)
    assert not torch.equal(variant.eval()(images)["rotmat"], vanilla.eval()(images)["rotmat"])


PARE_HEAD_OPTIONS = [
    "model.fusion_align_corners=true",
    "model.iterative_regression=true",
    "model.iter_residual=true",
    "model.pose_input_type=feats.self_pose.all_pose.shape.cam",
    "model.shape_input_type=feats.all_pose.shape.cam",
    "model.keypoint_attention_act=sigmoid",
    "model.scale_keypoint_attention=true",
]


def test_the_variant_composes_with_pares_head_options():
    vanilla = _model(*PARE_HEAD_OPTIONS, seed=0)
    variant = _model(*PARE_HEAD_OPTIONS, "model.attention.enabled=true", seed=7)
    # The pose regressor reads C + 6 + 144 + 10 + 3 inputs per part (PARE's input_type_dim).
    assert variant.head.pose_weight.shape == (24, 32 + 163, 6)
    assert variant.head.shape.in_features == 24 * 64 + 157
    missing, unexpected = variant.load_state_dict(vanilla.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("head.attention.") for k in missing)
    images = _images(2)
    a, b = vanilla.eval()(images), variant.eval()(images)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        variant.head.attention.gate.fill_(0.5)
    variant.train()
    out = variant(images)
    assert not torch.equal(out["rotmat"], a["rotmat"])
    total, _ = pare_loss(out, _batch_for(out), load_config([], []).loss)
    total.backward()
    dead = [
        n for n, p in variant.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0
    ]
    assert not dead, dead


@pytest.mark.parametrize("value_proj", [False, True])
def test_attention_is_equivariant_to_a_permutation_of_pixels(value_proj):
    torch.manual_seed(0)
    attention = PartSelfAttention(24, dim=32, heads=4, value_proj=value_proj)
    tokens = torch.randn(2, 300, 24)
    perm = torch.randperm(300)
    torch.testing.assert_close(
        attention.mix(tokens[:, perm]), attention.mix(tokens)[:, perm], atol=1e-5, rtol=1e-5
    )


def test_fused_and_naive_attention_agree_values_and_gradients():
    g = torch.Generator().manual_seed(3)
    for head_dim, value_dim in [(16, 24), (32, 24), (24, 24)]:
        q = torch.randn(2, 4, 500, head_dim, generator=g, requires_grad=True)
        k = torch.randn(2, 4, 500, head_dim, generator=g, requires_grad=True)
        v = torch.randn(2, 4, 500, value_dim, generator=g, requires_grad=True)
        fused, naive = fused_attention(q, k, v), naive_attention(q, k, v)
        torch.testing.assert_close(fused, naive, atol=1e-5, rtol=1e-4)
        grads_fused = torch.autograd.grad(fused.square().sum(), (q, k, v))
        grads_naive = torch.autograd.grad(naive.square().sum(), (q, k, v))
        for a, b in zip(grads_fused, grads_naive, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_attention_module_matches_a_per_head_loop_at_both_resolutions():
    """The module against an explicit per-head, per-image computation of the design."""
    torch.manual_seed(0)
    maps = torch.randn(2, 24, 56, 56)
    for resolution in (0, 28):
        attention = PartSelfAttention(24, dim=32, heads=4, resolution=resolution)
        with torch.no_grad():
            attention.gate.copy_(torch.linspace(-1, 1, 24))
            out = attention(maps)
        grid = (
            maps
            if resolution == 0
            else maps.unflatten(2, (28, 2)).unflatten(4, (28, 2)).mean((3, 5))
        )
        side = grid.shape[-1]
        expected = torch.empty_like(maps)
        for b in range(2):
            hf = grid[b].flatten(1).T  # (N, J)
            q = hf @ attention.query.weight.T  # (N, 32)
            k = hf @ attention.key.weight.T
            heads = []
            for h in range(4):
                qs, ks = q[:, 8 * h : 8 * h + 8], k[:, 8 * h : 8 * h + 8]
                a = torch.softmax(qs @ ks.T / 8**0.5, dim=-1)  # (N, N)
                heads.append(a @ hf)
            delta = (torch.stack(heads).mean(0) - hf).T.reshape(24, side, side)
            if side != 56:
                delta = torch.nn.functional.interpolate(
                    delta[None], size=(56, 56), mode="bilinear", align_corners=False
                )[0]
            expected[b] = maps[b] + attention.gate.detach()[:, None, None] * delta
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def _saved_sizes(attend, *inputs) -> list[int]:
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        attend(*inputs)
    return sizes


def test_fused_attention_never_stores_the_hw_by_hw_matrix():
    """Autograd saves what backward needs: the fused path keeps nothing of size N x N."""
    torch.manual_seed(0)
    n = 56 * 56
    q, k = torch.randn(1, 4, n, 16, requires_grad=True), torch.randn(1, 4, n, 16)
    v = torch.randn(1, 4, n, 24)
    for attend, expect_square in ((fused_attention, False), (naive_attention, True)):
        sizes = _saved_sizes(attend, q, k, v)
        assert (max(sizes) >= 4 * n * n) == expect_square, (attend.__name__, max(sizes))
    # The module at full resolution, whose values are a transposed, expanded view of the maps.
    for value_proj in (False, True):
        module = PartSelfAttention(24, dim=64, heads=4, resolution=0, value_proj=value_proj)
        maps = torch.randn(1, 24, 56, 56, requires_grad=True)
        assert max(_saved_sizes(module, maps)) < n * n


def _conv(shapes, name, c_out, c_in, k):
    shapes[f"{name}.weight"] = (c_out, c_in, k, k)


def _bn(shapes, name, c, counters=True):
    for stat in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.{stat}"] = (c,)
    if counters:
        shapes[f"{name}.num_batches_tracked"] = ()


def _pose_hrnet_w32_coco_layout():
    """Key -> shape of the HRNet repository's pose_hrnet_w32_256x192.pth (COCO keypoints), written
    from its architecture: stem, layer1 Bottlenecks, transitions, stages 2-4 of BasicBlock
    branches with fuse layers, and the 17-keypoint final layer. The last stage-4 module is built
    with multi_scale_output=False, so it fuses into branch 0 only."""
    shapes = {}
    _conv(shapes, "conv1", 64, 3, 3)
    _bn(shapes, "bn1", 64)
    _conv(shapes, "conv2", 64, 64, 3)
    _bn(shapes, "bn2", 64)
    for i in range(4):  # Bottleneck(planes 64, expansion 4)
        block = f"layer1.{i}"
        _conv(shapes, f"{block}.conv1", 64, 64 if i == 0 else 256, 1)
        _bn(shapes, f"{block}.bn1", 64)
        _conv(shapes, f"{block}.conv2", 64, 64, 3)
        _bn(shapes, f"{block}.bn2", 64)
        _conv(shapes, f"{block}.conv3", 256, 64, 1)
        _bn(shapes, f"{block}.bn3", 256)
    _conv(shapes, "layer1.0.downsample.0", 256, 64, 1)
    _bn(shapes, "layer1.0.downsample.1", 256)
    widths = [32, 64, 128, 256]
    previous = [256]
    for stage, modules in ((2, 1), (3, 4), (4, 3)):
        current = widths[:stage]
        for i, c in enumerate(current):  # transition{stage-1}
            name = f"transition{stage - 1}.{i}"
            if i < len(previous) and previous[i] != c:
                _conv(shapes, f"{name}.0", c, previous[i], 3)
                _bn(shapes, f"{name}.1", c)
            elif i >= len(previous):  # a new branch: one stride-2 conv from the last one
                _conv(shapes, f"{name}.0.0", c, previous[-1], 3)
                _bn(shapes, f"{name}.0.1", c)
        for m in range(modules):
            module = f"stage{stage}.{m}"
            for b, c in enumerate(current):
                for k in range(4):  # BasicBlocks
                    _conv(shapes, f"{module}.branches.{b}.{k}.conv1", c, c, 3)
                    _bn(shapes, f"{module}.branches.{b}.{k}.bn1", c)
                    _conv(shapes, f"{module}.branches.{b}.{k}.conv2", c, c, 3)
                    _bn(shapes, f"{module}.branches.{b}.{k}.bn2", c)
            single_output = stage == 4 and m == modules - 1
            for i in range(1 if single_output else stage):
                for j in range(stage):
                    fuse = f"{module}.fuse_layers.{i}.{j}"
                    if j > i:  # 1x1 conv, BN, upsample
                        _conv(shapes, f"{fuse}.0", current[i], current[j], 1)
                        _bn(shapes, f"{fuse}.1", current[i])
                    for k in range(i - j):  # stride-2 3x3 convs down to branch i
                        c_out = current[i] if k == i - j - 1 else current[j]
                        _conv(shapes, f"{fuse}.{k}.0", c_out, current[j], 3)
                        _bn(shapes, f"{fuse}.{k}.1", c_out)
        previous = current
    shapes["final_layer.weight"] = (17, 32, 1, 1)
    shapes["final_layer.bias"] = (17,)
    return shapes


def _torchvision_resnet50_layout():
    """Key -> shape of torchvision's ImageNet ResNet-50 file (resnet50-0676ba61.pth): Bottleneck
    layers [3, 4, 6, 3] and the fc classifier, without BN step counters (the weights date from
    before PyTorch had them)."""
    shapes = {}
    _conv(shapes, "conv1", 64, 3, 7)
    _bn(shapes, "bn1", 64, counters=False)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for i in range(blocks):
            block = f"layer{layer}.{i}"
            _conv(shapes, f"{block}.conv1", planes, inplanes, 1)
            _bn(shapes, f"{block}.bn1", planes, counters=False)
            _conv(shapes, f"{block}.conv2", planes, planes, 3)
            _bn(shapes, f"{block}.bn2", planes, counters=False)
            _conv(shapes, f"{block}.conv3", planes * 4, planes, 1)
            _bn(shapes, f"{block}.bn3", planes * 4, counters=False)
            if i == 0:
                _conv(shapes, f"{block}.downsample.0", planes * 4, inplanes, 1)
                _bn(shapes, f"{block}.downsample.1", planes * 4, counters=False)
            inplanes = planes * 4
    shapes["fc.weight"] = (1000, 2048)
    shapes["fc.bias"] = (1000,)
    return shapes


def _random_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        key: torch.randint(0, 1000, shape, generator=g)  # BN step counters are int64
        if key.endswith("num_batches_tracked")
        else torch.randn(shape, generator=g)
        for key, shape in shapes.items()
    }


def test_coco_keypoint_hrnet_checkpoint_loads_with_its_key_mapping(tmp_path):
    """A state dict laid out as HRNet's COCO-keypoint pose_hrnet_w32_256x192.pth (built from the
    original architecture, not from timm's model): every backbone tensor loads, only the
    17-keypoint final layer is left out, and the fusions into branches 1-3 that its last module
    lacks keep their initialisation."""
    backbone = build_backbone("hrnet_w32")
    own = backbone.body.state_dict()
    layout = _pose_hrnet_w32_coco_layout()
    head = {"final_layer.weight", "final_layer.bias"}
    absent = {
        k
        for k in own
        if k.startswith(
            ("stage4.2.fuse_layers.1", "stage4.2.fuse_layers.2", "stage4.2.fuse_layers.3")
        )
    }
    assert absent and set(layout) - head == set(own) - absent
    assert all(tuple(own[k].shape) == shape for k, shape in layout.items() if k not in head)
    # Names as the official pose_hrnet checkpoint spells them (spot checks of the layout).
    for name in (
        "conv1.weight",
        "bn2.running_var",
        "layer1.0.downsample.0.weight",
        "transition1.0.0.weight",
        "transition1.1.0.0.weight",
        "stage2.0.branches.1.3.conv2.weight",
        "stage2.0.fuse_layers.0.1.0.weight",
        "stage3.3.fuse_layers.2.0.1.1.weight",
        "stage4.2.fuse_layers.0.3.0.weight",
    ):
        assert name in layout, name

    checkpoint = _random_state(layout)
    path = tmp_path / "pose_hrnet_w32_256x192.pth"
    untouched = own["stage4.2.fuse_layers.1.0.0.0.weight"].clone()
    for saved in (
        checkpoint,
        {f"module.{k}": v for k, v in checkpoint.items()},
    ):  # also as DDP saves
        torch.save(saved, path)
        assert set(map_checkpoint_keys(saved)) == set(layout) - head
        load_backbone_weights(backbone.body, path)
        loaded = backbone.body.state_dict()
        for key, value in checkpoint.items():
            if key not in head:
                assert torch.equal(loaded[key], value), key
        assert torch.equal(loaded["stage4.2.fuse_layers.1.0.0.0.weight"], untouched)
    # Through build_backbone, as a config names the file.
    built = build_backbone("hrnet_w32", str(path)).body.state_dict()
    assert torch.equal(
        built["stage4.1.fuse_layers.3.2.0.1.running_var"],
        checkpoint["stage4.1.fuse_layers.3.2.0.1.running_var"],
    )


def test_torchvision_resnet50_checkpoint_loads_without_its_classifier(tmp_path):
    layout = _torchvision_resnet50_layout()
    checkpoint = _random_state(layout, seed=1)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(checkpoint, path)
    backbone = build_backbone("resnet50", str(path))
    own = backbone.body.state_dict()
    head = {"fc.weight", "fc.bias"}
    counters = {k for k in own if k.endswith("num_batches_tracked")}
    assert set(layout) - head == set(own) - counters
    for key, value in checkpoint.items():
        if key not in head:
            assert torch.equal(own[key], value), key


def test_a_configured_weight_file_that_is_missing_is_named_with_its_source(tmp_path):
    from pare.models.backbones import check_backbone_weights

    for weights in ("random", "timm", ""):
        check_backbone_weights("hrnet_w32", weights)  # no file needed
    missing = str(tmp_path / "pose_hrnet_w32_256x192.pth")
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("hrnet_w32", missing)
    message = str(err.value)
    assert "\n" not in message and missing in message
    assert "HRNet project's COCO pose models" in message
    assert "model.backbone_weights=random" in message
    with pytest.raises(FileNotFoundError, match=r"torchvision's model zoo .*=random"):
        build_backbone("resnet50", str(tmp_path / "resnet50-0676ba61.pth"))
    earlier = tmp_path / "config.yaml"  # as earlier run folders wrote the random start
    earlier.write_text('model: {backbone_weights: ""}\n')
    assert load_config([earlier]).model.backbone_weights == "random"
    assert load_config().model.backbone_weights == "random"


def test_backbone_weights_from_safetensors_and_clear_errors(tmp_path):
    from safetensors.torch import save_file

    source = build_backbone("resnet18")
    state = {
        k: v + 1.0 if v.is_floating_point() else v for k, v in source.body.state_dict().items()
    }
    state["fc.weight"], state["fc.bias"] = torch.zeros(1000, 512), torch.zeros(1000)  # timm head
    save_file(state, str(tmp_path / "r18.safetensors"))
    target = build_backbone("resnet18", str(tmp_path / "r18.safetensors"))
    assert torch.equal(target.body.state_dict()["conv1.weight"], state["conv1.weight"])

    with pytest.raises(
        FileNotFoundError, match=r"backbone weights not found.*model\.backbone_weights"
    ):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))
    torch.save({"conv1.weight": torch.zeros(3, 3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"shape mismatch.*conv1\.weight"):
        build_backbone("resnet18", str(tmp_path / "wrong.pth"))
    partial = {k: v for k, v in list(state.items())[:10]}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="does not fit the backbone: missing"):
        build_backbone("resnet18", str(tmp_path / "partial.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable weights-only torch checkpoint"):
        build_backbone("resnet18", str(tmp_path / "junk.pth"))


def test_config_switches_the_variant_and_rejects_bad_heads():
    model = _model(
        "model.attention.enabled=true", "model.attention.heads=2", "model.attention.dim=16"
    )
    assert model.head.attention.heads == 2 and model.head.attention.query.out_features == 16
    assert _model().head.attention is None
    from pare.config import ConfigError

    with pytest.raises(ConfigError, match="must split evenly over heads=3"):
        load_config([], ["model.attention.heads=3"])


def test_model_holds_no_reference_to_the_original_model():
    a = _model()
    b = copy.deepcopy(a)
    assert torch.equal(a(_images(1))["vertices"], b(_images(1))["vertices"])


@pytest.mark.slow
def test_a_small_model_overfits_8_synthetic_samples(packed):
    """The whole chain (batch contract -> model -> losses -> Adam) can fit: the loss on 8 fixed
    synthetic 3DPW samples falls at least 10x within a bounded number of CPU steps."""
    from pare.data.streaming.batch import normalize_images
    from pare.data.streaming.stream import eval_loader, shard_urls

    # 128 px crops: the same chain at a third of the cost of 224 (the model takes any size).
    batch = next(iter(eval_loader(shard_urls(str(packed / "3dpw")), batch_size=8, crop_size=128)))
    assert len(batch["__key__"]) == 8 and batch["has_smpl"].all()
    model = _model("model.branch_layers=1").train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    weights = load_config([], []).loss
    images = normalize_images(batch["image"])
    losses = []
    for _ in range(OVERFIT_STEPS):
        total, _ = pare_loss(model(images), batch, weights)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        losses.append(float(total.detach()))
        if losses[-1] * 10 <= losses[0]:
            break
    print(f"overfit: {losses[0]:.2f} -> {losses[-1]:.2f} in {len(losses)} steps")
    assert losses[-1] * 10 <= losses[0], (
        f"{losses[0]:.2f} -> {losses[-1]:.2f} in {len(losses)} steps"
    )


OVERFIT_STEPS = 200  # about 120 are needed on the synthetic data
