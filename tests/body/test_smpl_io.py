"""Reading official-format SMPL pickles without chumpy, safely."""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from pare.body import read_smpl_file, write_npz
from pare.body.convert import main as convert_main
from pare.data.synthetic.py2pickle import dumps_py2
from pare.safe_pickle import UnsafePickleError, load_pickle


def _official_style_pickle(path, arrays):
    """Pickle like the official files: chumpy.ch.Ch shapedirs, scipy.sparse.csc J_regressor,
    numpy.core module names, Python 2 strings; the fake chumpy is gone once written."""
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._dirty_vars = set()  # real Ch objects carry bookkeeping besides 'x'

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    ch.Ch = Ch
    chumpy.ch = ch
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = chumpy, ch
    try:
        data = dict(arrays)
        data["shapedirs"] = Ch(arrays["shapedirs"])
        data["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
        data["bs_style"] = "lbs"
        data["pose_training_info"] = {"sigma": 1.0}
        raw = dumps_py2(data)  # Python 2 opcodes and module names, as the official files have
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]
    path.write_bytes(raw)
    return raw


@pytest.fixture
def small_smpl_arrays():
    rng = np.random.default_rng(0)
    v, j = 50, 24
    jreg = np.zeros((j, v))
    jreg[np.arange(j), rng.integers(0, v, j)] = 1.0
    kintree = np.array([[2**32 - 1, *range(j - 1)], range(j)], dtype=np.uint32)
    return {
        "v_template": rng.normal(size=(v, 3)),
        "shapedirs": rng.normal(size=(v, 3, 10)),
        "posedirs": rng.normal(size=(v, 3, 207)),
        "J_regressor": jreg,
        "weights": rng.dirichlet(np.ones(j), size=v),
        "kintree_table": kintree,
        "f": rng.integers(0, v, size=(96, 3)).astype(np.uint32),
    }


def test_official_format_pickle_loads_without_chumpy(tmp_path, small_smpl_arrays):
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    raw = _official_style_pickle(path, small_smpl_arrays)
    assert b"chumpy.ch\nCh" in raw and b"scipy.sparse.csc\ncsc_matrix" in raw
    assert b"numpy.core.multiarray" in raw and b"_codecs" not in raw  # really Python 2 style
    assert "chumpy" not in sys.modules
    with pytest.raises(ModuleNotFoundError, match="chumpy"):  # what users hit today
        with path.open("rb") as f:
            pickle.load(f, encoding="latin1")

    data = read_smpl_file(path)
    assert "chumpy" not in sys.modules
    for key, expected in small_smpl_arrays.items():
        np.testing.assert_array_equal(data[key], expected, err_msg=key)
    assert data["J_regressor"].shape == (24, 50) and isinstance(data["J_regressor"], np.ndarray)
    assert str(data["bs_style"]) == "lbs"
    assert "pose_training_info" not in data  # a dict, not an array


def test_pickle_that_runs_os_system_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(pickle.dumps({"v_template": Exploit()}, protocol=2))
    with pytest.raises(UnsafePickleError, match=r"posix\.system|os\.system"):
        read_smpl_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(S'1+1'\ntR.",
        b"c__builtin__\ngetattr\n(c__builtin__\nobject\nS'__subclasses__'\ntR.",
        b"cnumpy\nload\n(S'x.npy'\ntR.",
        b"ccopy_reg\n_reconstructor\n(c__builtin__\nobject\nc__builtin__\nobject\nNtR.",
    ],
)
def test_other_dangerous_globals_are_refused(tmp_path, payload):
    path = tmp_path / "x.pkl"
    path.write_bytes(payload)
    with pytest.raises(pickle.UnpicklingError):
        load_pickle(path)


def test_truncated_pickle_names_the_file(tmp_path, small_smpl_arrays):
    path = tmp_path / "SMPL_MALE.pkl"
    raw = _official_style_pickle(path, small_smpl_arrays)
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"SMPL_MALE\.pkl.*truncated or corrupt"):
        read_smpl_file(path)


def test_missing_file_says_where_smpl_comes_from(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"(?s)SMPL_FEMALE\.pkl.*licensed.*smpl\.is\.tue\.mpg\.de"
    ):
        read_smpl_file(tmp_path / "SMPL_FEMALE.pkl")


def test_wrong_shapes_are_reported(tmp_path, small_smpl_arrays):
    bad = dict(small_smpl_arrays, posedirs=np.zeros((50, 3, 200)))
    write_npz(bad, tmp_path / "bad.npz")
    with pytest.raises(
        ValueError, match=r"'posedirs' has shape \(50, 3, 200\), expected \(50, 3, 207\)"
    ):
        read_smpl_file(tmp_path / "bad.npz")


def test_convert_command_writes_equivalent_npz(tmp_path, small_smpl_arrays, capsys):
    src = tmp_path / "SMPL_NEUTRAL.pkl"
    _official_style_pickle(src, small_smpl_arrays)
    assert convert_main([str(src), "--out-dir", str(tmp_path / "npz")]) == 0
    out = tmp_path / "npz" / "SMPL_NEUTRAL.npz"
    with np.load(out, allow_pickle=False) as z:  # no pickle needed to read it back
        for key, expected in small_smpl_arrays.items():
            np.testing.assert_array_equal(z[key], expected, err_msg=key)
    assert not list((tmp_path / "npz").glob("*.tmp"))


def test_convert_command_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "SMPL_NEUTRAL.pkl"
    bad.write_bytes(b"not a pickle at all")
    assert convert_main([str(bad)]) == 1
    assert "SMPL_NEUTRAL.pkl" in capsys.readouterr().err
    assert not (tmp_path / "SMPL_NEUTRAL.npz").exists()


def test_sparse_matrix_with_an_absurd_shape_is_refused(tmp_path, small_smpl_arrays):
    data = dict(small_smpl_arrays)
    huge = scipy.sparse.csc_matrix((1, 1))
    huge._shape = (10**6, 10**6)  # what a crafted file could claim, to exhaust memory
    data["J_regressor"] = huge
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    path.write_bytes(dumps_py2(data))
    with pytest.raises(ValueError, match="implausible shape"):
        read_smpl_file(path)
