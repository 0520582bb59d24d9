"""The typed config: defaults, YAML and CLI merging, validation, save and reload."""

from pathlib import Path

import pytest

from pare.config import Config, ConfigError, load_config, save_config

# Training configs (configs/sweep.yaml is a W&B sweep, tested below).
CONFIGS = sorted(
    p for p in (Path(__file__).parents[1] / "configs").glob("*.yaml") if p.name != "sweep.yaml"
)


def test_defaults_are_pare_defaults():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.backbone == "hrnet_w32" and cfg.model.branch_channels == 128
    assert (
        cfg.loss.keypoints_2d,
        cfg.loss.joints_3d,
        cfg.loss.smpl_shape,
        cfg.loss.total_scale,
    ) == (5.0, 5.0, 0.001, 60.0)
    assert cfg.body.model_path == "standin"


def test_yaml_then_cli_precedence(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("optim:\n  lr: 1.0e-4\ndata:\n  batch_size: 16\n")
    b = tmp_path / "b.yaml"
    b.write_text("optim:\n  lr: 2.0e-4\n")
    cfg = load_config([a, b], ["data.batch_size=8", "model.attention.enabled=true"])
    assert cfg.optim.lr == 2e-4  # later file wins
    assert cfg.data.batch_size == 8  # command line wins
    assert cfg.model.attention.enabled is True
    assert cfg.optim.weight_decay == 0.0  # untouched defaults survive


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["optim.lrr=1"], r"unknown config key 'optim\.lrr'; did you mean optim\.lr\?"),
        (["modle.backbone=resnet50"], r"unknown config key 'modle'; did you mean model\?"),
        (
            ["data.augment.flip=0.1"],
            r"'data\.augment\.flip'; did you mean data\.augment\.flip_prob",
        ),
        (["zzz=1"], r"unknown config key 'zzz'; valid keys: body, data, model"),
        (["optim.lr=fast"], r"'optim\.lr'.*could not be converted to Float"),
        (["data.batch_size=1.5"], r"'data\.batch_size'.*Integer"),
        (
            ["model.backbone=vit"],
            r"model\.backbone='vit' is not allowed; choose one of \['hrnet_w32', 'resnet50', 'hrnet_w18_small', 'resnet18'\]",
        ),
        (["train.mixed_precision=fp32"], r"train\.mixed_precision"),
        (["optim=1"], r"'optim' is a section"),
        (
            ["data.train=[{pth: x}]"],
            r"unknown config key 'data\.train\[0\]\.pth'; did you mean data\.train\[0\]\.path",
        ),
        (
            ["data.train=[{path: x, weight: 0}]"],
            r"data\.train\[0\]\.weight=0.0 must be positive",
        ),
        (["optim.lr"], r"not of the form key=value"),
        (["data.crop_size=100"], r"data\.crop_size=100 must be a multiple of 32"),
        # Derived from the crop size, never set.
        (["data.heatmap_size=32"], r"unknown config key 'data\.heatmap_size'"),
        (
            ["model.attention.enabled=true", "data.crop_size=128"],
            r"model\.attention\.resolution=28 must divide the heatmap size data\.crop_size // 4 "
            r"= 32 \(data\.crop_size=128\)",
        ),
        (
            ["model.attention.enabled=true", "model.attention.resolution=112"],
            r"model\.attention\.resolution=112 must divide .* = 56",
        ),
        # PARE's head options: inputs it has but this project does not implement, and the
        # combinations its own code cannot run.
        (
            ["model.iterative_regression=true", "model.pose_input_type=feats.neighbor_pose"],
            r"model\.pose_input_type=.*input 'neighbor_pose' is not supported",
        ),
        (
            ["model.iterative_regression=true", "model.shape_input_type=feats.self_pose"],
            r"model\.shape_input_type=.*input 'self_pose' is not supported",
        ),
        (
            ["model.iterative_regression=true", "model.pose_input_type=shape.cam"],
            r"must contain 'feats'",
        ),
        (
            [
                "model.iterative_regression=true",
                "model.pose_input_type=feats.self_pose",
                "model.postconv_keypoint_attention=true",
            ],
            r"postconv_keypoint_attention cannot be combined with model\.iterative_regression",
        ),
        (
            ["model.postconv_keypoint_attention=true", "model.shape_cam_channels=128"],
            r"needs model\.branch_channels != model\.shape_cam_channels",
        ),
        (["model.keypoint_attention_act=relu"], r"choose one of \['softmax', 'sigmoid'\]"),
        (["model.num_iterations=0"], r"model\.num_iterations=0 must be at least 1"),
        # Values that used to crash later with a traceback (or export untrained weights).
        (["data.batch_size=0"], r"data\.batch_size=0 must be at least 1"),
        (["data.steps_per_epoch=0"], r"data\.steps_per_epoch=0 must be at least 1"),
        (["data.num_workers=-1"], r"data\.num_workers=-1 must be >= 0"),
        (["data.max_bad_samples=-1"], r"data\.max_bad_samples=-1 must be >= 0"),
        (["train.max_steps=0"], r"train\.max_steps=0 must be at least 1"),
    ],
)
def test_bad_overrides_name_the_key(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config([], overrides)


def test_pare_input_types_are_not_read_while_iterative_regression_is_off():
    # PARE's full YAML dumps carry these defaults; they do nothing without iterative regression.
    cfg = load_config(
        [],
        [
            "model.pose_input_type=feats.neighbor_pose_feats.all_pose.self_pose.neighbor_pose.shape.cam",
            "model.shape_input_type=feats.all_pose.shape.cam",
        ],
    )
    assert not cfg.model.iterative_regression


def test_heatmap_size_is_a_quarter_of_the_crop_size():
    assert load_config().data.heatmap_size == 56
    assert load_config([], ["data.crop_size=128"]).data.heatmap_size == 32


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.attention.enabled=true", "model.attention.resolution=14"],
        ["model.attention.enabled=true", "model.attention.resolution=56"],
        ["model.attention.enabled=true", "data.crop_size=128", "model.attention.resolution=0"],
        ["model.attention.enabled=true", "data.crop_size=128", "model.attention.resolution=16"],
        # A disabled block's grid is not used, so it is not checked.
        ["data.crop_size=128"],
    ],
)
def test_attention_resolutions_that_divide_the_heatmap_are_accepted(overrides):
    load_config([], overrides)


def test_bad_yaml_names_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_step: 10\n")
    with pytest.raises(
        ConfigError,
        match=r"bad\.yaml: unknown config key 'train\.max_step'; did you mean train\.max_steps",
    ):
        load_config([bad])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config([tmp_path / "missing.yaml"])


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(
        [],
        [
            "optim.lr=3e-4",
            "logging.tags=[a,b]",
            "data.train=[{path: x, weight: 1.0}]",
        ],
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config([path]) == cfg
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid(path):
    load_config([path])


def test_sweep_parameters_are_config_keys_and_the_command_passes_them_as_overrides():
    import yaml

    root = Path(__file__).parents[1]
    sweep = yaml.safe_load((root / "configs" / "sweep.yaml").read_text())
    assert (root / sweep["program"]).is_file()
    command = sweep["command"]
    assert "${args_no_hyphens}" in command  # key=value, the form train.py's overrides take
    base = command[command.index("--config") + 1]
    for key, spec in sweep["parameters"].items():
        values = spec.get("values") or [spec["min"], spec["max"]]
        for value in values:
            value = str(value).lower() if isinstance(value, bool) else value
            cfg = load_config([root / base], [f"{key}={value}"])
            section, *rest = key.split(".")
            node = getattr(cfg, section)
            for part in rest:
                node = getattr(node, part)
            assert str(node).lower() == str(value).lower() or float(node) == float(value)
    assert sweep["metric"]["name"] == "val/pa_mpjpe_mm"  # what train.py logs


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.log_every=0", r"train\.log_every=0 must be at least 1"),
        ("train.eval_every=0", r"train\.eval_every=0 must be at least 1"),
        ("train.checkpoint_every=-1", r"train\.checkpoint_every=-1 must be at least 1"),
        ("train.gradient_accumulation_steps=0", r"gradient_accumulation_steps=0 must be"),
        ("train.image_every=-5", r"train\.image_every=-5 must be >= 0"),
    ],
)
def test_step_cadences_must_be_positive(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config([], [override])
    assert load_config([], ["train.image_every=0"]).train.image_every == 0


def test_a_run_folder_of_an_earlier_version_still_loads(tmp_path):
    # The settings every config.yaml written before they were removed or moved still holds.
    old = tmp_path / "config.yaml"
    old.write_text(
        "body: {model_path: standin, gender: neutral, num_betas: 10}\n"
        "data:\n"
        "  train: [{name: 3dpw, path: a, weight: 0.5}]\n"
        "  val: [{name: 3dpw, path: b, weight: 1.0}]\n"
        "  crop_size: 128\n"
        "  heatmap_size: 32\n"
        "model: {init_weights: init.safetensors}\n"
        "train: {inject_nonfinite_at: []}\n"
    )
    with pytest.warns(UserWarning, match=r"body\.gender, body\.num_betas, data\.heatmap_size"):
        cfg = load_config([old])
    assert cfg.train.init_weights == "init.safetensors"
    assert [(s.path, s.weight) for s in cfg.data.train] == [("a", 0.5)]
    assert cfg.data.heatmap_size == 32
    # A value that would mean other behaviour than today's is refused by name.
    old.write_text("data: {crop_size: 128, heatmap_size: 56}\n")
    with pytest.raises(ConfigError, match=r"'data\.heatmap_size' was removed .* delete the key"):
        load_config([old])
    old.write_text("body: {num_betas: 16}\n")
    with pytest.raises(ConfigError, match=r"'body\.num_betas' was removed"):
        load_config([old])
    # On the command line a removed key is simply unknown.
    with pytest.raises(ConfigError, match=r"unknown config key 'body\.num_betas'"):
        load_config([], ["body.num_betas=10"])


def test_pare_stages_chain_and_differ_as_mmhuman3d_names_them():
    """Stage 2 starts from stage 1's exported weights; stage 1 trains the part segmentation with
    occlusion at lr 2e-4, stage 2 neither, at 5e-5 and half the 2D weight (mmhuman3d's
    hrnet_w32_conv_pare_coco.py and hrnet_w32_conv_pare_mix.py)."""
    import math

    root = Path(__file__).parents[1] / "configs"
    base = [root / "hrnet_w32.yaml"]
    one = load_config([*base, root / "pare_occlusion.yaml", root / "pare_stage1.yaml"])
    two = load_config([*base, root / "pare_stage2.yaml"])
    assert two.train.init_weights == f"{one.train.output_dir}/model.safetensors"
    assert one.loss.part_segmentation * one.loss.total_scale == 60  # mmhuman3d loss_segm_mask
    assert two.loss.part_segmentation == 0
    assert one.data.augment.occluders and not two.data.augment.occluders
    assert (one.optim.lr, two.optim.lr) == (2e-4, 5e-5)
    assert one.loss.keypoints_2d * one.loss.total_scale == 300  # loss_keypoints2d
    assert two.loss.keypoints_2d * two.loss.total_scale == 150
    assert one.loss.joints_3d * one.loss.total_scale == two.loss.joints_3d * 60 == 300
    assert (one.data.batch_size, two.data.batch_size) == (64, 32)
    # The step counts are the arithmetic the files state.
    assert one.train.max_steps == math.ceil(200 * 14361 / 64)
    assert two.train.max_steps == math.ceil(50 * 20000 / 32)
