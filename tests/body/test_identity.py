import numpy as np
import pytest

from pare.body import BadRegressor, body_model_identity, describe_identity, load_eval_assets


def _copy_with_links(source, target):
    """A model folder whose SMPL files link to ``source``'s (cheap); extras are real copies."""
    target.mkdir()
    for file in source.iterdir():
        if file.suffix == ".pkl":
            (target / file.name).symlink_to(file)
        else:
            (target / file.name).write_bytes(file.read_bytes())
    return target


def test_copy_has_the_same_hash_and_a_changed_file_another(tmp_path, standin_folder):
    standin = body_model_identity("standin")
    assert standin["kind"] == "standin" and standin["path"] == "standin"
    copy = _copy_with_links(standin_folder, tmp_path / "copy")
    same = body_model_identity(copy)
    assert same["kind"] == "smpl" and same["path"] == str(copy)
    assert same["sha256"] == standin["sha256"]  # content, not location

    labels = np.load(copy / "smpl_part_labels.npy")
    np.save(copy / "smpl_part_labels.npy", np.roll(labels, 1))
    changed = body_model_identity(copy)
    assert changed["sha256"] != standin["sha256"]
    assert changed["sha256"][:12] in describe_identity(changed)


def test_npz_beside_the_pkl_is_what_is_hashed(tmp_path, standin_folder):
    copy = _copy_with_links(standin_folder, tmp_path / "copy")
    before = body_model_identity(copy)["sha256"]
    # resolve_model_file prefers the .npz: the identity must follow it.
    (copy / "SMPL_MALE.npz").write_bytes(b"not the same model")
    assert body_model_identity(copy)["sha256"] != before


@pytest.mark.parametrize("name", ["J_regressor_h36m.npy", "J_regressor_extra.npy"])
def test_missing_extra_is_named(tmp_path, standin_folder, name):
    copy = _copy_with_links(standin_folder, tmp_path / "copy")
    (copy / name).unlink()
    with pytest.raises(FileNotFoundError, match=name.replace(".", r"\.")):
        body_model_identity(copy)
    with pytest.raises(FileNotFoundError, match=r"J_regressor_extra\.npy .*SPIN"):
        load_eval_assets(copy)


def test_the_extra_regressor_is_part_of_the_identity(tmp_path, standin_folder):
    copy = _copy_with_links(standin_folder, tmp_path / "copy")
    before = body_model_identity(copy)["sha256"]
    extra = np.load(copy / "J_regressor_extra.npy")
    np.save(copy / "J_regressor_extra.npy", extra[::-1])
    assert body_model_identity(copy)["sha256"] != before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.zeros((14, 6890)), r"\(14, 6890\), expected a finite \(9, 6890\)"),
        (np.full((9, 6890), np.nan), "non-finite values"),
        (b"\x93NUMPY truncated", "not a readable .npy file"),
    ],
)
def test_a_wrong_extra_regressor_is_refused_by_name(tmp_path, standin_folder, content, message):
    copy = _copy_with_links(standin_folder, tmp_path / "copy")
    target = copy / "J_regressor_extra.npy"
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        np.save(target, content)
    with pytest.raises(BadRegressor, match=message) as info:
        load_eval_assets(copy)
    assert "J_regressor_extra.npy" in str(info.value) and "\n" not in str(info.value)
