"""Checkpoint folders (which are complete, which one a resume picks, saves that fail, what
killed saves leave, damaged RNG states), initial weights, and loading a trained model back."""

import errno
import os
import pickle
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pare.checkpoint import (
    CHECKPOINTS,
    COMPLETE,
    DamagedCheckpoint,
    SaveError,
    check_rng_states,
    checkpoint_dir,
    complete_checkpoints,
    export_weights,
    load_initial_weights,
    load_trained_model,
    load_weights,
    main,
    remove_unfinished,
    requeue_decision,
    resolve_resume,
    save_checkpoint,
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


def _complete(run_dir, step):
    folder = checkpoint_dir(run_dir, step)
    folder.mkdir(parents=True)
    for name in (COMPLETE, "model.safetensors", "trainer_state.json"):
        (folder / name).touch()


def test_requeue_follows_the_run_folder_not_the_exit_status_alone(tmp_path):
    """The job scripts' rule (slurm/common.sh): a stop is requeued however the launcher ended,
    a crash never, a bare kill only after progress, DONE or a cancelled job never."""
    _complete(tmp_path, 2)
    (checkpoint_dir(tmp_path, 4).with_name("step-0000004.tmp")).mkdir()  # killed mid-save
    then = f"the requeued job resumes from {checkpoint_dir(tmp_path, 2)}"

    def decide(status, **kwargs):
        return requeue_decision(tmp_path, status, nodes=2, max_requeues=3, **kwargs)

    # scancel --full: the batch shell trapped TERM, srun SIGKILLed its tasks (exit 137).
    assert decide(137, signalled=True) == (True, f"a stop was requested (exit 137); {then}")
    assert decide(1) == (False, "the trainer failed (exit 1): not requeueing")
    assert not decide(139)[0]  # SIGSEGV is a crash
    assert decide(0) == (True, f"the trainer stopped before train.max_steps; {then}")
    # Killed with no stop asked: requeued only when this attempt saved a newer checkpoint.
    assert decide(143)[0] and decide(143, started_from=1)[0]
    assert not decide(143, started_from=2)[0]
    assert "killed by SIGKILL" in decide(137, started_from=2)[1]
    assert decide(0, restarts=3) == (
        False,
        "the trainer stopped before train.max_steps, but the job was already requeued 3 "
        "times: giving up",
    )
    # A plain scancel (or the time limit) also TERMs the batch shell: the job is ending.
    assert decide(137, signalled=True, job_state="COMPLETING") == (
        False,
        "the job is COMPLETING (cancelled or out of time): not requeueing",
    )
    # TERM to the job steps: every node's task left its marker, the launchers exited 1. When
    # one node's launcher crashes, srun TERMs the other tasks: a marker from some nodes only.
    (tmp_path / "STOP.node-1").touch()
    assert not decide(1)[0]
    (tmp_path / "STOP.node-0").touch()
    assert decide(1) == (True, f"a stop was requested (exit 1); {then}")
    (tmp_path / "DONE").write_text("{}")
    assert decide(0) == (False, f"run complete: {tmp_path / 'DONE'}")


def test_the_requeue_command_answers_without_torch(tmp_path, capsys):
    assert main(["newest", str(tmp_path)]) == 0 and capsys.readouterr().out == "none\n"
    _complete(tmp_path, 6)
    assert main(["newest", str(tmp_path)]) == 0 and capsys.readouterr().out == "6\n"
    assert main(["requeue", str(tmp_path), "--status", "137", "--signalled"]) == 0
    assert main(["requeue", str(tmp_path), "--status", "2", "--started-from", "6"]) == 1
    assert capsys.readouterr().out.splitlines()[-1].endswith("not requeueing")
    # A job script runs it at the end of every attempt: seconds of torch import are not needed.
    code = "import sys, pare.checkpoint; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_a_truncated_weights_file_is_named(tmp_path):
    model, _ = _model()
    path = export_weights(model, tmp_path / "model.safetensors")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match=r"model\.safetensors is not a readable safetensors file"):
        load_weights(model, path)


def test_weights_of_a_compiled_model_are_the_plain_models_and_either_form_loads(tmp_path):
    """torch.compile prefixes every state-dict key with ``_orig_mod.``: the export drops it, and
    files written with it (by earlier versions) load into plain and compiled models alike. (The
    wrapper compiles lazily: nothing here runs the compiler.)"""
    from safetensors.torch import load_file, save_file

    model, _ = _model()
    compiled = torch.compile(model)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    path = export_weights(compiled, tmp_path / "model.safetensors")
    saved = load_file(str(path))
    assert set(saved) == set(model.state_dict())  # the plain model's keys
    old_style = tmp_path / "old.safetensors"
    save_file({f"_orig_mod.{k}": v for k, v in saved.items()}, str(old_style))
    for target_seed, weights in ((1, path), (2, old_style)):
        plain, _ = _model(seed=target_seed)
        load_weights(plain, weights)
        again = torch.compile(_model(seed=target_seed + 10)[0])
        load_weights(again, weights)
        fresh = load_initial_weights(_model(seed=target_seed + 20)[0], str(weights))
        assert fresh == []
        for name, value in saved.items():
            assert torch.equal(plain.state_dict()[name], value), name
            assert torch.equal(again.state_dict()[f"_orig_mod.{name}"], value), name


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


def test_checkpoints_hold_plain_keys_and_resume_into_compiled_or_plain_models(tmp_path):
    """Accelerate's save_state writes the prepared model's state dict as it is (``_orig_mod.``
    keys when compiled) and load_state expects it back as it is: with the hooks, checkpoints
    hold the plain keys and load into either form, old prefixed ones too."""
    from accelerate import Accelerator
    from safetensors.torch import load_file, save_file

    from pare.checkpoint import plain_checkpoint_weights

    def prepared(seed, compiled):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        accelerator = Accelerator(cpu=True)
        model = accelerator.prepare(torch.compile(net, backend="eager") if compiled else net)
        plain_checkpoint_weights(accelerator)
        return accelerator, model, net

    accelerator, _, net = prepared(0, compiled=True)
    accelerator.save_state(str(tmp_path / "ckpt"))
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert set(saved) == set(net.state_dict())  # no _orig_mod.
    for seed, compiled in ((1, False), (2, True)):
        accelerator, _, other = prepared(seed, compiled)
        accelerator.load_state(str(tmp_path / "ckpt"))
        for name, value in net.state_dict().items():
            assert torch.equal(other.state_dict()[name], value), name
    # A checkpoint a compiled run wrote before the hooks.
    save_file(
        {f"_orig_mod.{k}": v for k, v in saved.items()}, str(tmp_path / "ckpt/model.safetensors")
    )
    accelerator, _, other = prepared(3, compiled=False)
    accelerator.load_state(str(tmp_path / "ckpt"))
    assert torch.equal(other[0].weight, net[0].weight)
    # A damaged one is named in one line.
    (tmp_path / "ckpt" / "model.safetensors").write_bytes(b"\0" * 100)
    with pytest.raises(DamagedCheckpoint, match=r"ckpt/model\.safetensors is truncated or damaged"):
        prepared(4, compiled=False)[0].load_state(str(tmp_path / "ckpt"))


class _OneProcess:
    """What save_checkpoint uses of an Accelerator, for one process; ``save_state`` writes with
    ``write(folder)`` (Accelerate's files, or a failure)."""

    is_main_process, num_processes = True, 1

    def __init__(self, write):
        self.write = write

    def wait_for_everyone(self):
        pass

    def save_state(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.write(Path(folder))


def _write_files(folder):
    for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(b"\0" * 100)


def _disk_full_after_some_bytes(folder):
    (folder / "model.safetensors").write_bytes(b"\0" * 100)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "optimizer.bin"))


def _torch_disk_full(folder):  # torch's zip writer on a full disk: no errno, no words
    (folder / "optimizer.bin").write_bytes(b"\0" * 100)
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")


@pytest.mark.parametrize("failure", [_disk_full_after_some_bytes, _torch_disk_full])
def test_a_save_on_a_full_disk_says_so_and_leaves_no_partial_folder(tmp_path, monkeypatch, failure):
    kept = save_checkpoint(_OneProcess(_write_files), tmp_path, 5, keep=3, counters={"a": 1})
    if failure is _torch_disk_full:  # only the free space tells; here, none
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(SaveError) as err:
        save_checkpoint(_OneProcess(failure), tmp_path, 10, keep=3, counters={"a": 2})
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(
        f"no space left on device while saving checkpoint {checkpoint_dir(tmp_path, 10)} ("
    )
    assert "train.output_dir" in message and "train.keep_checkpoints, now 3" in message
    assert f"the last complete checkpoint, {kept}, is kept" in message
    assert sorted(p.name for p in (tmp_path / CHECKPOINTS).iterdir()) == ["step-0000005"]
    assert complete_checkpoints(tmp_path) == [kept]
    # With space again, the same step saves normally.
    save_checkpoint(_OneProcess(_write_files), tmp_path, 10, keep=3, counters={"a": 2})
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-0000005", "step-0000010"]


def test_a_weights_file_that_does_not_fit_leaves_no_temporary_file(tmp_path, monkeypatch):
    import safetensors.torch

    def full(state, path, metadata=None):
        Path(path).write_bytes(b"\0" * 10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    model, _ = _model()
    with pytest.raises(SaveError, match=r"^no space left on device while saving weights .*best"):
        export_weights(model, tmp_path / "best" / "model.safetensors")
    assert list((tmp_path / "best").iterdir()) == []


def test_unfinished_checkpoint_folders_are_removed_and_complete_ones_kept(tmp_path):
    root = tmp_path / CHECKPOINTS
    for name in ("step-0000005", "step-0000010", "step-0000015.tmp", "other"):
        (root / name).mkdir(parents=True)
        (root / name / "model.safetensors").write_bytes(b"\0")
    for name in (COMPLETE, "trainer_state.json"):
        (root / "step-0000005" / name).touch()
    # step-0000010: its marker removed by a prune that was killed; 15.tmp: a killed save
    removed = remove_unfinished(tmp_path)
    assert sorted(p.name for p in removed) == ["step-0000010", "step-0000015.tmp"]
    assert sorted(p.name for p in root.iterdir()) == ["other", "step-0000005"]
    assert remove_unfinished(tmp_path / "fresh") == []


def _rng_states():
    """A random_states_<rank>.pkl as accelerate's save_state writes it."""
    return {
        "step": 0,
        "random_state": random.getstate(),
        "numpy_random_seed": np.random.RandomState(0).get_state(),
        "torch_manual_seed": torch.get_rng_state(),
    }


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_damaged_rng_state_is_named_before_accelerate_skips_it(tmp_path):
    for step in (5, 10):
        folder = checkpoint_dir(tmp_path, step)
        folder.mkdir(parents=True)
        for name in (COMPLETE, "model.safetensors", "trainer_state.json"):
            (folder / name).touch()
        for rank in (0, 1):
            torch.save(_rng_states(), folder / f"random_states_{rank}.pkl")
    folder = checkpoint_dir(tmp_path, 10)
    assert check_rng_states(folder, 2) == []
    assert check_rng_states(folder, 3) == [2]  # saved by fewer processes: not damage
    rng = folder / "random_states_1.pkl"
    good = rng.read_bytes()
    marker = tmp_path / "code-ran"
    damaged = {
        "truncated": good[: len(good) // 2],
        "garbage": os.urandom(len(good)),
        "a pickle that runs code": pickle.dumps(_RunsCode(marker)),
        "another object": pickle.dumps({"random_state": "not a state"}),
    }
    for what, data in damaged.items():
        rng.write_bytes(data)
        with pytest.raises(DamagedCheckpoint) as err:
            check_rng_states(folder, 2)
        message = str(err.value)
        assert message.startswith(f"{rng} is truncated or damaged ("), what
        assert f"train.resume={checkpoint_dir(tmp_path, 5)}" in message and "\n" not in message
    assert not marker.exists()
    # The oldest checkpoint damaged: nothing earlier to resume from.
    (checkpoint_dir(tmp_path, 5) / "random_states_0.pkl").write_bytes(b"\0" * 10)
    with pytest.raises(DamagedCheckpoint, match=r"delete .*step-0000005 and start afresh, or"):
        check_rng_states(checkpoint_dir(tmp_path, 5), 2)
