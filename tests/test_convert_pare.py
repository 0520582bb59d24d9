"""The converter for the official PARE checkpoints (pare/convert.py, train/convert_pare.py).

Checkpoints here are built in PARE's own layout (tests/pare_layout.py, written from
mkocabas/PARE's code: the PyTorch Lightning 1.1.8 ``.ckpt`` with yacs hyper-parameters, and the
yacs YAML dump), with random weights. The converted model is compared with a reference forward
pass written from PARE's definitions that works from the checkpoint's tensors directly (float64;
only the HRNet/ResNet stem and stages run through timm, whose module names are PARE's). The
reference was checked separately against PARE's own PareHead / PoseHighResolutionNet / ResNet
code loaded with the same tensors (agreement to 5e-6, the float32 body's rounding).

Tolerances: ``rotmat`` (entries in [-1, 1]) to 1e-5 absolute, multiplied per joint by how much
PARE's Gram-Schmidt amplifies float32 rounding in that joint's 6D prediction (1 for a
well-conditioned pair; random weights make some pairs nearly parallel); ``betas``, ``camera``
and ``part_logits`` to 1e-5 times max(1, the largest reference magnitude), i.e. relative to the
output's scale.
"""

from __future__ import annotations

import builtins
import copy
import os
import pickle
import re
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from tests import pare_layout as L

ROOT = Path(__file__).parents[1]
STANDIN = "body.model_path=standin"
OUTPUTS = ("rotmat", "betas", "camera", "part_logits")

HRNET_RELEASED = {  # PARE's released models: HRNet-W32 "conv", 2 x 128, the default input types
    "BACKBONE": "hrnet_w32-conv",
    "NUM_DECONV_LAYERS": 2,
    "NUM_DECONV_FILTERS": 128,
}
CASES = {
    "hrnet_released": {"PARE": dict(HRNET_RELEASED)},
    # Iterative, residual; USE_MEAN_* are set but PARE does not read them when iterating.
    "hrnet_iterative_residual": {
        "PARE": {
            **HRNET_RELEASED,
            "ITERATIVE_REGRESSION": True,
            "ITER_RESIDUAL": True,
            "NUM_ITERATIONS": 3,
            "POSE_INPUT_TYPE": "feats.self_pose.shape.cam",
            "SHAPE_INPUT_TYPE": "feats.all_pose.shape.cam",
            "USE_MEAN_POSE": True,
            "USE_MEAN_CAMSHAPE": True,
        }
    },
    # ResNet-50, PARE's default head (3 x 256 deconvolutions), the keypoint-attention options,
    # the mean parameters added; hyper-parameters saved as an AttributeDict.
    "resnet_attention_options": {
        "PARE": {
            "BACKBONE": "resnet50",
            "USE_MEAN_POSE": True,
            "USE_MEAN_CAMSHAPE": True,
            "USE_POSTCONV_KEYPOINT_ATTENTION": True,
            "USE_SCALE_KEYPOINT_ATTENTION": True,
            "KEYPOINT_ATTENTION_ACT": "sigmoid",
        },
        "attribute_dict": True,
    },
    # ResNet-18, 3 x 128, softmax attention scaled and post-convolved, the mean pose added but
    # not the mean shape/camera. The base of the refusal tests (small and quick to write).
    "resnet18_postconv": {
        "PARE": {
            "BACKBONE": "resnet18",
            "NUM_DECONV_FILTERS": 128,
            "USE_MEAN_POSE": True,
            "USE_POSTCONV_KEYPOINT_ATTENTION": True,
            "USE_SCALE_KEYPOINT_ATTENTION": True,
        }
    },
    # Iterative without the residual (PARE adds only the mean shape), all_pose in both inputs,
    # 3 x 128 deconvolutions, 32 SMPL features, sigmoid attention without scaling.
    "resnet_iterative_plain": {
        "PARE": {
            "BACKBONE": "resnet50",
            "NUM_DECONV_FILTERS": 128,
            "NUM_FEATURES_SMPL": 32,
            "ITERATIVE_REGRESSION": True,
            "ITER_RESIDUAL": False,
            "NUM_ITERATIONS": 2,
            "POSE_INPUT_TYPE": "feats.all_pose.shape.cam",
            "SHAPE_INPUT_TYPE": "feats.all_pose.shape.cam",
            "KEYPOINT_ATTENTION_ACT": "sigmoid",
        }
    },
}


BASE = "resnet18_postconv"  # the checkpoint the refusal and writing tests start from
BODY_SEEDS = {"hrnet_w32": 1, "resnet50": 2, "resnet18": 3}  # the same data whichever tests run


@dataclass
class PareCase:
    name: str
    tree: dict  # the full hyper-parameter tree (the YAML)
    state: OrderedDict  # the checkpoint's state_dict
    ckpt: Path
    yaml: Path
    reference: dict  # PARE's outputs on the module's images (float64)

    @property
    def pare(self) -> dict:
        return self.tree["PARE"]


def _body_name(pare: dict) -> str:
    return "hrnet_w32" if pare["BACKBONE"].startswith("hrnet") else pare["BACKBONE"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread for this module: HRNet is thousands of small ops, as fast on one
    thread of a 2-core machine, and OpenMP's spin-waits make it 10-30x slower on two whenever
    another process competes for the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2024))


@pytest.fixture(scope="module")
def pare_case(tmp_path_factory, images):
    """name -> PareCase, built once per module (bodies and their features shared by backbone);
    the checkpoints are deleted at the end."""
    folder = tmp_path_factory.mktemp("pare_ckpt")
    cases, bodies, features = {}, {}, {}

    def get(name: str) -> PareCase:
        if name not in cases:
            spec = CASES[name]
            tree = L.pare_hparams({"PARE": spec["PARE"]})
            body = _body_name(tree["PARE"])
            if body not in bodies:
                bodies[body] = L.body_state(body, seed=BODY_SEEDS[body])
                features[body] = L.body_features(bodies[body], body, images)
            network = L.network_state(
                tree["PARE"], bodies[body], seed=100 + list(CASES).index(name)
            )
            state = L.pare_state_dict(network)
            ckpt, yaml_file = L.write_case(
                folder, name, state, tree, attribute_dict=spec.get("attribute_dict", False)
            )
            reference = L.reference_forward(state, tree["PARE"], features[body])
            cases[name] = PareCase(name, tree, state, ckpt, yaml_file, reference)
        return cases[name]

    yield get
    for case in cases.values():  # a few hundred MB each: not left for pytest's retention
        case.ckpt.unlink(missing_ok=True)


def _assert_matches_reference(out: dict, reference: dict, where: str = "") -> None:
    """``rotmat``: 1e-5 absolute, times the Gram-Schmidt's amplification of the float32
    rounding in the 6D input where that is above 1 (a 6D pair nearly parallel, or one column
    short); the other outputs: 1e-5 times max(1, their largest reference magnitude)."""
    for name in OUTPUTS:
        got, ref = out[name].detach().double(), reference[name]
        assert got.shape == ref.shape, (
            f"{where}{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
        )
        err = (got - ref).abs()
        if name == "rotmat":
            bound = 1e-5 * L.rot6d_sensitivity(reference["pose_6d"])[..., None, None]
            worst = (err / bound).max().item()
            assert worst <= 1.0, (
                f"{where}rotmat: max |converted - PARE| = {err.max().item():.3g}, "
                f"{worst:.3g} x its bound (1e-5 x sensitivity)"
            )
        else:
            bound = 1e-5 * max(1.0, ref.abs().max().item())
            assert err.max().item() <= bound, (
                f"{where}{name}: max |converted - PARE| = {err.max().item():.3g} > {bound:.3g}"
            )


def _convert(ckpt, cfg, overrides=(STANDIN,)):
    """convert_pare -> (cfg, state, meta). The API is documented as that tuple; a result object
    with those three attributes is read the same way."""
    from pare.convert import convert_pare

    result = convert_pare(ckpt, cfg, overrides=list(overrides))
    if isinstance(result, tuple):
        return result
    return result.cfg, result.state, result.meta


def _forward(model, images) -> dict:
    with torch.no_grad():
        return model(images)


def _build(cfg, state):
    from pare.models import build_model

    model = build_model(replace(cfg.model, backbone_weights="random"), cfg.body)
    model.load_state_dict(state, strict=True)  # no key missing, none left over
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Conversion matches PARE


@pytest.mark.parametrize("name", list(CASES))
def test_converted_model_reproduces_pare(pare_case, images, name):
    from pare.config import Config

    case = pare_case(name)
    pare = case.pare
    cfg, state, meta = _convert(case.ckpt, case.yaml)
    assert isinstance(cfg, Config) and isinstance(meta, dict)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    # The config carries PARE's options under this project's names.
    m = cfg.model
    assert cfg.body.model_path == "standin"
    assert m.backbone == _body_name(pare)
    assert (m.branch_layers, m.branch_channels, m.shape_cam_channels) == (
        pare["NUM_DECONV_LAYERS"],
        pare["NUM_DECONV_FILTERS"],
        pare["NUM_FEATURES_SMPL"],
    )
    assert m.iterative_regression == pare["ITERATIVE_REGRESSION"]
    if pare["ITERATIVE_REGRESSION"]:
        assert (m.num_iterations, m.iter_residual) == (
            pare["NUM_ITERATIONS"],
            pare["ITER_RESIDUAL"],
        )
        assert (m.pose_input_type, m.shape_input_type) == (
            pare["POSE_INPUT_TYPE"],
            pare["SHAPE_INPUT_TYPE"],
        )
    assert m.keypoint_attention_act == pare["KEYPOINT_ATTENTION_ACT"]
    assert m.scale_keypoint_attention == pare["USE_SCALE_KEYPOINT_ATTENTION"]
    assert m.postconv_keypoint_attention == pare["USE_POSTCONV_KEYPOINT_ATTENTION"]
    if m.backbone.startswith("hrnet"):
        assert m.fusion_align_corners is True  # hrnet.py: Upsample(align_corners=True)
    assert not m.attention.enabled

    model = _build(cfg, state)

    # The stem and stages: every PARE backbone tensor, unchanged, under backbone.body.
    own = model.state_dict()
    body = {
        k[len("model.backbone.") :]: v
        for k, v in case.state.items()
        if k.startswith("model.backbone.")
        and not k.startswith(("model.backbone.upsample_stage_", "model.backbone.final_layer."))
    }
    assert body
    for key, value in body.items():
        mine = own.get(f"backbone.body.{key}")
        assert mine is not None, f"backbone.body.{key} missing in the converted model"
        assert torch.equal(mine, value), f"backbone.body.{key} differs from model.backbone.{key}"

    out = _forward(model, images)
    assert out["part_logits"].shape == (2, 25, 56, 56)
    _assert_matches_reference(out, case.reference, f"{name}: ")


# ---------------------------------------------------------------------------------------------
# The command line and load_trained_model


@pytest.mark.slow
def test_cli_writes_a_loadable_model(pare_case, images, tmp_path, standin_folder):
    from pare import load_trained_model
    from pare.config import load_config

    case = pare_case("hrnet_released")
    out_dir = tmp_path / "converted"
    run = subprocess.run(
        [
            sys.executable,
            "train/convert_pare.py",
            "--ckpt",
            str(case.ckpt),
            "--cfg",
            str(case.yaml),
            "--out",
            str(out_dir),
            STANDIN,
        ],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # the session's PARE_CACHE
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert (out_dir / "model.safetensors").is_file()
    cfg = load_config([out_dir / "config.yaml"])
    assert cfg.body.model_path == "standin"
    assert cfg.model.backbone == "hrnet_w32"
    assert (cfg.model.branch_layers, cfg.model.branch_channels) == (2, 128)
    assert cfg.model.fusion_align_corners is True

    model, cfg_dir, _ = load_trained_model(out_dir)
    assert not model.training
    from_dir = _forward(model, images)
    _assert_matches_reference(from_dir, case.reference, "load_trained_model(DIR): ")

    # The .ckpt converted in memory: the same network (config and every tensor) as the folder's,
    # so the same outputs.
    in_memory, cfg_mem, _ = load_trained_model(
        case.ckpt, config_files=[case.yaml], overrides=[STANDIN]
    )
    assert not in_memory.training
    assert cfg_mem.model == cfg_dir.model and cfg_mem.body == cfg_dir.body
    mine, theirs = in_memory.state_dict(), model.state_dict()
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        assert torch.equal(value, theirs[key]), key


def test_write_converted_returns_the_folder(pare_case, tmp_path):
    from safetensors.torch import load_file

    from pare.config import load_config
    from pare.convert import write_converted

    case = pare_case(BASE)
    out = write_converted(case.ckpt, case.yaml, tmp_path / "out", overrides=[STANDIN])
    assert Path(out) == tmp_path / "out"
    cfg = load_config([Path(out) / "config.yaml"])
    assert (cfg.model.backbone, cfg.model.branch_layers, cfg.model.branch_channels) == (
        "resnet18",
        3,
        128,
    )
    assert cfg.model.postconv_keypoint_attention and cfg.model.scale_keypoint_attention
    written = load_file(str(Path(out) / "model.safetensors"))
    _, state, _ = _convert(case.ckpt, case.yaml)
    assert written.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(written[key], value), key


# ---------------------------------------------------------------------------------------------
# Refusals


@pytest.fixture
def variant(pare_case, tmp_path):
    """(case name, YAML changes {section: {key: value}}, state edit) -> (ckpt, yaml) of a
    checkpoint whose own hyper-parameters agree with its YAML, as one trained that way would.
    The checkpoint file is deleted after the test."""
    made = []

    def make(name: str, changes: dict | None = None, edit=None) -> tuple[Path, Path]:
        case = pare_case(name)
        tree = copy.deepcopy(case.tree)
        for section, values in (changes or {}).items():
            tree[section].update(values)
        state = case.state
        if edit is not None:
            state = OrderedDict(case.state)
            state._metadata = case.state._metadata
            edit(state)
        ckpt, yaml_file = L.write_case(tmp_path, f"variant{len(made)}", state, tree)
        made.append(ckpt)
        return ckpt, yaml_file

    yield make
    for path in made:
        path.unlink(missing_ok=True)


def _refused(ckpt, cfg, pattern: str) -> str:
    from pare.convert import PareConversionError

    with pytest.raises(PareConversionError) as info:
        _convert(ckpt, cfg)
    message = str(info.value)
    assert re.search(pattern, message), f"{pattern!r} not in: {message}"
    return message


def test_conversion_error_is_a_value_error():
    from pare.convert import PareConversionError

    assert issubclass(PareConversionError, ValueError)


UNSUPPORTED = [
    # (section, option, value, what the message must name)
    ("PARE", "USE_COATTENTION", True, "USE_COATTENTION"),
    ("PARE", "USE_BRANCH_NONLOCAL", "dot_product", "USE_BRANCH_NONLOCAL"),
    ("PARE", "USE_FINAL_NONLOCAL", "dot_product", "USE_FINAL_NONLOCAL"),
    ("PARE", "USE_HMR_REGRESSION", True, "USE_HMR_REGRESSION"),
    ("PARE", "POSE_MLP_NUM_LAYERS", 2, "POSE_MLP_NUM_LAYERS"),
    ("PARE", "SHAPE_MLP_NUM_LAYERS", 2, "SHAPE_MLP_NUM_LAYERS"),
    ("PARE", "USE_POS_ENC", True, "USE_POS_ENC"),
    ("PARE", "USE_UPSAMPLING", True, "USE_UPSAMPLING"),
    ("PARE", "USE_SOFT_ATTENTION", True, "USE_SOFT_ATTENTION"),
    ("PARE", "NUM_BRANCH_ITERATION", 1, "NUM_BRANCH_ITERATION"),
    (
        "PARE",
        "USE_KEYPOINT_FEATURES_FOR_SMPL_REGRESSION",
        True,
        "USE_KEYPOINT_FEATURES_FOR_SMPL_REGRESSION",
    ),
    ("PARE", "NUM_JOINTS", 25, "NUM_JOINTS"),
    ("PARE", "BACKBONE", "hrnet_w32-interp", "hrnet_w32-interp|BACKBONE"),
    ("PARE", "BACKBONE", "hrnet_w48-conv", "hrnet_w48-conv|BACKBONE"),
    ("PARE", "NOT_AN_OPTION", 1, "NOT_AN_OPTION"),
    ("DATASET", "USE_HEATMAPS", "hm", "USE_HEATMAPS"),
]


@pytest.mark.parametrize(
    ("section", "option", "value", "named"), UNSUPPORTED, ids=[u[1] for u in UNSUPPORTED]
)
def test_unsupported_option_is_refused(variant, section, option, value, named):
    _refused(*variant(BASE, {section: {option: value}}), named)


def test_neighbor_inputs_are_refused_with_iterative_regression(pare_case, variant):
    assert "neighbor" in pare_case(BASE).pare["POSE_INPUT_TYPE"]
    changes = {  # PARE's default POSE_INPUT_TYPE has neighbor_pose_feats and neighbor_pose
        "PARE": {"ITERATIVE_REGRESSION": True, "USE_POSTCONV_KEYPOINT_ATTENTION": False}
    }
    _refused(*variant(BASE, changes), "neighbor")


CONTRADICTIONS = [  # YAML values the tensors of BASE contradict
    ({"NUM_DECONV_FILTERS": 256}, r"NUM_DECONV_FILTERS|deconv_layers|final_layer|pose_mlp"),
    ({"NUM_DECONV_LAYERS": 2}, r"NUM_DECONV_LAYERS|deconv_layers\.6\."),
    (
        {"USE_POSTCONV_KEYPOINT_ATTENTION": False},
        r"USE_POSTCONV_KEYPOINT_ATTENTION|keypoint_attention\.conv1x1",
    ),
    ({"NUM_FEATURES_SMPL": 32}, r"NUM_FEATURES_SMPL|smpl_final_layer|shape_mlp|cam_mlp|conv1x1"),
    ({"DECONV_CONV_KERNEL_SIZE": 3}, r"DECONV_CONV_KERNEL_SIZE|deconv_layers"),
    ({"BACKBONE": "hrnet_w32-conv"}, r"BACKBONE|backbone\.|deconv_layers"),
    ({"BACKBONE": "resnet50"}, r"BACKBONE|backbone\.|deconv_layers"),
]


@pytest.mark.parametrize(
    ("changes", "named"), CONTRADICTIONS, ids=[next(iter(c)) for c, _ in CONTRADICTIONS]
)
def test_yaml_contradicting_the_tensors_is_refused(variant, changes, named):
    # The checkpoint's own hyper-parameters say the same as the YAML: only the tensors disagree.
    _refused(*variant(BASE, {"PARE": changes}), named)


def test_hrnet_yaml_contradicting_the_tensors_is_refused(variant):
    # hrnet_released has tensors of 128 filters
    changes = {"PARE": {"NUM_DECONV_FILTERS": 256}}
    _refused(*variant("hrnet_released", changes), r"NUM_DECONV_FILTERS|deconv_layers|final_layer")
    # PARE's residual-block branches in the HRNet head change the network too.
    _refused(
        *variant("hrnet_released", {"PARE": {"USE_RESNET_CONV_HRNET": True}}),
        "USE_RESNET_CONV_HRNET",
    )


def _drop(key):
    def edit(state):
        del state[key]

    return edit


def _put(key, value):
    def edit(state):
        state[key] = value

    return edit


TENSOR_FAULTS = [
    ("missing-head", _drop("model.head.smpl_final_layer.bias"), r"smpl_final_layer\.bias"),
    (
        "missing-postconv",
        _drop("model.head.keypoint_attention.conv1x1_shape_cam.weight"),
        r"keypoint_attention\.conv1x1_shape_cam\.weight",
    ),
    ("missing-init-cam", _drop("model.head.init_cam"), r"init_cam"),
    (
        "missing-backbone",
        _drop("model.backbone.layer3.1.bn2.running_var"),
        r"layer3\.1\.bn2\.running_var",
    ),
    (
        "left-over-head",
        _put("model.head.extra_branch.0.weight", torch.zeros(8, 8, 3, 3)),
        r"extra_branch\.0\.weight",
    ),
    (
        "left-over-hrnet-key-in-resnet",
        _put("model.backbone.upsample_stage_2.1.weight", torch.zeros(64, 64, 3, 3)),
        r"upsample_stage_2\.1\.weight",
    ),
    (
        "left-over-top-level",
        _put("model.extra_module.weight", torch.zeros(3)),
        r"model\.extra_module\.weight",
    ),
    (
        "shape-smpl-final-layer",
        _put("model.head.smpl_final_layer.weight", torch.zeros(64, 127, 1, 1)),
        r"smpl_final_layer\.weight",
    ),
    (
        "shape-backbone-conv1",
        _put("model.backbone.conv1.weight", torch.zeros(64, 3, 3, 3)),
        r"conv1\.weight",
    ),
    ("shape-init-pose", _put("model.head.init_pose", torch.zeros(1, 72)), r"init_pose"),
]


@pytest.mark.parametrize(
    ("edit", "named"), [t[1:] for t in TENSOR_FAULTS], ids=[t[0] for t in TENSOR_FAULTS]
)
def test_checkpoint_not_matching_the_network_is_refused(variant, edit, named):
    _refused(*variant(BASE, edit=edit), named)


class _Exploit:
    """Unpickling this calls ``func(*args)``."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exploit(attack: str, marker: Path) -> tuple[_Exploit, str]:
    """(payload that would create ``marker``, what the refusal must name)."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        # os.system pickles as posix.system (its __module__)
        "os.system": (_Exploit(os.system, (f"touch {marker}",)), r"system"),
        "builtins.exec": (_Exploit(builtins.exec, (code,)), r"exec"),
        "builtins.eval": (_Exploit(builtins.eval, (code,)), r"eval"),
        "subprocess.Popen": (_Exploit(subprocess.Popen, (["touch", str(marker)],)), r"Popen"),
    }[attack]


@pytest.mark.parametrize("where", ["hyper_parameters", "callbacks", "state_dict"])
@pytest.mark.parametrize(
    "attack", ["os.system", "builtins.exec", "builtins.eval", "subprocess.Popen"]
)
def test_pickle_that_would_run_code_is_refused(pare_case, tmp_path, attack, where):
    from pare.convert import PareConversionError, read_lightning_checkpoint

    case = pare_case(BASE)
    marker = tmp_path / "MARKER"
    payload, named = _exploit(attack, marker)
    # A checkpoint in the Lightning layout (a few of the head's tensors), the payload in one part.
    state = OrderedDict((k, v) for k, v in case.state.items() if k.startswith("model.head.init"))

    path = tmp_path / "evil.ckpt"
    with L.lightning_classes() as classes:
        ckpt = L.lightning_checkpoint(classes, state, copy.deepcopy(case.tree))
        if where == "hyper_parameters":
            ckpt["hyper_parameters"]["PARE"]["EVIL"] = payload
        elif where == "callbacks":
            ckpt["callbacks"][classes.ModelCheckpoint]["dirpath"] = payload
        else:
            ckpt["state_dict"]["model.head.evil"] = payload
        torch.save(ckpt, path)
    assert not marker.exists()

    for read in (read_lightning_checkpoint, lambda p: _convert(p, case.yaml)):
        with pytest.raises(PareConversionError, match="refusing to load global") as info:
            read(path)
        assert re.search(named, str(info.value)), str(info.value)
        assert "GLOBAL " not in str(info.value)
        assert not marker.exists(), "the checkpoint ran code"


@pytest.mark.parametrize("fmt", ["legacy-torch", "plain-pickle"])
def test_code_in_other_file_formats_is_refused(pare_case, tmp_path, fmt):
    """torch.load also reads its pre-1.6 format and bare pickles: the same allow-list applies."""
    from pare.convert import PareConversionError, read_lightning_checkpoint

    case = pare_case(BASE)
    marker = tmp_path / "MARKER"
    payload, named = _exploit("os.system", marker)
    path = tmp_path / "evil.ckpt"
    # The payload first: a bare pickle stores tensors through other globals, refused too.
    ckpt = {"evil": payload, "state_dict": {"model.head.init_cam": torch.zeros(1, 3)}}
    if fmt == "legacy-torch":
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(ckpt, protocol=2))
    for read in (read_lightning_checkpoint, lambda p: _convert(p, case.yaml)):
        with pytest.raises(PareConversionError, match="refusing to load global") as info:
            read(path)
        assert re.search(named, str(info.value)), str(info.value)
        assert "GLOBAL " not in str(info.value)
        assert not marker.exists(), "the checkpoint ran code"


def test_reads_the_lightning_checkpoint_without_its_packages(pare_case):
    """yacs and pytorch_lightning are not installed: the checkpoint still reads, its network
    tensors intact (stand-ins for the pickled classes)."""
    from pare.convert import read_lightning_checkpoint

    case = pare_case("resnet_attention_options")  # AttributeDict hyper-parameters
    assert "yacs" not in sys.modules and "pytorch_lightning" not in sys.modules
    loaded = read_lightning_checkpoint(case.ckpt)
    assert "yacs" not in sys.modules and "pytorch_lightning" not in sys.modules
    state = loaded["state_dict"] if isinstance(loaded, dict) else loaded.state_dict
    for key in ("model.head.pose_mlp.weight", "model.backbone.layer4.2.bn3.running_var"):
        assert torch.equal(state[key], case.state[key])


def test_iterative_tensors_with_a_non_iterative_yaml_are_refused(variant):
    changes = {"PARE": {"ITERATIVE_REGRESSION": False}}  # tensors of iterative regression
    _refused(
        *variant("resnet_iterative_plain", changes), r"ITERATIVE_REGRESSION|pose_mlp|shape_mlp"
    )


def test_the_yaml_wins_over_the_checkpoints_own_config_with_a_warning(pare_case, tmp_path):
    """PARE's scripts/eval.py builds the model from the YAML, then loads the weights: where the
    config stored in the checkpoint says otherwise (without changing a shape), the YAML is
    followed and the difference named."""
    case = pare_case(BASE)
    assert case.pare["USE_MEAN_POSE"] is True  # what the checkpoint's own config says
    tree = copy.deepcopy(case.tree)
    tree["PARE"]["USE_MEAN_POSE"] = False
    other = tmp_path / "other.yaml"
    other.write_text(L.pare_yaml(tree))
    with pytest.warns(UserWarning, match=r"PARE\.USE_MEAN_POSE=True, the YAML False"):
        cfg, _, _ = _convert(case.ckpt, other)
    assert cfg.model.use_mean_pose is False


@pytest.mark.parametrize("attention, converts", [(True, True), (False, False)])
def test_part_segm_pool_converts_only_with_keypoint_attention(
    pare_case, tmp_path, attention, converts
):
    """DATASET.USE_HEATMAPS=part_segm_pool adds a soft-argmax output to part_segm's network;
    without keypoint attention PARE samples features at those keypoints instead (not built)."""
    from pare.convert import PareConversionError

    case = pare_case(BASE)
    tree = copy.deepcopy(case.tree)
    tree["DATASET"]["USE_HEATMAPS"] = "part_segm_pool"
    tree["PARE"]["USE_KEYPOINT_ATTENTION"] = attention
    other = tmp_path / "pool.yaml"
    other.write_text(L.pare_yaml(tree))
    if converts:
        _, state, _ = _convert(case.ckpt, other)
        assert set(state) == set(_convert(case.ckpt, case.yaml)[1])
    else:
        with pytest.raises(PareConversionError, match=r"USE_HEATMAPS='part_segm_pool'"):
            _convert(case.ckpt, other)
