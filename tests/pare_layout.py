"""The official PARE checkpoint layout, written from mkocabas/PARE's public code, for the converter
tests (tests/test_convert_pare.py). Nothing here imports the converter or this project's model.

- :data:`PARE_HPARAMS`: PARE's yacs defaults (pare/core/config.py ``hparams``) as plain dicts;
  :func:`pare_yaml` dumps them with a test's options the way PARE writes ``config_to_run.yaml``
  (``yaml.dump`` of the whole tree: every option listed, keys sorted).
- :func:`pare_state_dict`: a random ``PARETrainer.state_dict()`` (network keys under ``model.``,
  SMPL layers and renderer buffers beside them), sized by the options.
- :func:`save_lightning_checkpoint`: ``torch.save`` of what PyTorch Lightning 1.1.8 writes, with
  ``yacs.config.CfgNode`` and ``pytorch_lightning`` classes pickled by reference (from stand-in
  modules that only exist while saving).
- :func:`reference_forward`: PARE's forward (pare_head.py, keypoint_attention.py,
  locallyconnected2d.py, hrnet.py's "conv" upsampling, geometry.rot6d_to_rotmat) written with
  functional ops straight from the PARE tensors, in float64.

Line references are to mkocabas/PARE at f848b2f.
"""

from __future__ import annotations

import copy
import functools
import math
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

NUM_JOINTS = 24

# pare/core/config.py: ``hparams`` (the sections PARE's model and dataset code read, plus the
# general ones a full dump has).
PARE_HPARAMS: dict = {
    "LOG_DIR": "logs/experiments",
    "METHOD": "pare",
    "EXP_NAME": "default",
    "RUN_TEST": False,
    "PROJECT_NAME": "pare",
    "SEED_VALUE": -1,
    "SYSTEM": {"GPU": "", "CLUSTER_NODE": 0.0},
    "DATASET": {
        "LOAD_TYPE": "Base",
        "NOISE_FACTOR": 0.4,
        "ROT_FACTOR": 30,
        "SCALE_FACTOR": 0.25,
        "FLIP_PROB": 0.5,
        "CROP_PROB": 0.0,
        "CROP_FACTOR": 0.0,
        "BATCH_SIZE": 64,
        "NUM_WORKERS": 8,
        "PIN_MEMORY": True,
        "SHUFFLE_TRAIN": True,
        "TRAIN_DS": "all",
        "VAL_DS": "3dpw_3doh",
        "NUM_IMAGES": -1,
        "TRAIN_NUM_IMAGES": -1,
        "TEST_NUM_IMAGES": -1,
        "IMG_RES": 224,
        "USE_HEATMAPS": "",
        "RENDER_RES": 480,
        "MESH_COLOR": "pinkish",
        "FOCAL_LENGTH": 5000.0,
        "IGNORE_3D": False,
        "USE_SYNTHETIC_OCCLUSION": False,
        "OCC_AUG_DATASET": "pascal",
        "USE_3D_CONF": False,
        "USE_GENDER": False,
        "DATASETS_AND_RATIOS": "h36m_mpii_lspet_coco_mpi-inf-3dhp_0.3_0.6_0.6_0.6_0.1",
        "STAGE_DATASETS": "0+h36m_coco_0.2_0.8 2+h36m_coco_0.4_0.6",
        "NONPARAMETRIC": False,
    },
    "OPTIMIZER": {"TYPE": "adam", "LR": 0.0001, "WD": 0.0},
    "TRAINING": {
        "RESUME": None,
        "PRETRAINED": None,
        "PRETRAINED_LIT": None,
        "MAX_EPOCHS": 100,
        "LOG_SAVE_INTERVAL": 50,
        "LOG_FREQ_TB_IMAGES": 500,
        "CHECK_VAL_EVERY_N_EPOCH": 1,
        "RELOAD_DATALOADERS_EVERY_EPOCH": True,
        "NUM_SMPLIFY_ITERS": 100,
        "RUN_SMPLIFY": False,
        "SMPLIFY_THRESHOLD": 100,
        "DROPOUT_P": 0.2,
        "TEST_BEFORE_TRAINING": False,
        "SAVE_IMAGES": False,
        "USE_PART_SEGM_LOSS": False,
        "USE_AMP": False,
    },
    "TESTING": {
        "SAVE_IMAGES": False,
        "SAVE_FREQ": 1,
        "SAVE_RESULTS": True,
        "SAVE_MESHES": False,
        "SIDEVIEW": True,
        "TEST_ON_TRAIN_END": True,
        "MULTI_SIDEVIEW": False,
        "USE_GT_CAM": False,
    },
    "PARE": {
        "BACKBONE": "resnet50",
        "NUM_JOINTS": 24,
        "SOFTMAX_TEMP": 1.0,
        "NUM_FEATURES_SMPL": 64,
        "USE_ATTENTION": False,
        "USE_SELF_ATTENTION": False,
        "USE_KEYPOINT_ATTENTION": False,
        "USE_KEYPOINT_FEATURES_FOR_SMPL_REGRESSION": False,
        "USE_POSTCONV_KEYPOINT_ATTENTION": False,
        "KEYPOINT_ATTENTION_ACT": "softmax",
        "USE_SCALE_KEYPOINT_ATTENTION": False,
        "USE_FINAL_NONLOCAL": None,
        "USE_BRANCH_NONLOCAL": None,
        "USE_HMR_REGRESSION": False,
        "USE_COATTENTION": False,
        "NUM_COATTENTION_ITER": 1,
        "COATTENTION_CONV": "simple",
        "USE_UPSAMPLING": False,
        "DECONV_CONV_KERNEL_SIZE": 4,
        "USE_SOFT_ATTENTION": False,
        "NUM_BRANCH_ITERATION": 0,
        "BRANCH_DEEPER": False,
        "NUM_DECONV_LAYERS": 3,
        "NUM_DECONV_FILTERS": 256,
        "USE_RESNET_CONV_HRNET": False,
        "USE_POS_ENC": False,
        "ITERATIVE_REGRESSION": False,
        "ITER_RESIDUAL": False,
        "NUM_ITERATIONS": 3,
        "SHAPE_INPUT_TYPE": "feats.all_pose.shape.cam",
        "POSE_INPUT_TYPE": "feats.neighbor_pose_feats.all_pose.self_pose.neighbor_pose.shape.cam",
        "POSE_MLP_NUM_LAYERS": 1,
        "SHAPE_MLP_NUM_LAYERS": 1,
        "POSE_MLP_HIDDEN_SIZE": 256,
        "SHAPE_MLP_HIDDEN_SIZE": 256,
        "SHAPE_LOSS_WEIGHT": 0,
        "KEYPOINT_LOSS_WEIGHT": 5.0,
        "KEYPOINT_NATIVE_LOSS_WEIGHT": 5.0,
        "HEATMAPS_LOSS_WEIGHT": 5.0,
        "SMPL_PART_LOSS_WEIGHT": 1.0,
        "PART_SEGM_LOSS_WEIGHT": 1.0,
        "POSE_LOSS_WEIGHT": 1.0,
        "BETA_LOSS_WEIGHT": 0.001,
        "OPENPOSE_TRAIN_WEIGHT": 0.0,
        "GT_TRAIN_WEIGHT": 1.0,
        "LOSS_WEIGHT": 60.0,
        "USE_SHAPE_REG": False,
        "USE_MEAN_CAMSHAPE": False,
        "USE_MEAN_POSE": False,
        "INIT_XAVIER": False,
    },
}

# What every converted test config shares: PARE's part-segmentation attention (the released
# models), keypoint attention on.
BASE_OPTIONS = {
    "DATASET": {"USE_HEATMAPS": "part_segm"},
    "PARE": {"USE_KEYPOINT_ATTENTION": True},
}


def pare_hparams(options: dict) -> dict:
    """PARE's defaults with ``options`` ({"PARE": {...}, "DATASET": {...}, top-level keys})
    merged in; a section value of ``None`` for a key deletes it (a dump that lacks it)."""
    tree = copy.deepcopy(PARE_HPARAMS)
    for source in (BASE_OPTIONS, options):
        for key, value in source.items():
            if isinstance(value, dict):
                tree.setdefault(key, {}).update(copy.deepcopy(value))
            else:
                tree[key] = value
    return tree


def pare_yaml(tree: dict) -> str:
    """``config_to_run.yaml`` as PARE writes it (core/config.py: ``yaml.dump(...,
    default_flow_style=False)``: keys sorted, block style)."""
    return yaml.safe_dump(tree, default_flow_style=False)


# ---------------------------------------------------------------------------------------------
# The state dict


def _pose_extra(types_: str) -> int:
    # pare_head.py input_type_dim (without neighbor_*, refused by the converter)
    dims = {"feats": 0, "self_pose": 6, "all_pose": 24 * 6, "shape": 10, "cam": 3}
    return sum(dims[t] for t in types_.split("."))


def _shape_extra(types_: str) -> int:
    dims = {"feats": 0, "all_pose": 24 * 6, "shape": 10, "cam": 3}
    return sum(dims[t] for t in types_.split("."))


def head_dims(pare: dict, backbone_channels: int) -> dict:
    """Widths of PARE's head for the options in ``pare`` (PareHead.__init__)."""
    filters, smpl = pare["NUM_DECONV_FILTERS"], pare["NUM_FEATURES_SMPL"]
    pose_in, shape_in = filters, NUM_JOINTS * smpl
    if pare["ITERATIVE_REGRESSION"]:
        pose_in += _pose_extra(pare["POSE_INPUT_TYPE"])
        shape_in += _shape_extra(pare["SHAPE_INPUT_TYPE"])
    return {
        "in": backbone_channels,
        "layers": pare["NUM_DECONV_LAYERS"],
        "filters": filters,
        "smpl": smpl,
        "pose_in": pose_in,
        "shape_in": shape_in,
    }


class _Rand:
    """Seeded draws with the scales that keep every activation O(1)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def normal(self, shape, std: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.g) * std

    def uniform(self, shape, low: float, high: float) -> torch.Tensor:
        return torch.rand(shape, generator=self.g) * (high - low) + low

    def bn(self, out: dict, prefix: str, channels: int, weight=(0.5, 1.5)) -> None:
        out[f"{prefix}.weight"] = self.uniform(channels, *weight)
        out[f"{prefix}.bias"] = self.normal(channels, 0.1)
        out[f"{prefix}.running_mean"] = self.normal(channels, 0.1)
        out[f"{prefix}.running_var"] = self.uniform(channels, 0.5, 1.5)
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(123456)


@functools.cache
def _timm_body(backbone: str):
    """One timm instance per backbone (its names and shapes; body_features loads weights in)."""
    import timm

    if backbone.startswith("hrnet"):
        return timm.create_model("hrnet_w32", features_only=True, feature_location="")
    return timm.create_model(backbone, features_only=True, out_indices=(4,))


def body_state(backbone: str, seed: int) -> OrderedDict:
    """Random weights for the HRNet/ResNet stem and stages, under the official names (timm uses
    them too), without the ``model.backbone.`` prefix."""
    rand = _Rand(seed)
    out = OrderedDict()
    for key, value in _timm_body(backbone).state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(123456)
        elif key.endswith("running_var"):
            out[key] = rand.uniform(value.shape, 0.5, 1.5)
        elif key.endswith("running_mean"):
            out[key] = rand.normal(value.shape, 0.1)
        elif value.dim() == 1 and key.endswith("weight"):
            out[key] = rand.uniform(value.shape, 0.2, 0.5)  # BN scale: keeps residual sums O(1)
        elif value.dim() == 1:
            out[key] = rand.normal(value.shape, 0.1)
        else:
            out[key] = rand.normal(value.shape, math.sqrt(2.0 / value[0].numel()))
    return out


def body_features(body: dict, backbone: str, images: torch.Tensor) -> list[torch.Tensor]:
    """The stem + stages on ``images`` (timm's implementation, loaded with the PARE tensors):
    HRNet's four branches, or ResNet's layer4 as a one-element list."""
    model = _timm_body(backbone)
    model.load_state_dict(body, strict=True)
    with torch.no_grad():
        feats = model.eval()(images)
    return feats[-4:] if backbone.startswith("hrnet") else feats[-1:]


# backbone/utils.py get_backbone_info: n_output_channels
BACKBONE_CHANNELS = {"hrnet_w32-conv": 480, "resnet50": 2048, "resnet18": 512}
HRNET_UPSAMPLE = {2: 64, 3: 128, 4: 256}  # upsample_stage_k: channels of branch k (W32)


def network_state(pare: dict, body: dict, seed: int) -> OrderedDict:
    """``PARE.state_dict()`` (pare/models/pare.py): ``backbone.*`` then ``head.*``; the SMPL
    layer of ``SMPLHead`` (``smpl.smpl.*``) is added by :func:`pare_state_dict`."""
    rand = _Rand(seed)
    hrnet = pare["BACKBONE"].startswith("hrnet")
    out = OrderedDict((f"backbone.{k}", v) for k, v in body.items())
    if hrnet:
        # hrnet.py: final_layer (unused in PARE's forward), then upsample_stage_{2,3,4} =
        # n x [Upsample, conv3x3 (no bias), BN, ReLU] (_make_upsample_layer).
        out["backbone.final_layer.weight"] = rand.normal((24, 32, 1, 1), 0.1)
        out["backbone.final_layer.bias"] = rand.normal(24, 0.1)
        for stage, channels in HRNET_UPSAMPLE.items():
            for i in range(stage - 1):
                prefix = f"backbone.upsample_stage_{stage}"
                out[f"{prefix}.{4 * i + 1}.weight"] = rand.normal(
                    (channels, channels, 3, 3), math.sqrt(2.0 / (9 * channels))
                )
                rand.bn(out, f"{prefix}.{4 * i + 2}", channels, weight=(0.3, 0.8))
    dims = head_dims(pare, BACKBONE_CHANNELS[pare["BACKBONE"]])
    filters, smpl = dims["filters"], dims["smpl"]
    head = OrderedDict()
    # Buffers first (a module's own tensors precede its children's in state_dict()).
    head["temperature"] = torch.tensor(float(pare["SOFTMAX_TEMP"]))
    # SPIN's mean pose is joint-major (24 x 6); PARE reads it 6-major. Random values tell the
    # two readings apart.
    head["init_pose"] = rand.normal((1, 144))
    head["init_shape"] = rand.normal((1, 10), 0.5)
    head["init_cam"] = torch.tensor([[0.9, 0.0, 0.0]]) + rand.normal((1, 3), 0.1)
    for branch in ("keypoint_deconv_layers", "smpl_deconv_layers"):
        for i in range(dims["layers"]):
            cin = dims["in"] if i == 0 else filters
            if hrnet:  # _make_conv_layer: Conv2d(k3, pad 1, no bias), BN, ReLU
                weight = rand.normal((filters, cin, 3, 3), math.sqrt(2.0 / (9 * cin)))
            else:  # _make_deconv_layer: ConvTranspose2d(k4, s2, p1, no bias), BN, ReLU
                weight = rand.normal((cin, filters, 4, 4), math.sqrt(2.0 / (4 * cin)))
            head[f"{branch}.{3 * i}.weight"] = weight
            rand.bn(head, f"{branch}.{3 * i + 1}", filters)
    head["keypoint_final_layer.weight"] = rand.normal(
        (NUM_JOINTS + 1, filters, 1, 1), 2.0 / math.sqrt(filters)
    )
    head["keypoint_final_layer.bias"] = rand.normal(NUM_JOINTS + 1, 0.3)
    head["smpl_final_layer.weight"] = rand.normal((smpl, filters, 1, 1), 1.0 / math.sqrt(filters))
    head["smpl_final_layer.bias"] = rand.normal(smpl, 0.2)
    # Pooled features are part-weighted means with softmax, sums over H*W pixels with sigmoid.
    sigmoid = pare["KEYPOINT_ATTENTION_ACT"] == "sigmoid"
    pooled = 2.0 / 56**2 if sigmoid else 1.0
    postconv = pare["USE_POSTCONV_KEYPOINT_ATTENTION"]
    feat_scale = 1.0 if postconv else pooled  # the post-conv brings them back to O(1)
    shape_in, pose_in = dims["shape_in"], dims["pose_in"]
    for name, size in (("shape_mlp", 10), ("cam_mlp", 3)):
        weight = rand.normal((size, shape_in), 1.0 / math.sqrt(shape_in))
        weight[:, : NUM_JOINTS * smpl] *= feat_scale
        head[f"{name}.weight"] = weight
        head[f"{name}.bias"] = rand.normal(size, 0.3)
    # LocallyConnected2d(pose_in -> 6, output_size [24, 1], kernel 1): weight
    # (1, out, in, 24, 1, k*k), no bias.
    weight = rand.normal((1, 6, pose_in, NUM_JOINTS, 1, 1), 1.5 / math.sqrt(filters))
    weight[:, :, :filters] *= feat_scale
    head["pose_mlp.weight"] = weight
    if postconv:  # KeypointAttention(use_conv): Conv1d(k=1) for pose and for shape/cam features
        for name, width in (("conv1x1_pose", pose_in), ("conv1x1_shape_cam", smpl)):
            head[f"keypoint_attention.{name}.weight"] = rand.normal(
                (width, width, 1), pooled / math.sqrt(width) * 2.0
            )
            head[f"keypoint_attention.{name}.bias"] = rand.normal(width, 0.2)
    out.update((f"head.{k}", v) for k, v in head.items())
    return out


def _smpl_layer(prefix: str, batch: int, extra: bool, posedirs: bool) -> OrderedDict:
    """Tensors of smplx.SMPL(create_transl=False) (PARE's SMPL adds J_regressor_extra)."""
    out = OrderedDict()
    out[f"{prefix}betas"] = torch.zeros(batch, 10)
    out[f"{prefix}global_orient"] = torch.zeros(batch, 3)
    out[f"{prefix}body_pose"] = torch.zeros(batch, 69)
    out[f"{prefix}faces_tensor"] = torch.zeros(13776, 3, dtype=torch.int64)
    out[f"{prefix}v_template"] = torch.zeros(6890, 3)
    out[f"{prefix}shapedirs"] = torch.zeros(6890, 3, 10)
    out[f"{prefix}J_regressor"] = torch.zeros(24, 6890)
    if posedirs:
        out[f"{prefix}posedirs"] = torch.zeros(207, 20670)
    out[f"{prefix}parents"] = torch.arange(-1, 23, dtype=torch.int64)
    out[f"{prefix}lbs_weights"] = torch.zeros(6890, 24)
    if extra:
        out[f"{prefix}J_regressor_extra"] = torch.zeros(9, 6890)
    out[f"{prefix}vertex_joint_selector.extra_joints_idxs"] = torch.arange(21, dtype=torch.int64)
    return out


def pare_state_dict(network: dict) -> OrderedDict:
    """``PARETrainer.state_dict()`` (core/trainer.py): its own buffers (renderer texture,
    camera, faces, part bins, the H36M regressor), then ``model.*`` (with ``SMPLHead``'s SMPL
    layer), then the trainer's ``smpl.*`` and ``smpl_native.*`` layers. Carries the
    ``_metadata`` attribute ``Module.state_dict()`` sets."""
    out = OrderedDict()
    out["body_part_texture"] = torch.zeros(1, 13776, 1, 1, 1, 3)
    out["K"] = torch.eye(3)[None]
    out["R"] = torch.eye(3)[None]
    out["smpl_faces"] = torch.zeros(1, 13776, 3, dtype=torch.int32)
    out["part_label_bins"] = torch.arange(24) / 24.0 * 255.0 + 1
    out["J_regressor"] = torch.zeros(17, 6890)
    out.update((f"model.{k}", v) for k, v in network.items())
    out.update(_smpl_layer("model.smpl.smpl.", 1, extra=True, posedirs=False))
    out.update(_smpl_layer("smpl.", 64, extra=True, posedirs=False))
    out.update(_smpl_layer("smpl_native.", 64, extra=False, posedirs=False))
    out._metadata = OrderedDict(
        [
            ("", {"version": 1}),
            ("model", {"version": 1}),
            ("model.backbone", {"version": 1}),
            ("model.backbone.bn1", {"version": 2}),
            ("model.head", {"version": 1}),
            ("model.head.pose_mlp", {"version": 1}),
        ]
    )
    return out


# ---------------------------------------------------------------------------------------------
# The Lightning checkpoint


@contextmanager
def lightning_classes():
    """Stand-ins for ``yacs.config.CfgNode`` (yacs 0.1.8: a dict whose ``__dict__`` holds four
    flags) and the ``pytorch_lightning`` classes a 1.1.8 checkpoint pickles by reference, as
    importable modules while the block runs; they are gone afterwards (neither package is
    installed), so nothing can import them when the checkpoint is read back."""
    assert "yacs" not in sys.modules and "pytorch_lightning" not in sys.modules

    class CfgNode(dict):
        IMMUTABLE = "__immutable__"
        DEPRECATED_KEYS = "__deprecated_keys__"
        RENAMED_KEYS = "__renamed_keys__"
        NEW_ALLOWED = "__new_allowed__"

        def __init__(self, init_dict=None, key_list=None, new_allowed=False):
            init_dict = dict(init_dict or {})
            for key, value in init_dict.items():
                if isinstance(value, dict):
                    init_dict[key] = CfgNode(value)
            super().__init__(init_dict)
            self.__dict__[CfgNode.IMMUTABLE] = False
            self.__dict__[CfgNode.DEPRECATED_KEYS] = set()
            self.__dict__[CfgNode.RENAMED_KEYS] = {}
            self.__dict__[CfgNode.NEW_ALLOWED] = new_allowed

        def __getattr__(self, name):
            if name in self:
                return self[name]
            raise AttributeError(name)

    class AttributeDict(dict):
        def __getattr__(self, key):
            try:
                return self[key]
            except KeyError as exp:
                raise AttributeError(key) from exp

    class ModelCheckpoint:
        pass

    modules = {}
    for name in (
        "yacs",
        "yacs.config",
        "pytorch_lightning",
        "pytorch_lightning.callbacks",
        "pytorch_lightning.callbacks.model_checkpoint",
        "pytorch_lightning.utilities",
        "pytorch_lightning.utilities.parsing",
    ):
        modules[name] = types.ModuleType(name)
    for cls, module in (
        (CfgNode, "yacs.config"),
        (AttributeDict, "pytorch_lightning.utilities.parsing"),
        (ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint"),
    ):
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        yield types.SimpleNamespace(
            CfgNode=CfgNode, AttributeDict=AttributeDict, ModelCheckpoint=ModelCheckpoint
        )
    assert "yacs" not in sys.modules and "pytorch_lightning" not in sys.modules


def lightning_checkpoint(classes, state: dict, tree: dict, attribute_dict: bool = False) -> dict:
    """The dict PyTorch Lightning 1.1.8 saves (trainer/connectors/checkpoint_connector.py
    ``dump_checkpoint``): ``hyper_parameters`` is ``dict(model.hparams)``, whose sections are
    yacs CfgNodes; ``callbacks`` is keyed by the callback's class."""
    hparams = {k: classes.CfgNode(v) if isinstance(v, dict) else v for k, v in tree.items()}
    if attribute_dict:
        hparams = classes.AttributeDict(hparams)
    return {
        "epoch": 14,
        "global_step": 187230,
        "pytorch-lightning_version": "1.1.8",
        "callbacks": {
            classes.ModelCheckpoint: {
                "monitor": "val_loss",
                "best_model_score": torch.tensor(51.7),
                "best_model_path": "logs/pare/epoch=14.ckpt",
                "current_score": torch.tensor(51.7),
                "dirpath": "logs/pare",
            }
        },
        "optimizer_states": [
            {
                "state": {
                    0: {"step": 187230, "exp_avg": torch.zeros(4), "exp_avg_sq": torch.ones(4)}
                },
                "param_groups": [
                    {
                        "lr": 5e-5,
                        "betas": (0.9, 0.999),
                        "eps": 1e-08,
                        "weight_decay": 0.0,
                        "amsgrad": False,
                        "params": [0],
                    }
                ],
            }
        ],
        "lr_schedulers": [],
        "state_dict": state,
        "hyper_parameters": hparams,
    }


def save_lightning_checkpoint(
    path: Path, state: dict, tree: dict, attribute_dict: bool = False, extra: dict | None = None
) -> Path:
    """``torch.save`` a Lightning 1.1.8 checkpoint of ``state`` and the hparams ``tree``;
    ``extra`` entries are added at the top level (built inside the stand-in modules' life by a
    callable: ``extra = {key: fn(classes)}``)."""
    with lightning_classes() as classes:
        ckpt = lightning_checkpoint(classes, state, tree, attribute_dict)
        for key, make in (extra or {}).items():
            ckpt[key] = make(classes)
        torch.save(ckpt, path)
    return Path(path)


def write_case(folder: Path, name: str, state: dict, tree: dict, **kw) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = save_lightning_checkpoint(folder / f"{name}.ckpt", state, tree, **kw)
    cfg = folder / f"{name}.yaml"
    cfg.write_text(pare_yaml(tree))
    return ckpt, cfg


# ---------------------------------------------------------------------------------------------
# PARE's forward, functionally, in float64


def _bn(x, sd, prefix):
    # nn.BatchNorm2d in eval mode (eps 1e-5; PARE's momentum does not matter at inference)
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=1e-5,
    )


def _hrnet_conv_fusion(sd, branches):
    """hrnet.py forward, ``not DOWNSAMPLE and USE_CONV``: cat[x0, upsample_stage_2(x1),
    upsample_stage_3(x2), upsample_stage_4(x3)], each stage n x [Upsample(x2, bilinear,
    align_corners=True), conv3x3 (pad 1, no bias), BN, ReLU]."""
    out = [branches[0]]
    for stage, x in zip((2, 3, 4), branches[1:], strict=True):
        prefix = f"model.backbone.upsample_stage_{stage}"
        for i in range(stage - 1):
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
            x = F.conv2d(x, sd[f"{prefix}.{4 * i + 1}.weight"], padding=1)
            x = F.relu(_bn(x, sd, f"{prefix}.{4 * i + 2}"))
        out.append(x)
    return torch.cat(out, 1)


def _branch(sd, name, x, layers, hrnet):
    # _make_conv_layer (HRNet) / _make_deconv_layer (ResNet, kernel 4: padding 1, output_padding 0)
    for i in range(layers):
        w = sd[f"model.head.{name}.{3 * i}.weight"]
        if hrnet:
            x = F.conv2d(x, w, stride=1, padding=1)
        else:
            x = F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=0)
        x = F.relu(_bn(x, sd, f"model.head.{name}.{3 * i + 1}"))
    return x


def _conv1x1(sd, name, x):
    return F.conv2d(x, sd[f"model.head.{name}.weight"], sd[f"model.head.{name}.bias"])


def _keypoint_attention(sd, pare, features, heatmaps, pose_in):
    """layers/keypoint_attention.py KeypointAttention.forward."""
    batch_size, num_joints, height, width = heatmaps.shape
    if pare["USE_SCALE_KEYPOINT_ATTENTION"]:
        heatmaps = heatmaps * (1.0 / math.sqrt(height * width))
    if pare["KEYPOINT_ATTENTION_ACT"] == "softmax":
        normalized = F.softmax(heatmaps.reshape(batch_size, num_joints, -1), dim=-1)
    else:
        normalized = torch.sigmoid(heatmaps.reshape(batch_size, num_joints, -1))
    features = features.reshape(batch_size, -1, height * width)
    attended = torch.matmul(normalized, features.transpose(2, 1)).transpose(2, 1)  # N, C, J
    if pare["USE_POSTCONV_KEYPOINT_ATTENTION"]:
        # PARE picks the convolution by the width (in_channels[0] = pose_mlp_inp_dim)
        name = "conv1x1_pose" if attended.shape[1] == pose_in else "conv1x1_shape_cam"
        prefix = f"model.head.keypoint_attention.{name}"
        attended = F.conv1d(attended, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"])
    return attended


def _locally_connected(weight, x):
    """layers/locallyconnected2d.py LocallyConnected2d.forward (kernel 1, stride 1, no bias)."""
    kh, kw = 1, 1
    x = x.unfold(2, kh, 1).unfold(3, kw, 1)
    x = x.contiguous().view(*x.size()[:-2], -1)
    return (x.unsqueeze(1) * weight).sum([2, -1])


def _linear(sd, name, x):
    return F.linear(x, sd[f"model.head.{name}.weight"], sd[f"model.head.{name}.bias"])


def _prepare_pose_mlp_inp(types_, feats, pred_pose, pred_shape, pred_cam):
    batch_size, num_joints = pred_pose.shape[0], pred_pose.shape[2]
    inp = []
    for t in types_:
        if t == "feats":
            inp.append(feats)
        if t == "self_pose":
            inp.append(pred_pose)
        if t == "all_pose":
            inp.append(pred_pose.reshape(batch_size, -1, 1)[..., None].repeat(1, 1, num_joints, 1))
        if t == "shape":
            inp.append(pred_shape[..., None, None].repeat(1, 1, num_joints, 1))
        if t == "cam":
            inp.append(pred_cam[..., None, None].repeat(1, 1, num_joints, 1))
    return torch.cat(inp, 1)


def _prepare_shape_mlp_inp(types_, feats, pred_pose, pred_shape, pred_cam):
    batch_size = pred_pose.shape[0]
    inp = []
    for t in types_:
        if t == "feats":
            inp.append(feats)
        if t == "all_pose":
            inp.append(pred_pose.reshape(batch_size, -1))
        if t == "shape":
            inp.append(pred_shape)
        if t == "cam":
            inp.append(pred_cam)
    return torch.cat(inp, 1)


def _final_preds(sd, pare, pose_feats, cam_shape_feats, batch_size):
    """pare_head.py _pare_get_final_preds, starting from the mean parameters (forward)."""
    init_pose = sd["model.head.init_pose"].expand(batch_size, -1)
    init_shape = sd["model.head.init_shape"].expand(batch_size, -1)
    init_cam = sd["model.head.init_cam"].expand(batch_size, -1)
    pose_weight = sd["model.head.pose_mlp.weight"]

    pose_feats = pose_feats.unsqueeze(-1)  # N, C, J, 1
    init_pose = init_pose.reshape(init_pose.shape[0], 6, -1).unsqueeze(-1)  # PARE: 6-major
    shape_feats = torch.flatten(cam_shape_feats, start_dim=1)  # channel-major: c * 24 + j
    if pare["ITERATIVE_REGRESSION"]:
        pose_types = pare["POSE_INPUT_TYPE"].split(".")
        shape_types = pare["SHAPE_INPUT_TYPE"].split(".")
        pred_pose, pred_cam, pred_shape = init_pose, init_cam, init_shape
        for _ in range(pare["NUM_ITERATIONS"]):
            pose_inp = _prepare_pose_mlp_inp(
                pose_types, pose_feats, pred_pose, pred_shape, pred_cam
            )
            shape_inp = _prepare_shape_mlp_inp(
                shape_types, shape_feats, pred_pose, pred_shape, pred_cam
            )
            if pare["ITER_RESIDUAL"]:
                pred_pose = _locally_connected(pose_weight, pose_inp) + pred_pose
                pred_cam = _linear(sd, "cam_mlp", shape_inp) + pred_cam
                pred_shape = _linear(sd, "shape_mlp", shape_inp) + pred_shape
            else:
                pred_pose = _locally_connected(pose_weight, pose_inp)
                pred_cam = _linear(sd, "cam_mlp", shape_inp)
                pred_shape = _linear(sd, "shape_mlp", shape_inp) + init_shape
    else:
        pred_pose = _locally_connected(pose_weight, pose_feats)
        pred_cam = _linear(sd, "cam_mlp", shape_feats)
        pred_shape = _linear(sd, "shape_mlp", shape_feats)
        if pare["USE_MEAN_CAMSHAPE"]:
            pred_cam = pred_cam + init_cam
            pred_shape = pred_shape + init_shape
        if pare["USE_MEAN_POSE"]:
            pred_pose = pred_pose + init_pose
    pred_pose = pred_pose.squeeze(-1).transpose(2, 1)  # N, J, 6
    return pred_pose, pred_shape, pred_cam


def rot6d_to_rotmat(x):
    """utils/geometry.py rot6d_to_rotmat."""
    x = x.reshape(-1, 3, 2)
    a1 = x[:, :, 0]
    a2 = x[:, :, 1]
    b1 = F.normalize(a1)
    b2 = F.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack((b1, b2, b3), dim=-1)


def reference_forward(state: dict, pare: dict, features: list[torch.Tensor]) -> dict:
    """PARE's predictions from the body's feature maps (``features``: HRNet's four branches or
    ResNet's layer4), computed in float64 from the checkpoint's tensors. Returns ``rotmat``
    (B, 24, 3, 3), ``betas`` (B, 10), ``camera`` (B, 3) = pred_cam, ``part_logits``
    (B, 25, H, W) = pred_segm_mask."""
    sd = {k: v.double() if v.is_floating_point() else v for k, v in state.items() if "model." in k}
    features = [f.double() for f in features]
    hrnet = pare["BACKBONE"].startswith("hrnet")
    x = _hrnet_conv_fusion(sd, features) if hrnet else features[0]
    dims = head_dims(pare, x.shape[1])
    batch_size = x.shape[0]

    part_feats = _branch(sd, "keypoint_deconv_layers", x, dims["layers"], hrnet)
    segm = _conv1x1(sd, "keypoint_final_layer", part_feats)  # pred_segm_mask
    heatmaps = segm[:, 1:]  # background removed
    smpl_feats = _branch(sd, "smpl_deconv_layers", x, dims["layers"], hrnet)
    cam_shape_feats = _conv1x1(sd, "smpl_final_layer", smpl_feats)
    point_local_feat = _keypoint_attention(sd, pare, smpl_feats, heatmaps, dims["pose_in"])
    cam_shape_feats = _keypoint_attention(sd, pare, cam_shape_feats, heatmaps, dims["pose_in"])
    pred_pose, pred_shape, pred_cam = _final_preds(
        sd, pare, point_local_feat, cam_shape_feats, batch_size
    )
    rotmat = rot6d_to_rotmat(pred_pose).reshape(batch_size, 24, 3, 3)
    return {
        "rotmat": rotmat,
        "betas": pred_shape,
        "camera": pred_cam,
        "part_logits": segm,
        "pose_6d": pred_pose,  # PARE's pred_pose before rot6d_to_rotmat (B, 24, 6)
    }


def rot6d_sensitivity(pose_6d: torch.Tensor) -> torch.Tensor:
    """(B, J, 6) -> (B, J): how much rot6d_to_rotmat amplifies a relative error of the 6D input,
    max(1, |x| / min(|a1|, |a2 - (b1 . a2) b1|)): Gram-Schmidt divides by the first column's norm
    and by the second's part orthogonal to it."""
    x = pose_6d.reshape(*pose_6d.shape[:-1], 3, 2)
    a1, a2 = x[..., 0], x[..., 1]
    b1 = F.normalize(a1, dim=-1)
    a2_perp = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    smallest = torch.minimum(a1.norm(dim=-1), a2_perp.norm(dim=-1))
    return (pose_6d.norm(dim=-1) / smallest).clamp(min=1.0)
