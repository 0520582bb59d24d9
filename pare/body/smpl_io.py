"""Read SMPL model files (official ``.pkl`` or clean ``.npz``) without chumpy, and write ``.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pare.io_utils import atomic_open
from pare.safe_pickle import load_pickle, to_numpy

# What smplx's SMPL reads; every valid model file has these.
REQUIRED_KEYS = (
    "v_template",
    "shapedirs",
    "posedirs",
    "J_regressor",
    "weights",
    "kintree_table",
    "f",
)

SMPL_SOURCE_HINT = (
    "The SMPL model files are licensed and cannot be shipped: register and download them from "
    "https://smpl.is.tue.mpg.de (SMPL for Python, v1.0.0 or v1.1.0), then put SMPL_NEUTRAL.pkl, "
    "SMPL_MALE.pkl and SMPL_FEMALE.pkl in one folder (rename basicModel_neutral_lbs_10_207_0_v1.0.0"
    ".pkl, basicmodel_m_lbs_10_207_0_v1.0.0.pkl and basicModel_f_lbs_10_207_0_v1.0.0.pkl to those "
    "names). To run without them, use the generated stand-in: body.model_path=standin."
)


def read_smpl_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an SMPL model file into plain numpy arrays.

    ``.pkl`` files (Python 2 pickles holding chumpy arrays and a scipy.sparse ``J_regressor``) go
    through the restricted unpickler: chumpy objects become their stored array, sparse matrices
    become dense, and any other class makes it fail without running code. Entries that are not
    arrays, numbers or strings (e.g. ``pose_training_info``, a dict) are dropped.
    ``.npz`` files are read with ``allow_pickle=False``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SMPL model file not found: {path}. {SMPL_SOURCE_HINT}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    elif path.suffix == ".pkl":
        raw = load_pickle(path)
        if not isinstance(raw, dict):
            raise ValueError(
                f"{path}: expected a pickled dict of SMPL arrays, got {type(raw).__name__}"
            )
        data = {}
        for key, value in raw.items():
            if isinstance(value, (dict, list, tuple)) and not _is_numeric_sequence(value):
                continue
            array = to_numpy(value)
            if array.dtype != object:
                data[str(key)] = array
    else:
        raise ValueError(f"{path}: unknown SMPL file type '{path.suffix}'; expected .pkl or .npz")
    _validate(data, path)
    return data


def _is_numeric_sequence(value: object) -> bool:
    try:
        return np.asarray(value).dtype.kind in "biuf"
    except (ValueError, TypeError):
        return False


def _validate(data: dict[str, np.ndarray], path: Path) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{path}: not an SMPL model file, missing keys {missing}")
    n_vertices = data["v_template"].shape[0]
    n_joints = data["kintree_table"].shape[1]
    expected = {
        "v_template": (n_vertices, 3),
        "f": (None, 3),
        "shapedirs": (n_vertices, 3, None),
        "posedirs": (n_vertices, 3, (n_joints - 1) * 9),
        "J_regressor": (n_joints, n_vertices),
        "weights": (n_vertices, n_joints),
        "kintree_table": (2, n_joints),
    }
    for key, shape in expected.items():
        got = data[key].shape
        if len(got) != len(shape) or any(
            s is not None and s != g for s, g in zip(shape, got, strict=False)
        ):
            want = tuple("*" if s is None else s for s in shape)
            raise ValueError(f"{path}: '{key}' has shape {got}, expected {want}")


def write_npz(data: dict[str, np.ndarray], path: str | os.PathLike) -> Path:
    """Write arrays to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_open(path) as f:
        np.savez_compressed(f, **data)
    return Path(path)
