"""The official PARE checkpoints -> this project's weights and config.

PARE (mkocabas/PARE) releases PyTorch Lightning 1.1.8 checkpoints (``pare_checkpoint.ckpt``,
``pare_w_3dpw_checkpoint.ckpt``) and the yacs YAML they were trained with. :func:`convert_pare`
reads both and returns our :class:`pare.config.Config` and a state dict for :class:`pare.models.PARE`;
:func:`write_converted` saves them as ``model.safetensors`` + ``config.yaml``, a folder that
``load_trained_model``, ``train/evaluate.py``, ``train/predict.py`` and ``train/train.py``
(``train.init_weights``) accept.

- **Safe loading.** The checkpoint is a pickle. It is read with ``torch.load(weights_only=True)``
  plus an allow-list of the few non-tensor classes Lightning 1.1.8 puts there (yacs ``CfgNode``
  and Lightning's ``AttributeDict``, read as plain dicts; the ``ModelCheckpoint``/``EarlyStopping``
  classes that key its callback states as inert markers). Nothing from the file is executed;
  any other global is refused by name.
- **Every option and every tensor.** Each ``PARE.*`` option of the YAML is implemented
  (mapped onto ``model.*``), known to leave the network unchanged (loss weights, options read
  only by a disabled feature), or refused by name. Each ``model.*`` tensor is mapped, or known
  not to belong to the network (PARE's SMPL layer buffers, HRNet's unused keypoint layer, the
  soft-argmax temperature) and skipped; anything else is an error naming it, as is a tensor our
  model lacks or has in another shape. What the YAML says is cross-checked against the tensor
  shapes (the released YAMLs are not public here, so both are needed to catch a mismatched pair),
  and against the config Lightning stored in the checkpoint (a difference is a warning: PARE's
  scripts/eval.py follows the YAML).
- **PARE's layouts** (pare/models/head/pare_head.py, pare/models/layers/): ``pose_mlp`` is a
  LocallyConnected2d weight (1, 6, P, 24, 1, 1) -> our (24, P, 6); the shape/camera regressors
  read the pooled (N, 64, 24) features flattened channel-major (f * 24 + j) -> our joint-major
  (j * 64 + f) columns; ``init_pose`` (1, 144) is read by PARE 6-major (``reshape(N, 6, -1)``) ->
  our (24, 6) start.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from pare.config import Config, ConfigError, load_config, save_config
from pare.geometry import FOCAL_LENGTH

NUM_JOINTS = 24
PARE_BODY_MODEL = "data/body_models/smpl"  # PARE evaluates with the real SMPL files


class PareConversionError(ValueError):
    """A PARE checkpoint or YAML that cannot be converted faithfully (the message names why)."""


# ----------------------------------------------------------------------------- safe loading


class InertConfigNode:
    """Stands for yacs' ``CfgNode`` (and Lightning's ``AttributeDict``), both dict subclasses:
    unpickling one yields a plain ``OrderedDict`` of its items (torch's weights-only loader
    fills only plain dicts; the node's flags land in that dict's ``__dict__``)."""

    def __new__(cls, *args: Any) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


class InertCallbackKey:
    """Stands for a Lightning callback class that keys its saved state; never instantiated."""


# Full pickle names -> inert stand-ins. These are the only non-tensor globals a PARE checkpoint
# holds besides what torch's weights-only loader already accepts (tensors, plain containers).
_CHECKPOINT_GLOBALS = {
    "yacs.config.CfgNode": InertConfigNode,
    "pytorch_lightning.utilities.parsing.AttributeDict": InertConfigNode,
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": InertCallbackKey,
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping": InertCallbackKey,
}
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)|Unsupported global: ([\w. ]+?) was not")


def read_lightning_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint as plain data, without running anything from the file.

    Returns the checkpoint dict (``state_dict``: name -> tensor; ``hyper_parameters`` with its
    yacs nodes as plain dicts; the rest as stored). Raises FileNotFoundError, and
    :class:`PareConversionError` for a file that is not a torch checkpoint or that names any
    global outside the allow-list (naming the global)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PARE checkpoint not found: {path} (see the README's downloads)")
    allowed = [(cls, name) for name, cls in _CHECKPOINT_GLOBALS.items()]
    try:
        with torch.serialization.safe_globals(allowed):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _REFUSED_GLOBAL.search(str(err))
        name = next((g for g in found.groups() if g), "?") if found else None
        name = name.strip().removeprefix("GLOBAL ") if name else None
        if name:
            raise PareConversionError(
                f"{path}: refusing to load global '{name}' (nothing was executed). A PARE "
                "checkpoint holds tensors, plain containers and yacs/Lightning config objects "
                "only; this file is corrupt or crafted"
            ) from None
        raise PareConversionError(f"{path}: not a readable torch checkpoint ({err})") from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        raise PareConversionError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err}); download "
            "it again"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise PareConversionError(
            f"{path}: no 'state_dict' in it; expected a PARE Lightning checkpoint (.ckpt)"
        )
    return checkpoint


# ----------------------------------------------------------------------------- the YAML

# PARE's defaults (pare/core/config.py, hparams.PARE) for every option it defines, so a partial
# YAML reads as PARE would read it. Grouped by what conversion does with each.
_MAPPED = {  # implemented: mapped onto model.* by _model_settings
    "BACKBONE": "resnet50",
    "NUM_FEATURES_SMPL": 64,
    "NUM_DECONV_LAYERS": 3,
    "NUM_DECONV_FILTERS": 256,
    "ITERATIVE_REGRESSION": False,
    "ITER_RESIDUAL": False,
    "NUM_ITERATIONS": 3,
    "SHAPE_INPUT_TYPE": "feats.all_pose.shape.cam",
    "POSE_INPUT_TYPE": "feats.neighbor_pose_feats.all_pose.self_pose.neighbor_pose.shape.cam",
    "USE_MEAN_CAMSHAPE": False,
    "USE_MEAN_POSE": False,
    "USE_POSTCONV_KEYPOINT_ATTENTION": False,
    "USE_SCALE_KEYPOINT_ATTENTION": False,
    "KEYPOINT_ATTENTION_ACT": "softmax",
    "USE_KEYPOINT_ATTENTION": False,  # forced on by DATASET.USE_HEATMAPS=part_segm, as in PARE
    "DECONV_CONV_KERNEL_SIZE": 4,  # ResNet deconvolutions; only 4 is implemented
}
_FIXED = {  # change the network unless they have this value; not implemented otherwise
    "NUM_JOINTS": 24,
    "USE_KEYPOINT_FEATURES_FOR_SMPL_REGRESSION": False,
    "USE_FINAL_NONLOCAL": None,
    "USE_BRANCH_NONLOCAL": None,
    "USE_HMR_REGRESSION": False,
    "USE_COATTENTION": False,
    "USE_UPSAMPLING": False,
    "USE_SOFT_ATTENTION": False,
    "NUM_BRANCH_ITERATION": 0,
    "USE_RESNET_CONV_HRNET": False,
    "USE_POS_ENC": False,
    "POSE_MLP_NUM_LAYERS": 1,
    "SHAPE_MLP_NUM_LAYERS": 1,
}
# Read by PARE only for training, or only by a feature the fixed options above keep off; their
# value does not change the converted network.
_INERT = {
    "SOFTMAX_TEMP",  # soft-argmax temperature: unused with part segmentation maps
    "USE_ATTENTION",
    "USE_SELF_ATTENTION",  # in hparams.PARE but never passed to the model
    "NUM_COATTENTION_ITER",
    "COATTENTION_CONV",
    "BRANCH_DEEPER",
    "POSE_MLP_HIDDEN_SIZE",
    "SHAPE_MLP_HIDDEN_SIZE",
    "INIT_XAVIER",  # initialisation only
    "USE_SHAPE_REG",
    "SHAPE_LOSS_WEIGHT",
    "KEYPOINT_LOSS_WEIGHT",
    "KEYPOINT_NATIVE_LOSS_WEIGHT",
    "HEATMAPS_LOSS_WEIGHT",
    "SMPL_PART_LOSS_WEIGHT",
    "PART_SEGM_LOSS_WEIGHT",
    "POSE_LOSS_WEIGHT",
    "BETA_LOSS_WEIGHT",
    "OPENPOSE_TRAIN_WEIGHT",
    "GT_TRAIN_WEIGHT",
    "LOSS_WEIGHT",
}
# BACKBONE -> (our backbone, HRNet fusion align_corners). PARE's "hrnet_w32-conv" upsamples with
# align_corners=True (pare/models/backbone/hrnet.py); "-interp" (no convolutions) is not built.
_BACKBONES = {
    "hrnet_w32-conv": ("hrnet_w32", True),
    "resnet50": ("resnet50", False),
    "resnet18": ("resnet18", False),
}


def read_pare_yaml(path: str | os.PathLike) -> dict[str, dict]:
    """PARE's yacs YAML as plain data: ``{"PARE": {...}, "DATASET": {...}, ...}`` with PARE's
    defaults filled in for the network options it does not set. Raises FileNotFoundError, and
    :class:`PareConversionError` for a file that is not a YAML mapping or has no PARE section."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PARE config not found: {path} (the YAML released with the .ckpt)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PareConversionError(f"{path}: not a readable YAML file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("PARE"), dict):
        raise PareConversionError(f"{path}: no 'PARE:' section; is this PARE's config YAML?")
    data["PARE"] = {**_MAPPED, **_FIXED, **data["PARE"]}
    data.setdefault("DATASET", {})
    return data


def _model_settings(pare_cfg: dict, source: str) -> dict[str, Any]:
    """PARE's YAML -> our ``model.*`` / ``data.crop_size`` settings. Raises
    :class:`PareConversionError` naming an option that is unknown or not implemented."""
    opts, dataset = pare_cfg["PARE"], pare_cfg["DATASET"]
    known = set(_MAPPED) | set(_FIXED) | _INERT
    for key in opts:
        if key not in known:
            raise PareConversionError(
                f"{source}: unknown PARE option PARE.{key}; this converter knows PARE's options "
                "as of mkocabas/PARE f848b2f and refuses others rather than guess"
            )
    for key, value in _FIXED.items():
        # None, False, 0 and "" all mean "off" in PARE's YAML dumps.
        if opts[key] != value and (value or opts[key]):
            raise PareConversionError(
                f"{source}: PARE.{key}={opts[key]!r} changes the network and is not implemented "
                f"(only {value!r} is)"
            )
    method = pare_cfg.get("METHOD", "pare")
    if method != "pare":
        raise PareConversionError(f"{source}: METHOD={method!r}; only PARE ('pare') converts")
    heatmaps = dataset.get("USE_HEATMAPS", "part_segm")
    # part_segm forces keypoint attention on (PARE's PareHead); part_segm_pool only adds a
    # soft-argmax keypoint output, so with keypoint attention it is the same network.
    if heatmaps != "part_segm" and not (
        heatmaps == "part_segm_pool" and opts["USE_KEYPOINT_ATTENTION"]
    ):
        raise PareConversionError(
            f"{source}: DATASET.USE_HEATMAPS={heatmaps!r} with PARE.USE_KEYPOINT_ATTENTION="
            f"{opts['USE_KEYPOINT_ATTENTION']}; only PARE's part segmentation attention "
            "('part_segm', or 'part_segm_pool' with keypoint attention) is implemented"
        )
    focal = float(dataset.get("FOCAL_LENGTH", FOCAL_LENGTH))
    if focal != FOCAL_LENGTH:
        raise PareConversionError(
            f"{source}: DATASET.FOCAL_LENGTH={focal}; the crop camera here uses {FOCAL_LENGTH}"
        )
    if opts["BACKBONE"] not in _BACKBONES:
        raise PareConversionError(
            f"{source}: PARE.BACKBONE={opts['BACKBONE']!r} is not implemented; "
            f"choose one of {list(_BACKBONES)}"
        )
    backbone, align_corners = _BACKBONES[opts["BACKBONE"]]
    if not backbone.startswith("hrnet") and opts["DECONV_CONV_KERNEL_SIZE"] != 4:
        raise PareConversionError(
            f"{source}: PARE.DECONV_CONV_KERNEL_SIZE={opts['DECONV_CONV_KERNEL_SIZE']} is not "
            "implemented (only 4)"
        )
    if opts["KEYPOINT_ATTENTION_ACT"] not in ("softmax", "sigmoid"):
        raise PareConversionError(
            f"{source}: PARE.KEYPOINT_ATTENTION_ACT={opts['KEYPOINT_ATTENTION_ACT']!r}; PARE "
            "defines 'softmax' and 'sigmoid'"
        )
    return {
        "model.backbone": backbone,
        "model.fusion_align_corners": align_corners,
        "model.branch_layers": int(opts["NUM_DECONV_LAYERS"]),
        "model.branch_channels": int(opts["NUM_DECONV_FILTERS"]),
        "model.shape_cam_channels": int(opts["NUM_FEATURES_SMPL"]),
        "model.iterative_regression": bool(opts["ITERATIVE_REGRESSION"]),
        "model.num_iterations": int(opts["NUM_ITERATIONS"]),
        "model.iter_residual": bool(opts["ITER_RESIDUAL"]),
        "model.pose_input_type": str(opts["POSE_INPUT_TYPE"]),
        "model.shape_input_type": str(opts["SHAPE_INPUT_TYPE"]),
        "model.use_mean_pose": bool(opts["USE_MEAN_POSE"]),
        "model.use_mean_camshape": bool(opts["USE_MEAN_CAMSHAPE"]),
        "model.keypoint_attention_act": opts["KEYPOINT_ATTENTION_ACT"],
        "model.scale_keypoint_attention": bool(opts["USE_SCALE_KEYPOINT_ATTENTION"]),
        "model.postconv_keypoint_attention": bool(opts["USE_POSTCONV_KEYPOINT_ATTENTION"]),
        "data.crop_size": int(dataset.get("IMG_RES", 224)),
    }


# Our config keys -> PARE's option names, to report a refused combination in PARE's words.
_OPTION_NAMES = {
    "model.pose_input_type": "PARE.POSE_INPUT_TYPE",
    "model.shape_input_type": "PARE.SHAPE_INPUT_TYPE",
    "model.iterative_regression": "PARE.ITERATIVE_REGRESSION",
    "model.postconv_keypoint_attention": "PARE.USE_POSTCONV_KEYPOINT_ATTENTION",
    "model.num_iterations": "PARE.NUM_ITERATIONS",
    "model.branch_channels": "PARE.NUM_DECONV_FILTERS",
    "model.branch_layers": "PARE.NUM_DECONV_LAYERS",
    "model.shape_cam_channels": "PARE.NUM_FEATURES_SMPL",
}


# ----------------------------------------------------------------------------- the tensors

# Checkpoint entries that are not the network: PARE's trainer keeps SMPL layers, a joint
# regressor and renderer buffers beside it (pare/core/trainer.py), and the model its own SMPL
# layer (pare/models/head/smpl_head.py). This project builds the body from body.model_path.
_NOT_NETWORK = re.compile(
    r"^(smpl\.|smpl_native\.|model\.smpl\.|J_regressor$|body_part_texture$|K$|R$|smpl_faces$"
    r"|part_label_bins$|model\.backbone\.final_layer\.|model\.head\.temperature$)"
)
# PARE prefix -> ours, for tensors that keep their layout.
_RENAMES = (
    ("model.head.keypoint_deconv_layers.", "head.branch_2d."),
    ("model.head.smpl_deconv_layers.", "head.branch_3d."),
    ("model.head.keypoint_final_layer.", "head.part_logits."),
    ("model.head.smpl_final_layer.", "head.shape_cam_features."),
    ("model.head.keypoint_attention.conv1x1_pose.", "head.pose_postconv."),
    ("model.head.keypoint_attention.conv1x1_shape_cam.", "head.shape_cam_postconv."),
    ("model.head.shape_mlp.bias", "head.shape.bias"),
    ("model.head.cam_mlp.bias", "head.camera.bias"),
)
# Tensors whose layout changes (see the module docstring).
_RELAYOUT = {
    "model.head.pose_mlp.weight": "head.pose_weight",
    "model.head.shape_mlp.weight": "head.shape.weight",
    "model.head.cam_mlp.weight": "head.camera.weight",
    "model.head.init_pose": "head.start_6d",
    "model.head.init_shape": "head.start_betas",
    "model.head.init_cam": "head.mean_camera",
}
# HRNet fusion: PARE's upsample_stage_{k} is one Sequential of k-1 x [Upsample, Conv, BN, ReLU];
# ours is upsample.{k-1}, a Sequential of k-1 blocks of those four.
_PARE_UPSAMPLE = re.compile(r"^model\.backbone\.upsample_stage_([234])\.(\d+)\.(.+)$")
_OUR_UPSAMPLE = re.compile(r"^backbone\.upsample\.([123])\.(\d+)\.([12])\.(.+)$")


def our_name(pare_key: str) -> str | None:
    """A PARE checkpoint key -> our state-dict key; None for an entry that is not part of the
    network. Raises :class:`PareConversionError` for a key this converter does not know."""
    if _NOT_NETWORK.match(pare_key):
        return None
    if pare_key in _RELAYOUT:
        return _RELAYOUT[pare_key]
    for theirs, ours in _RENAMES:
        if pare_key.startswith(theirs):
            return ours + pare_key[len(theirs) :]
    match = _PARE_UPSAMPLE.match(pare_key)
    if match:
        stage, index, rest = int(match[1]), int(match[2]), match[3]
        return f"backbone.upsample.{stage - 1}.{index // 4}.{index % 4}.{rest}"
    if pare_key.startswith("model.backbone."):
        return "backbone.body." + pare_key[len("model.backbone.") :]
    raise PareConversionError(
        f"checkpoint tensor {pare_key!r} has no counterpart here (a PARE head option this "
        "converter does not implement?)"
    )


def pare_name(key: str) -> str:
    """Our state-dict key -> the PARE checkpoint key it comes from (for error messages)."""
    for theirs, ours in _RELAYOUT.items():
        if key == ours:
            return theirs
    for theirs, ours in _RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours) :]
    match = _OUR_UPSAMPLE.match(key)
    if match:
        stage, block, layer, rest = int(match[1]), int(match[2]), int(match[3]), match[4]
        return f"model.backbone.upsample_stage_{stage + 1}.{4 * block + layer}.{rest}"
    return "model.backbone." + key.removeprefix("backbone.body.")


def _relayout(pare_key: str, value: torch.Tensor, shape_cam_channels: int) -> torch.Tensor:
    """PARE's layout of the tensors in :data:`_RELAYOUT` -> ours."""
    if pare_key == "model.head.pose_mlp.weight":
        if value.dim() != 6 or value.shape[0] != 1 or value.shape[-2:] != (1, 1):
            raise PareConversionError(
                f"{pare_key} has shape {tuple(value.shape)}; PARE's LocallyConnected2d pose "
                "regressor is (1, 6, P, 24, 1, 1)"
            )
        return value[0, :, :, :, 0, 0].permute(2, 1, 0)  # (6, P, J) -> (J, P, 6)
    if pare_key in ("model.head.shape_mlp.weight", "model.head.cam_mlp.weight"):
        width = NUM_JOINTS * shape_cam_channels
        if value.dim() != 2 or value.shape[1] < width:
            raise PareConversionError(
                f"{pare_key} has shape {tuple(value.shape)}; expected (out, >= {width})"
            )
        feats = value[:, :width].unflatten(1, (shape_cam_channels, NUM_JOINTS))  # (out, F, J)
        return torch.cat([feats.transpose(1, 2).flatten(1), value[:, width:]], 1)
    if pare_key == "model.head.init_pose":
        if value.numel() != NUM_JOINTS * 6:
            raise PareConversionError(
                f"{pare_key} has shape {tuple(value.shape)}; expected (1, 144)"
            )
        return value.reshape(6, NUM_JOINTS).t()  # PARE reads it 6-major: reshape(N, 6, -1)
    return value.reshape(-1)  # init_shape (1, 10), init_cam (1, 3)


def _check_against_tensors(settings: dict, state: dict, source: str) -> None:
    """Cross-check the YAML's network options against the checkpoint's tensor shapes, naming
    the option and the tensor that disagree."""
    head = "model.head."

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise PareConversionError(f"{source}: the checkpoint lacks {key!r}")
        return state[key]

    channels = need(head + "keypoint_final_layer.weight").shape[1]
    convs = re.compile(re.escape(head) + r"keypoint_deconv_layers\.\d+\.weight$")
    layers = sum(1 for k, v in state.items() if convs.match(k) and v.dim() == 4)
    features = need(head + "smpl_final_layer.weight").shape[0]
    hrnet = any(k.startswith("model.backbone.stage4.") for k in state)
    postconv = any(k.startswith(head + "keypoint_attention.") for k in state)
    inferred = {
        "model.branch_channels": ("PARE.NUM_DECONV_FILTERS", channels, "keypoint_final_layer"),
        "model.branch_layers": ("PARE.NUM_DECONV_LAYERS", layers, "keypoint_deconv_layers"),
        "model.shape_cam_channels": ("PARE.NUM_FEATURES_SMPL", features, "smpl_final_layer"),
        "model.postconv_keypoint_attention": (
            "PARE.USE_POSTCONV_KEYPOINT_ATTENTION",
            postconv,
            "keypoint_attention.conv1x1_*",
        ),
    }
    for key, (option, value, tensor) in inferred.items():
        if settings[key] != value:
            raise PareConversionError(
                f"{source}: {option}={settings[key]} but the checkpoint's {head}{tensor} "
                f"implies {value}; are the .ckpt and the YAML a pair?"
            )
    if settings["model.backbone"].startswith("hrnet") != hrnet:
        raise PareConversionError(
            f"{source}: PARE.BACKBONE names {settings['model.backbone']} but the checkpoint's "
            f"backbone is {'an HRNet' if hrnet else 'a ResNet'}; are the .ckpt and the YAML a pair?"
        )
    if settings["model.iterative_regression"]:
        return
    # Without iterative regression the regressors read the pooled features alone.
    pose_in = need(head + "pose_mlp.weight").shape[2]
    shape_in = need(head + "shape_mlp.weight").shape[1]
    if (pose_in, shape_in) != (channels, NUM_JOINTS * features):
        raise PareConversionError(
            f"{source}: PARE.ITERATIVE_REGRESSION=False but {head}pose_mlp / shape_mlp read "
            f"{pose_in} / {shape_in} inputs, not {channels} / {NUM_JOINTS * features}: the "
            "checkpoint was trained with iterative regression"
        )


@dataclass
class ConvertedPare:
    """:func:`convert_pare`'s result: our config, the state dict for :class:`pare.models.PARE`
    and metadata for the weights file."""

    cfg: Config
    state: dict[str, torch.Tensor]
    meta: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_pare(
    ckpt: str | os.PathLike, pare_yaml: str | os.PathLike, overrides: list[str] | tuple = ()
) -> ConvertedPare:
    """A PARE ``.ckpt`` and its YAML -> :class:`ConvertedPare` (config, state dict, metadata).

    ``overrides`` (``key=value``) go into the config last, e.g. ``body.model_path=...`` (the
    default is PARE's real SMPL folder, ``data/body_models/smpl``). Raises FileNotFoundError,
    :class:`PareConversionError` naming the option, tensor or pickle global that does not
    convert, and ConfigError for a bad override."""
    ckpt, pare_yaml = Path(ckpt), Path(pare_yaml)
    pare_cfg = read_pare_yaml(pare_yaml)
    settings = _model_settings(pare_cfg, str(pare_yaml))
    checkpoint = read_lightning_checkpoint(ckpt)
    state = checkpoint["state_dict"]
    _check_embedded_config(checkpoint, pare_cfg, ckpt)
    _check_against_tensors(settings, state, f"{pare_yaml} + {ckpt.name}")
    base = [f"{k}={v}" for k, v in settings.items()] + [f"body.model_path={PARE_BODY_MODEL}"]
    try:
        cfg = load_config([], [*base, *overrides])
    except ConfigError as err:
        message = str(err)
        for ours, theirs in _OPTION_NAMES.items():
            message = message.replace(ours, theirs)
        raise PareConversionError(f"{pare_yaml}: {message}") from None

    from pare.models import build_model  # here: reading and checking the files needs no model

    own = build_model(cfg.model, cfg.body).state_dict()
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = our_name(key)
        if name is None:
            continue
        if name not in own:
            raise PareConversionError(
                f"{ckpt}: tensor {key!r} has no place in the model the YAML describes ({name}); "
                "is an option of the YAML different from the checkpoint's?"
            )
        if key in _RELAYOUT:
            value = _relayout(key, value, cfg.model.shape_cam_channels)
        if value.shape != own[name].shape:
            raise PareConversionError(
                f"{ckpt}: tensor {key!r} has shape {tuple(value.shape)}, the model needs "
                f"{tuple(own[name].shape)} for {name}"
            )
        converted[name] = value.to(own[name].dtype).contiguous()
    # BN step counters only matter for momentum=None, which nothing here uses.
    missing = [k for k in own if k not in converted and not k.endswith(".num_batches_tracked")]
    if missing:
        raise PareConversionError(
            f"{ckpt}: the checkpoint lacks {[pare_name(k) for k in missing[:5]]} "
            f"({len(missing)} tensors), which the model the YAML describes needs"
        )
    for key in own:
        converted.setdefault(key, own[key])
    meta = {
        "source": "PARE",
        "pare_checkpoint": ckpt.name,
        "pare_checkpoint_sha256": _sha256(ckpt),
        "pare_config": pare_yaml.name,
        "step": int(checkpoint.get("global_step", -1)),
        "epoch": int(checkpoint.get("epoch", -1)),
    }
    return ConvertedPare(cfg, converted, meta)


def _check_embedded_config(checkpoint: dict, pare_cfg: dict, ckpt: Path) -> None:
    """Lightning keeps the training config in ``hyper_parameters``. Where it and the YAML set a
    network option of PARE's differently, warn naming it and follow the YAML: PARE's own
    scripts/eval.py builds the model from the YAML and then loads the weights, so the published
    numbers come from the YAML's settings. (Shape-changing differences are errors anyway: the
    tensors are cross-checked against the YAML.)"""
    embedded = (checkpoint.get("hyper_parameters") or {}).get("PARE")
    if not isinstance(embedded, dict):
        return
    for key in sorted(set(_MAPPED) | set(_FIXED)):
        if key in embedded and embedded[key] != pare_cfg["PARE"][key]:
            warnings.warn(
                f"{ckpt.name}: its own config says PARE.{key}={embedded[key]!r}, the YAML "
                f"{pare_cfg['PARE'][key]!r}; following the YAML, as PARE's scripts/eval.py does",
                stacklevel=3,
            )


def write_converted(
    ckpt: str | os.PathLike,
    pare_yaml: str | os.PathLike,
    out_dir: str | os.PathLike,
    overrides: list[str] | tuple = (),
) -> Path:
    """Convert and write ``out_dir/model.safetensors`` and ``out_dir/config.yaml`` (each
    atomically); ``train.init_weights`` in the config points at the weights, so ``train.py
    --config out_dir/config.yaml`` fine-tunes from them. Returns ``out_dir``."""
    from pare.checkpoint import save_weights

    out_dir = Path(out_dir)
    weights = out_dir / "model.safetensors"
    init = f"train.init_weights={weights.resolve()}"
    result = convert_pare(ckpt, pare_yaml, [init, *overrides])
    out_dir.mkdir(parents=True, exist_ok=True)
    save_weights(result.state, weights, result.meta)
    save_config(result.cfg, out_dir / "config.yaml")
    return out_dir
