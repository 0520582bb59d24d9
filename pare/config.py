"""The one typed config schema, and how YAML files and command-line overrides merge into it.

Every default lives in the dataclasses below. YAML files in ``configs/`` hold only overrides;
``key=value`` arguments on the command line are applied last and win. An unknown key, a value of
the wrong type or a value outside a field's choices raises :class:`ConfigError` naming the key
(and, for unknown keys, the closest valid ones).

    cfg = load_config(["configs/demo.yaml"], ["optim.lr=1e-4"])
    cfg.optim.lr  # 0.0001, typed
    save_config(cfg, "runs/x/config.yaml")  # resolved, reloadable with load_config
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pare.io_utils import atomic_open


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _check_choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(
            f"{section}.{name}={value!r} is not allowed; choose one of {list(choices)}"
        )


# Every backbone's part maps come out at a quarter of the crop (PARE: 224 -> 56).
HEATMAP_STRIDE = 4


def heatmap_size(crop_size: int) -> int:
    """Side H of the part heatmaps, in pixels, for crops of side S = ``crop_size``: S / 4.
    Derived, never configured, so model and data cannot disagree."""
    return crop_size // HEATMAP_STRIDE


# The batch's part labels are twice the heatmaps' side (S / 2). PARE computes its part loss at
# the input's side S on bilinearly upsampled logits (pare/losses/segmentation.py, CrossEntropy);
# labels warped down to 56 x 56 lose hands, feet and the neck. S / 2 keeps them at a quarter of
# the loss's cost at S.
PART_LABEL_STRIDE = 2


def part_label_size(crop_size: int) -> int:
    """Side P of the batch's part labels, in pixels, for crops of side S = ``crop_size``: S / 2
    (2 x the heatmap side H). The part loss upsamples the (H, H) logits to it."""
    return crop_size // PART_LABEL_STRIDE


@dataclass
class BodyConfig:
    """Which SMPL files to use: a folder of SMPL_{NEUTRAL,MALE,FEMALE}.{pkl,npz}, or 'standin'.

    The model predicts the neutral body with 10 betas; evaluation and packing pick each sample's
    gendered body from its data, so neither is a setting."""

    model_path: str = "standin"


@dataclass
class AugmentConfig:
    """PARE's training augmentation."""

    flip_prob: float = 0.5
    color_scale: float = 0.4  # each channel scaled by U(1 - c, 1 + c)
    rotation_std_deg: float = 30.0
    rotation_max_deg: float = 60.0
    rotation_prob: float = 0.4
    scale_std: float = 0.25
    scale_min: float = 0.75
    scale_max: float = 1.25
    translation: float = 0.0  # box-centre shift, uniform in +-translation box sides
    # Procedural textured patches, which need no download; data.augment.occluders replaces them.
    occlusion_prob: float = 0.0
    extreme_crop_prob: float = 0.0  # crop to upper body, lower body or head and shoulders
    # PARE's synthetic occlusion: a folder of RGBA object cut-outs (shards/make_occluders.py
    # writes them from Pascal VOC 2012); every training crop then gets 1-7 of them. "" = off.
    occluders: str = ""
    # PARE blurs half its training crops (albumentations' MotionBlur, 3/5/7-pixel line kernels).
    motion_blur_prob: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "flip_prob",
            "rotation_prob",
            "occlusion_prob",
            "extreme_crop_prob",
            "motion_blur_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"data.augment.{name}={getattr(self, name)} must be in [0, 1]")
        if self.occluders and self.occlusion_prob > 0:
            raise ConfigError(
                f"data.augment.occluders={self.occluders!r} and "
                f"data.augment.occlusion_prob={self.occlusion_prob} are alternatives: the "
                "folder's objects occlude every crop, the procedural patches need no folder"
            )


OCCLUDERS_HINT = "shards/make_occluders.py --voc VOCdevkit/VOC2012 --out DIR writes them"


def occluder_files(folder: str | os.PathLike) -> list[Path]:
    """The cut-outs (``*.png``) of ``data.augment.occluders``, sorted: a draw picks one by its
    index, so the same seed picks the same object. Raises ConfigError, one line naming the
    folder, when it is missing or holds none.

    Not checked when a config loads: evaluation and prediction read a run's config.yaml on
    machines that need not have the folder. The training stream calls it on its first draw; an
    entry point can call it up front."""
    path = Path(folder)
    if not path.is_dir():
        raise ConfigError(
            f"data.augment.occluders: folder not found: {path} ({OCCLUDERS_HINT}; "
            "data.augment.occluders='' turns object occlusion off)"
        )
    files = sorted(p for p in path.glob("*.png") if not p.name.startswith("."))
    if not files:
        raise ConfigError(f"data.augment.occluders: no *.png cut-outs in {path} ({OCCLUDERS_HINT})")
    return files


@dataclass
class DatasetSource:
    """One packed dataset of the mix: a split folder (with manifest.json), a manifest, or shard
    URLs, and its sampling weight (the stream resolves it into a ShardSource)."""

    path: str = "shards/out/3dpw/train"
    weight: float = 1.0


@dataclass
class DataConfig:
    """Shards to stream and how to batch them (batch_size is per process).

    ``crop_size`` (S) is the side of the network input in pixels; the part heatmaps are
    :attr:`heatmap_size` = S / 4 on a side (PARE's default: 224 -> 56) and the part labels
    :attr:`part_label_size` = S / 2. The stored crops in the shards have their own size,
    resampled to S by augmentation.
    """

    train: list[DatasetSource] = field(
        default_factory=lambda: [
            DatasetSource("shards/out/3dpw/train", 0.6),
            DatasetSource("shards/out/mpii/train", 0.4),
        ]
    )
    val: list[DatasetSource] = field(
        default_factory=lambda: [DatasetSource("shards/out/3dpw/validation", 1.0)]
    )
    crop_size: int = 224
    batch_size: int = 32
    num_workers: int = 4
    shuffle_buffer: int = 1000
    steps_per_epoch: int = 1000
    cache_dir: str = ""  # local copies of remote shards (URLs, pipe: commands); empty = none
    # Training samples that do not decode (a corrupt JPEG, a member lost to a truncated shard)
    # are skipped and logged with their shard and key; more than this many in one loader
    # process stops training (the stream is deterministic: a crash would repeat on resume).
    max_bad_samples: int = 100
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    @property
    def heatmap_size(self) -> int:
        """Side of the part heatmaps and part labels (px): the model's part maps come out at a
        quarter of the input, so this is derived, never set."""
        return heatmap_size(self.crop_size)

    @property
    def part_label_size(self) -> int:
        """Side of the batch's part labels (px): S / 2, see :func:`part_label_size`."""
        return part_label_size(self.crop_size)

    def __post_init__(self) -> None:
        if not self.train:
            raise ConfigError("data.train is empty; list at least one {path, weight}")
        # Every backbone downsamples by 32 at its coarsest and the part maps come out at 1/4.
        if self.crop_size % 32:
            raise ConfigError(f"data.crop_size={self.crop_size} must be a multiple of 32")
        for name in ("batch_size", "steps_per_epoch", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be at least 1")
        for name in ("num_workers", "max_bad_samples"):
            if getattr(self, name) < 0:
                raise ConfigError(f"data.{name}={getattr(self, name)} must be >= 0")
        for i, source in enumerate(self.train):
            if source.weight <= 0:
                raise ConfigError(f"data.train[{i}].weight={source.weight} must be positive")


BACKBONES = ("hrnet_w32", "resnet50", "hrnet_w18_small", "resnet18")


@dataclass
class AttentionConfig:
    """The design document's multi-head self-attention over the part heatmaps (off = vanilla
    PARE). The corrected maps are ``H + g * (A H - H)`` with a per-part gate g: by default it
    starts at zero and is learned, so an enabled model begins as vanilla PARE; ``gate_init: 1``
    with ``learn_gate: false`` is the document's ``H~ = A H`` from the first step."""

    enabled: bool = False
    heads: int = 4
    dim: int = 64  # D_k, the query/key width, split over the heads
    # Side of the grid attention runs on; 0 = the heatmaps' own (data.crop_size // 4, 56 by
    # default). Nonzero, it must divide that size (checked in Config).
    resolution: int = 28
    value_proj: bool = False  # learned per-head value projection (default: the heatmaps)
    gate_init: float = 0.0  # every part's gate at the start (0: vanilla PARE, 1: the document)
    learn_gate: bool = True  # false: the gate stays at gate_init

    def __post_init__(self) -> None:
        if self.heads < 1 or self.dim % self.heads:
            raise ConfigError(
                f"model.attention.dim={self.dim} must split evenly over heads={self.heads}"
            )
        if self.resolution < 0:
            raise ConfigError(f"model.attention.resolution={self.resolution} must be >= 0")


@dataclass
class ModelConfig:
    """PARE's architecture by default, from random backbone weights (configs/hrnet_w32.yaml
    starts from PARE's pretrained ones); the small backbones are for CPU runs and tests."""

    backbone: str = "hrnet_w32"
    # "random" = a deliberate random start (CPU runs, tests); a local .pth/.safetensors file
    # (timm or PARE/HRNet checkpoints; the PARE configs name the COCO-keypoint HRNet-W32 or
    # torchvision's ImageNet ResNet-50 under data/pretrained/, see pare/pretrained.py); "timm" =
    # timm's pretrained weights (needs the network once). A named file that is missing stops
    # train.py at once. "" is read as "random": earlier run folders' config.yaml spell it so.
    backbone_weights: str = "random"
    # SPIN-format mean parameters to start predictions from (smpl_mean_params.npz: pose, shape,
    # cam); "" = identity joint rotations, the body upright, zero betas, camera scale 0.9.
    mean_params: str = ""
    branch_layers: int = 2  # PARE's NUM_DECONV_LAYERS (3x3 convs for HRNet, deconvs for ResNet)
    branch_channels: int = 128  # PARE's NUM_DECONV_FILTERS
    shape_cam_channels: int = 64  # PARE's NUM_FEATURES_SMPL
    # The options below carry PARE's own semantics (mkocabas/PARE pare/models/head/pare_head.py,
    # pare/models/layers/keypoint_attention.py, pare/models/backbone/hrnet.py); their PARE names
    # are in upper case. The defaults are this project's head; train/convert_pare.py sets them
    # from a released checkpoint's YAML.
    # HRNet "conv" fusion: bilinear x2 upsampling with align_corners (PARE: True).
    fusion_align_corners: bool = False
    # ITERATIVE_REGRESSION / NUM_ITERATIONS / ITER_RESIDUAL: the regressors run num_iterations
    # times from the mean parameters, fed their previous output as POSE_INPUT_TYPE /
    # SHAPE_INPUT_TYPE say ("feats" plus any of self_pose, all_pose, shape, cam, in that
    # string's order). While it is off the input types are not read (PARE's YAML dumps carry
    # longer defaults that do nothing then).
    iterative_regression: bool = False
    num_iterations: int = 3
    iter_residual: bool = False
    pose_input_type: str = "feats"
    shape_input_type: str = "feats"
    # USE_MEAN_POSE / USE_MEAN_CAMSHAPE: add the mean parameters to the regressors' outputs (not
    # read with iterative regression, which starts from them). PARE's default is False for both;
    # this project's head has always started from its mean (True).
    use_mean_pose: bool = True
    use_mean_camshape: bool = True
    # KEYPOINT_ATTENTION_ACT: "softmax" (over each part's map) or "sigmoid" (per pixel, not
    # normalised); USE_SCALE_KEYPOINT_ATTENTION divides the maps by sqrt(H*W) first;
    # USE_POSTCONV_KEYPOINT_ATTENTION adds a 1x1 convolution (with bias) after pooling.
    keypoint_attention_act: str = "softmax"
    scale_keypoint_attention: bool = False
    postconv_keypoint_attention: bool = False
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        _check_choice("model", "backbone", self.backbone, BACKBONES)
        _check_choice(
            "model", "keypoint_attention_act", self.keypoint_attention_act, ("softmax", "sigmoid")
        )
        if self.backbone_weights == "":
            self.backbone_weights = "random"
        for name in ("branch_layers", "branch_channels", "shape_cam_channels", "num_iterations"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be at least 1")
        if self.iterative_regression:
            regression_inputs("pose_input_type", self.pose_input_type)
            regression_inputs("shape_input_type", self.shape_input_type)
            if self.postconv_keypoint_attention and self.pose_input_type != "feats":
                # PARE sizes its pose post-conv by the iterative input width but applies it to the
                # pooled features alone, which fails at the first forward pass.
                raise ConfigError(
                    "model.postconv_keypoint_attention cannot be combined with "
                    "model.iterative_regression and a model.pose_input_type other than 'feats' "
                    "(PARE's own code fails on that combination)"
                )
        if self.postconv_keypoint_attention and self.branch_channels == self.shape_cam_channels:
            # PARE picks the post-conv by channel count, so equal widths send the shape and
            # camera features through the pose convolution; that quirk is not reproduced.
            raise ConfigError(
                "model.postconv_keypoint_attention needs model.branch_channels != "
                "model.shape_cam_channels (PARE tells the two pooled features apart by width)"
            )


# Inputs the regressors may take with iterative regression (PARE's input_type_dim; the head
# knows their widths); "feats" is the pooled features themselves. PARE's neighbor_pose and
# neighbor_pose_feats are not implemented, and its shape regressor reads no self_pose.
POSE_INPUTS = ("feats", "self_pose", "all_pose", "shape", "cam")
SHAPE_INPUTS = ("feats", "all_pose", "shape", "cam")


def regression_inputs(name: str, value: str) -> list[str]:
    """``model.pose_input_type`` / ``model.shape_input_type`` ("feats.self_pose.shape.cam") ->
    the list of inputs in order. Raises ConfigError naming an input that is unknown, not
    implemented, repeated, or a list without "feats" (PARE asserts it)."""
    allowed = POSE_INPUTS if name == "pose_input_type" else SHAPE_INPUTS
    parts = value.split(".")
    for part in parts:
        if part not in allowed:
            raise ConfigError(
                f"model.{name}={value!r}: input {part!r} is not supported with "
                f"model.iterative_regression; use '.'-separated names from {list(allowed)}"
            )
    if "feats" not in parts or len(set(parts)) != len(parts):
        raise ConfigError(f"model.{name}={value!r} must contain 'feats' and no input twice")
    return parts


@dataclass
class LossConfig:
    """PARE's loss weights (``pare/losses/losses.py`` ``PARELoss``); the weighted sum is
    multiplied by ``total_scale``. ``openpose_weight`` scales the confidences of the 25
    OpenPose-style keypoint slots inside the 2D term (PARE's ``OPENPOSE_TRAIN_WEIGHT``, 0: only
    the 24 ground-truth slots are supervised); the ground-truth slots keep weight 1 (PARE's
    ``GT_TRAIN_WEIGHT``)."""

    keypoints_2d: float = 5.0
    joints_3d: float = 5.0
    openpose_weight: float = 0.0
    smpl_pose: float = 1.0
    smpl_shape: float = 0.001
    part_segmentation: float = 1.0
    camera: float = 1.0
    total_scale: float = 60.0


@dataclass
class OptimConfig:
    """Adam as PARE trains (lr 5e-5, no weight decay); AdamW and a cosine decay as options.
    Steps count optimiser steps (after gradient accumulation)."""

    optimizer: str = "adam"
    lr: float = 5e-5
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip_norm: float = 0.0  # 0 disables clipping
    warmup_steps: int = 0  # linear warmup from 0
    schedule: str = "constant"  # after warmup: "constant" or "cosine" (to 0 at train.max_steps)
    # Learning rate of the final SMPL regressors (per-part pose map, shape, camera) as a multiple
    # of lr. PARE uses 1; short runs from random weights learn much faster with more (their small
    # initial weights must grow by orders of magnitude, at most about lr per Adam step).
    regressor_lr_scale: float = 1.0
    # Learning rate of the part self-attention (W_q, W_k, the values' projection and the gate)
    # as a multiple of lr. At PARE's lr Adam moves the zero-initialised gate by at most about lr
    # per step: 1 needs >= 1/lr steps (20,000 at 5e-5) before the attention can matter.
    attention_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("optim", "optimizer", self.optimizer, ("adam", "adamw"))
        _check_choice("optim", "schedule", self.schedule, ("constant", "cosine"))
        for name in ("regressor_lr_scale", "attention_lr_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be positive")


@dataclass
class TrainConfig:
    output_dir: str = "runs/pare"
    max_steps: int = 100_000
    seed: int = 0
    mixed_precision: str = "launcher"  # "launcher" keeps what accelerate launch was given
    gradient_accumulation_steps: int = 1
    log_every: int = 50
    eval_every: int = 2000
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    resume: str = ""  # "", "auto" (latest in output_dir) or a checkpoint folder
    time_budget_s: float = 0.0  # stop, save and exit 0 after this many seconds; 0 = no budget
    max_nonfinite_steps: int = 20  # abort after this many non-finite losses in a row
    channels_last: bool = False
    compile: bool = False  # torch.compile the model
    # torch.compile's backend: "inductor" (PyTorch's default, generates kernels) or a cheaper one
    # that only traces ("aot_eager", "eager"), e.g. to check a compiled run quickly on a CPU.
    compile_backend: str = "inductor"
    image_every: int = 2000  # overlay images (predicted vs ground truth) every N steps; 0 = none
    # Exported weights (.safetensors) to start from, loaded after the model is built. Parameters
    # the file lacks keep their fresh initialisation: vanilla weights start the attention
    # variant (its gate at 0) as the same network, which is how train/compare.py gives both
    # variants one initialisation. A resume restores its checkpoint's weights over these.
    init_weights: str = ""

    def __post_init__(self) -> None:
        _check_choice(
            "train", "mixed_precision", self.mixed_precision, ("launcher", "no", "bf16", "fp16")
        )
        # torch._dynamo.list_backends() would import dynamo (seconds) to check a config.
        _check_choice(
            "train",
            "compile_backend",
            self.compile_backend,
            ("inductor", "aot_eager", "eager", "cudagraphs"),
        )
        # Cadences are step counts: 0 would divide by zero in the loop, a negative never fires.
        for name in ("log_every", "eval_every", "checkpoint_every", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be at least 1")
        if self.max_steps < 1:
            raise ConfigError(
                f"train.max_steps={self.max_steps} must be at least 1 (0 would export untrained "
                "weights)"
            )
        if self.image_every < 0:
            raise ConfigError(f"train.image_every={self.image_every} must be >= 0 (0 = no images)")


@dataclass
class LoggingConfig:
    """Weights & Biases tracking. The API key comes from the environment, never from here."""

    wandb_mode: str = "disabled"
    project: str = "pare"
    entity: str = ""
    run_name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_choice("logging", "wandb_mode", self.wandb_mode, ("disabled", "offline", "online"))


@dataclass
class Config:
    body: BodyConfig = field(default_factory=BodyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        attention, heatmap = self.model.attention, self.data.heatmap_size
        # PartSelfAttention average-pools the maps to resolution x resolution and upsamples its
        # correction bilinearly: above the heatmap's size pooling would only repeat tokens, and a
        # size that does not divide it gives tokens of unequal, overlapping windows.
        if attention.enabled and attention.resolution and heatmap % attention.resolution:
            raise ConfigError(
                f"model.attention.resolution={attention.resolution} must divide the heatmap "
                f"size data.crop_size // 4 = {heatmap} (data.crop_size={self.data.crop_size}), "
                "or be 0 to attend at the heatmap's own size"
            )


def _check_keys(override: Any, schema: type, prefix: str, source: str) -> None:
    """Reject keys the schema does not have, suggesting the closest valid ones."""
    if not isinstance(override, dict):
        return
    valid = {f.name: f for f in fields(schema)}
    for key, value in override.items():
        path = f"{prefix}{key}"
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=3, cutoff=0.5)
            every = [f"{prefix}{name}" for name in valid]
            hint = (
                f"did you mean {', '.join(prefix + c for c in close)}?"
                if close
                else f"valid keys: {', '.join(every)}"
            )
            raise ConfigError(f"{source}: unknown config key '{path}'; {hint}")
        sub_type = get_type_hints(schema)[key]
        if get_origin(sub_type) is list and is_dataclass(get_args(sub_type)[0]):
            for i, item in enumerate(value if isinstance(value, list) else []):
                _check_keys(item, get_args(sub_type)[0], f"{path}[{i}].", source)
            continue
        if is_dataclass(sub_type):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{path}' is a section; give it keys, not {value!r}")
            _check_keys(value, sub_type, f"{path}.", source)


def _merge(base: DictConfig, override: DictConfig, source: str) -> DictConfig:
    _check_keys(OmegaConf.to_container(override), Config, "", source)
    try:
        return OmegaConf.merge(base, override)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{source}: bad value for '{key}': {str(e).splitlines()[0]}") from None


# Settings that earlier versions wrote into every run folder's config.yaml and that no longer
# exist, so that those runs still evaluate and resume: key -> (the value that means what the
# code does now, why the key went). A file with that value loads with a warning; any other value
# is an error naming the key. The command line gets the plain unknown-key error.
_REMOVED_KEYS: dict[str, tuple[Any, str]] = {
    "body.gender": (
        None,
        "never read: evaluation uses each sample's gender, the model the neutral body",
    ),
    "body.num_betas": (10, "the head always predicts 10 betas"),
    "data.heatmap_size": ("crop_size // 4", "derived from data.crop_size (a quarter of it)"),
    "train.inject_nonfinite_at": ([], "a testing hook; tests patch the loss instead"),
}
_MOVED_KEYS = {"model.init_weights": "train.init_weights"}


def _migrate(container: dict, source: str) -> dict:
    """Drop or move the settings of :data:`_REMOVED_KEYS` / :data:`_MOVED_KEYS` in a loaded YAML
    mapping (and the never-read ``name`` of data sources), warning once per file."""
    notes: list[str] = []
    for key, (expected, why) in _REMOVED_KEYS.items():
        section, name = key.split(".")
        part = container.get(section)
        if not isinstance(part, dict) or name not in part:
            continue
        value = part.pop(name)
        if expected == "crop_size // 4":
            expected = part.get("crop_size", DataConfig.crop_size) // 4
        if expected is not None and value != expected:
            raise ConfigError(
                f"{source}: '{key}' was removed ({why}); {value!r} is not what the "
                f"code now does ({expected!r}): delete the key"
            )
        notes.append(key)
    for old, new in _MOVED_KEYS.items():
        (old_section, old_name), (new_section, new_name) = old.split("."), new.split(".")
        part = container.get(old_section)
        if isinstance(part, dict) and old_name in part:
            value = part.pop(old_name)
            if value:
                container.setdefault(new_section, {}).setdefault(new_name, value)
            notes.append(f"{old} -> {new}")
    for split in ("train", "val"):
        for entry in (container.get("data") or {}).get(split) or []:
            if isinstance(entry, dict) and entry.pop("name", None) is not None:
                notes.append(f"data.{split}[].name")
    if notes:
        warnings.warn(
            f"{source}: settings of an earlier version ignored or moved: "
            f"{', '.join(dict.fromkeys(notes))}",
            stacklevel=3,
        )
    return container


def load_config(
    files: list[str | os.PathLike] | tuple = (), overrides: list[str] | tuple = ()
) -> Config:
    """Defaults, then each YAML file in order, then ``key=value`` overrides; returns a typed Config."""
    cfg = OmegaConf.structured(Config)
    for path in files:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        loaded = OmegaConf.load(path)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
        loaded = OmegaConf.create(_migrate(OmegaConf.to_container(loaded), str(path)))
        cfg = _merge(cfg, loaded, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command-line override '{item}' is not of the form key=value")
    if overrides:
        cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)), "command line")
    try:
        return OmegaConf.to_object(cfg)  # runs each section's __post_init__ checks
    except OmegaConfBaseException as e:
        raise ConfigError(str(e)) from None


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | os.PathLike, header: str = "") -> Path:
    """Write the resolved config as YAML atomically; :func:`load_config` reads it back.
    ``header`` (one or more lines) goes first as YAML comments."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    with atomic_open(path, "w") as f:
        f.write(comments + to_yaml(cfg))
    return Path(path)
