"""Which body model packed a split: the root's record, --body-model, the manifest, training."""

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from pare.body import BODY_MODEL_RECORD, BodyModelMismatch, body_model_identity
from pare.data.packing.pack import pack_3dpw
from pare.data.packing.shard_writer import ShardOptions
from pare.data.streaming.stream import check_body_model

ROOT = Path(__file__).parents[3]
OPTS = ShardOptions(maxcount=6, progress=False)


@pytest.fixture
def other_model(tmp_path, standin_folder):
    """A copy of the stand-in whose part labels differ: another body model."""
    folder = tmp_path / "other_smpl"
    folder.mkdir()
    for file in standin_folder.iterdir():
        if file.suffix == ".pkl":
            (folder / file.name).symlink_to(file)
        else:
            shutil.copy(file, folder / file.name)
    labels = np.load(folder / "smpl_part_labels.npy")
    np.save(folder / "smpl_part_labels.npy", np.roll(labels, 1))
    return folder


@pytest.fixture
def real_root(raw, tmp_path):
    """A 3DPW-format root without a body-model record, as real data comes."""
    root = tmp_path / "real3dpw"
    shutil.copytree(raw / "3dpw", root)
    (root / BODY_MODEL_RECORD).unlink()
    return root


def test_real_root_without_body_model_names_the_fix(real_root, tmp_path):
    with pytest.raises(BodyModelMismatch, match="--body-model data/body_models/smpl"):
        pack_3dpw(real_root, "train", tmp_path / "out", None, OPTS)
    assert not (tmp_path / "out").exists()
    cli = subprocess.run(
        [
            sys.executable,
            str(ROOT / "shards" / "pack_3dpw.py"),
            "--root",
            str(real_root),
            "--split",
            "train",
            "--out",
            str(tmp_path / "cli"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2, cli.stderr
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and "--body-model data/body_models/smpl" in lines[0]
    assert "standin" in lines[0]  # the stand-in only when named


def test_explicit_body_model_that_disagrees_with_the_record_stops(raw, other_model, tmp_path):
    with pytest.raises(BodyModelMismatch) as err:
        pack_3dpw(raw / "3dpw", "train", tmp_path / "out", str(other_model), OPTS)
    assert "'standin'" in str(err.value) and str(other_model) in str(err.value)


def test_recorded_smpl_folder_whose_files_changed_stops(raw, other_model, tmp_path):
    root = tmp_path / "rendered"
    shutil.copytree(raw / "3dpw", root)
    record = body_model_identity(other_model)
    (root / BODY_MODEL_RECORD).write_text(json.dumps(record))
    np.save(other_model / "smpl_part_labels.npy", np.zeros(6890, np.int64))
    with pytest.raises(BodyModelMismatch) as err:
        pack_3dpw(root, "train", tmp_path / "out", None, OPTS)
    message = str(err.value)
    assert record["sha256"][:12] in message
    assert body_model_identity(other_model)["sha256"][:12] in message


def test_manifest_records_the_body_model(packed):
    for split in ("3dpw", "3dpw_val", "mpii", "mpii_val"):
        manifest = json.loads((packed / split / "manifest.json").read_text())
        assert manifest["body_model"] == body_model_identity("standin")


def test_training_on_shards_of_another_body_model_stops(packed, other_model):
    splits = [str(packed / "3dpw"), str(packed / "mpii" / "manifest.json")]
    check_body_model(splits, "standin")
    with pytest.raises(BodyModelMismatch) as err:
        check_body_model(splits, str(other_model))
    message = str(err.value)
    assert "standin body model 'standin'" in message and str(other_model) in message
    ours = body_model_identity(str(other_model))["sha256"][:12]
    assert ours in message and body_model_identity("standin")["sha256"][:12] in message
    # URLs and shard patterns carry no manifest to check.
    check_body_model(["s3://bucket/3dpw/train", str(packed / "3dpw" / "x-{0..1}.tar")], "x")


def test_shards_packed_with_an_older_version_of_the_same_body_model_say_to_repack(packed, tmp_path):
    """Both sides named 'standin' (a newer stand-in since packing): the message used to end
    "or set body.model_path=standin", which it already was."""
    split = tmp_path / "old_standin"
    shutil.copytree(packed / "3dpw_val", split)
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["body_model"]["sha256"] = "0" * 64
    (split / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BodyModelMismatch) as err:
        check_body_model([str(split)], "standin")
    message = str(err.value)
    assert "changed since packing; repack the split" in message
    assert "set body.model_path" not in message


def test_manifest_without_a_record_only_warns(packed, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((packed / "3dpw" / "manifest.json").read_text())
    del manifest["body_model"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="repack"):
        check_body_model([str(old)], "standin")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_body_model([str(packed / "3dpw")], "standin")
