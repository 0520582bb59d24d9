"""build_body_model: every way users point it at a model, and the errors when they get it wrong."""

import shutil

import numpy as np
import pytest
import torch

from pare.body import build_body_model, read_smpl_file, resolve_model_file, write_npz


def _forward(model):
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(
            betas=torch.randn(1, 10, generator=gen),
            body_pose=0.3 * torch.randn(1, 69, generator=gen),
        )


def test_pkl_npz_and_folder_give_the_same_model(tmp_path, standin_folder):
    pkl = standin_folder / "SMPL_MALE.pkl"
    folder = tmp_path / "smpl"
    folder.mkdir()
    write_npz(read_smpl_file(pkl), folder / "SMPL_MALE.npz")
    reference = _forward(build_body_model(pkl, gender="male")).vertices
    for source in (folder / "SMPL_MALE.npz", folder):
        torch.testing.assert_close(
            _forward(build_body_model(source, gender="male")).vertices, reference
        )


def test_folder_prefers_npz_and_falls_back_to_pkl(tmp_path, standin_folder):
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(standin_folder / "SMPL_NEUTRAL.pkl", folder)
    assert resolve_model_file(folder, "neutral").name == "SMPL_NEUTRAL.pkl"
    write_npz(read_smpl_file(folder / "SMPL_NEUTRAL.pkl"), folder / "SMPL_NEUTRAL.npz")
    assert resolve_model_file(folder, "neutral").name == "SMPL_NEUTRAL.npz"


def test_missing_gender_lists_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        build_body_model(tmp_path, gender="female")
    message = str(info.value)
    assert (
        str(tmp_path / "SMPL_FEMALE.npz") in message
        and str(tmp_path / "SMPL_FEMALE.pkl") in message
    )
    assert "licensed" in message and "body.model_path=standin" in message


def test_unknown_gender_is_rejected():
    with pytest.raises(ValueError, match="gender must be one of"):
        build_body_model("standin", gender="unknown")


def test_real_smpl_files_are_not_flagged_as_standin(tmp_path, standin_folder):
    data = read_smpl_file(standin_folder / "SMPL_NEUTRAL.pkl")
    del data["standin_version"]
    write_npz(data, tmp_path / "SMPL_NEUTRAL.npz")
    assert build_body_model(tmp_path).is_standin is False


def test_gradients_flow_through_the_model():
    model = build_body_model("standin")
    pose = torch.zeros(1, 69, requires_grad=True)
    out = model(body_pose=pose)
    out.vertices.sum().backward()
    assert pose.grad is not None and torch.isfinite(pose.grad).all()
    assert np.abs(pose.grad.numpy()).sum() > 0
