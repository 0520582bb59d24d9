"""Checkpoint folders (which are complete, which one a resume picks), initial weights, and
loading a trained model back."""

import pytest
import torch

from pare.checkpoint import (
    COMPLETE,
    checkpoint_dir,
    complete_checkpoints,
    export_weights,
    load_initial_weights,
    load_trained_model,
    load_weights,
    resolve_resume,
)
from pare.config import ConfigError, load_config, save_config
from pare.models import build_model

SMALL = ["model.backbone=hrnet_w18_small", "model.branch_channels=16", "model.branch_layers=1"]


def _model(*overrides, seed=0):
    cfg = load_config([], [*SMALL, *overrides])
    torch.manual_seed(seed)
    return build_model(cfg.model, cfg.body), cfg


def test_only_complete_checkpoints_are_resumed(tmp_path):
    for step in (5, 10, 15, 20):
        checkpoint_dir(tmp_path, step).mkdir(parents=True)
    for step in (5, 10):
        for name in (COMPLETE, "model.safetensors", "trainer_state.json"):
            (checkpoint_dir(tmp_path, step) / name).touch()
    (checkpoint_dir(tmp_path, 15) / COMPLETE).touch()  # its files gone: killed while pruning
    # 20 was killed while saving (no marker)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-0000005", "step-0000010"]
    assert resolve_resume(tmp_path, "auto") == checkpoint_dir(tmp_path, 10)
    assert resolve_resume(tmp_path, "") is None
    assert resolve_resume(tmp_path / "fresh", "auto") is None
    for step in (15, 20):
        with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
            resolve_resume(tmp_path, str(checkpoint_dir(tmp_path, step)))


def test_a_truncated_weights_file_is_named(tmp_path):
    model, _ = _model()
    path = export_weights(model, tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_weights(model, path)


def test_initial_weights_start_the_attention_variant_as_the_vanilla_network(tmp_path):
    vanilla, _ = _model()
    export_weights(vanilla, tmp_path / "init.safetensors")
    # Another draw: the file must decide.
    variant, _ = _model("model.attention.enabled=true", seed=123)
    fresh = load_initial_weights(variant, str(tmp_path / "init.safetensors"))
    own, shared = variant.state_dict(), vanilla.state_dict()
    for name, value in shared.items():
        assert torch.equal(own[name], value), name
    assert fresh == sorted(n for n in own if n not in shared)
    assert fresh and all("attention" in n for n in fresh)
    vanilla.eval(), variant.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(variant(x)["rotmat"], vanilla(x)["rotmat"], atol=0, rtol=0)
    other, _ = _model("model.backbone=resnet18")
    with pytest.raises(ValueError, match="does not fit this model"):
        load_initial_weights(other, str(tmp_path / "init.safetensors"))
    with pytest.raises(FileNotFoundError, match=r"train\.init_weights not found"):
        load_initial_weights(other, str(tmp_path / "nothing.safetensors"))


def test_a_trained_model_loads_back_from_a_run_a_checkpoint_or_a_file(tmp_path):
    import pare

    assert pare.load_trained_model is load_trained_model
    model, cfg = _model()
    # Non-default BatchNorm statistics: the buffers must come back too.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 224, 224))
    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    export_weights(model, run / "model.safetensors", {"step": 7})
    export_weights(model, run / "best" / "model.safetensors", {"step": 5, "pa_mpjpe": 80.0})
    checkpoint = checkpoint_dir(run, 7)
    export_weights(model, checkpoint / "model.safetensors")  # as save_state writes it
    loose = export_weights(model, tmp_path / "loose.safetensors", {"step": 7})

    model.eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    cases = [
        (run, "best", (), {"step": 5, "pa_mpjpe": 80.0}),
        (run, "final", (), {"step": 7}),
        (checkpoint, "best", (), {}),
        (run / "model.safetensors", "best", (), {"step": 7}),
        (loose, "best", (run / "config.yaml",), {"step": 7}),  # no run above: a config given
    ]
    for path, which, configs, meta in cases:
        loaded, loaded_cfg, loaded_meta = load_trained_model(
            path, which, configs, ["data.batch_size=3"]
        )
        assert loaded_meta == meta, path
        assert not loaded.training and next(loaded.parameters()).device.type == "cpu"
        assert loaded_cfg.model == cfg.model and loaded_cfg.data.batch_size == 3
        with torch.no_grad():
            got = loaded(x)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, atol=0, rtol=0, msg=f"{path}: {key}")

    with pytest.raises(ConfigError, match=r"no config\.yaml found above"):
        load_trained_model(loose)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_trained_model(tmp_path / "missing")
    unfinished = tmp_path / "unfinished"
    save_config(cfg, unfinished / "config.yaml")  # a run that exported nothing yet
    with pytest.raises(FileNotFoundError, match="model weights not found"):
        load_trained_model(unfinished)


def test_an_evaluation_is_best_only_when_its_pa_mpjpe_is_lower(tmp_path):
    from pare.checkpoint import TrainState

    state = TrainState(step=10)
    assert state.record_eval({"pa_mpjpe": 90.0}) and state.best_pa_mpjpe == 90.0
    state.step = 20
    assert not state.record_eval({"pa_mpjpe": 90.0})  # equal is not better
    state.step = 30
    assert not state.record_eval({"pa_mpjpe": float("nan")})  # a diverged model never is
    state.step = 40
    assert state.record_eval({"pa_mpjpe": 70.0})
    assert (state.best_pa_mpjpe, state.best_step) == (70.0, 40)
    assert sorted(state.history) == ["10", "20", "30", "40"]


def test_training_starts_from_train_init_weights(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "train_script", Path(__file__).parents[1] / "train" / "train.py"
    )
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    vanilla, _ = _model()
    export_weights(vanilla, tmp_path / "init.safetensors")
    torch.manual_seed(123)  # another draw: only the file can make the weights equal
    cfg = load_config(
        [],
        [*SMALL, "model.attention.enabled=true", f"train.init_weights={tmp_path}/init.safetensors"],
    )
    model = train.build_training_model(cfg)
    own = model.state_dict()
    for name, value in vanilla.state_dict().items():
        assert torch.equal(own[name], value), name
    torch.manual_seed(123)
    cfg = load_config([], [*SMALL, "model.attention.enabled=true"])
    assert not torch.equal(
        train.build_training_model(cfg).state_dict()["head.part_logits.weight"],
        vanilla.state_dict()["head.part_logits.weight"],
    )


def test_a_trained_model_loads_without_its_pretrained_backbone_file(tmp_path):
    # Trained from a PARE config, which names a backbone file this machine may not have: the
    # exported weights replace every tensor, so loading must not need it.
    import dataclasses

    model, cfg = _model()
    cfg.model = dataclasses.replace(cfg.model, backbone_weights=f"{tmp_path}/absent.pth")
    run = tmp_path / "run"
    save_config(cfg, run / "config.yaml")
    export_weights(model, run / "model.safetensors", {"step": 3})
    loaded, loaded_cfg, meta = load_trained_model(run, "final")
    assert loaded_cfg.model.backbone_weights == f"{tmp_path}/absent.pth" and meta["step"] == 3
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
