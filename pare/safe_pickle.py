"""A restricted unpickler for the Python 2 pickles that 3DPW and SMPL ship.

Unpickling runs whatever callables a file names, so a crafted ``.pkl`` can execute code. The
loader here resolves only an allow-list of globals (numpy's array reconstruction, plain
containers) and replaces the two foreign classes the official files use with inert stand-ins:

- chumpy's ``Ch`` (SMPL's ``shapedirs``): a :class:`ChumpyStub` that keeps only its state dict,
  whose ``'x'`` entry is the array. chumpy itself is never imported.
- scipy.sparse matrices (SMPL's ``J_regressor``): a :class:`SparseStub` that keeps the stored
  arrays and is converted to a dense ``ndarray`` on request, independent of scipy's pickle layout
  for that matrix type (which changed between the scipy that wrote the files and today's).

Everything else is refused with :class:`UnsafePickleError` before any code it names could run.

The writing side, :func:`dumps_numpy1`, makes pickles for other tools (the official 3DPW
evaluator's Python 3.7 with numpy <= 1.21, SMPL readers with an old scipy): protocol 2, with the
module names numpy 1 and old scipy have (``numpy.core``, ``scipy.sparse.csc``) where numpy 2
and today's scipy would name ``numpy._core`` and ``scipy.sparse._csc``.
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

__all__ = [
    "ChumpyStub",
    "Numpy1Pickler",
    "SparseStub",
    "UnsafePickleError",
    "dumps_numpy1",
    "legacy_global_name",
    "load_pickle",
    "to_numpy",
]


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; nothing it names was executed."""


class ChumpyStub:
    """Inert stand-in for ``chumpy.ch.Ch`` (and any other chumpy class): keeps the state only."""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def to_array(self) -> np.ndarray:
        state = getattr(self, "state", None)
        if not isinstance(state, dict) or "x" not in state:
            raise ValueError(
                "a chumpy object in this pickle has no stored array ('x' in its state)"
            )
        return to_numpy(state["x"])


class SparseStub:
    """Inert stand-in for a pickled ``scipy.sparse`` matrix of format ``csc``, ``csr`` or ``coo``."""

    format = ""

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Dense conversion of a crafted "sparse" matrix could ask for terabytes; SMPL's is 24 x 6890.
    MAX_DENSE_ELEMENTS = 50_000_000

    def to_array(self) -> np.ndarray:
        s = self.state
        shape = tuple(int(n) for n in s.get("_shape", s.get("shape", ())))
        if len(shape) != 2 or min(shape) < 0 or shape[0] * shape[1] > self.MAX_DENSE_ELEMENTS:
            raise ValueError(f"a sparse matrix in this pickle has an implausible shape {shape}")
        if self.format == "coo":
            row, col = np.asarray(s["row"]), np.asarray(s["col"])
            m = scipy.sparse.coo_matrix((np.asarray(s["data"]), (row, col)), shape=shape)
        else:
            cls = scipy.sparse.csc_matrix if self.format == "csc" else scipy.sparse.csr_matrix
            arrays = (np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"]))
            m = cls(arrays, shape=shape)
        return np.asarray(m.toarray())


class _CscStub(SparseStub):
    format = "csc"


class _CsrStub(SparseStub):
    format = "csr"


class _CooStub(SparseStub):
    format = "coo"


_SPARSE_STUBS = {"csc_matrix": _CscStub, "csr_matrix": _CsrStub, "coo_matrix": _CooStub}
_STUB_CLASSES = (ChumpyStub, _CscStub, _CsrStub, _CooStub)


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """``copyreg._reconstructor`` limited to creating one of our stub classes."""
    if cls not in _STUB_CLASSES or base is not object or state is not None:
        raise UnsafePickleError(f"refusing copy_reg._reconstructor({cls!r}, {base!r}, ...)")
    return object.__new__(cls)


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes into protocol-2 pickles; strings only."""
    if not isinstance(text, str) or encoding.lower() not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode with anything but (str, 'latin1')")
    return codecs.encode(text, "latin1")


def _numpy_core(name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core (old pickles name the former, new ones the
    # latter); numpy 1.24 has no numpy._core and 1.26 only a partial one without multiarray.
    import importlib

    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy {np.__version__} has no multiarray.{name}")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("__builtin__", "object"): object,
    ("builtins", "object"): object,
    ("_codecs", "encode"): _encode_latin1,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _numpy_core("_reconstruct")
    _ALLOWED[(_module, "scalar")] = _numpy_core("scalar")
for _module in ("numpy.core.numeric", "numpy._core.numeric"):
    _ALLOWED[(_module, "_frombuffer")] = np.frombuffer
for _builtin in ("__builtin__", "builtins"):
    for _name in ("set", "frozenset", "slice", "complex"):
        _ALLOWED[(_builtin, _name)] = getattr(__import__("builtins"), _name)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            return ChumpyStub
        if module.startswith("scipy.sparse") and name in _SPARSE_STUBS:
            return _SPARSE_STUBS[name]
        raise UnsafePickleError(
            f"{self._source}: refusing to load global '{module}.{name}'. Only numpy arrays, "
            "scipy.sparse matrices, chumpy arrays and plain containers are allowed in SMPL/3DPW "
            "pickles; this file is either corrupt or crafted. Re-download it from the official site."
        )


def load_pickle(path: str | Path) -> Any:
    """Load a (Python 2 or 3) pickle through the allow-list; stubs are left in place.

    Raises ``FileNotFoundError`` for a missing file, :class:`UnsafePickleError` for a global
    outside the allow-list, and ``ValueError`` naming the file for a truncated or corrupt one.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except (EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError) as e:
            raise ValueError(
                f"{path}: not a readable pickle ({type(e).__name__}: {e}). The file is truncated "
                "or corrupt; download it again."
            ) from e


def to_numpy(value: Any) -> np.ndarray:
    """Convert an unpickled leaf (ndarray, chumpy or sparse stub, number, list) to an ndarray."""
    if isinstance(value, (ChumpyStub, SparseStub)):
        return value.to_array()
    return np.asarray(value)


# Today's module paths -> the ones numpy 1.x and scipy < 1.8 have (both still import the old
# names, so files written with them load everywhere).
_LEGACY_MODULES = (
    ("numpy._core", "numpy.core"),
    ("scipy.sparse._csc", "scipy.sparse.csc"),
    ("scipy.sparse._csr", "scipy.sparse.csr"),
    ("scipy.sparse._coo", "scipy.sparse.coo"),
)


def legacy_global_name(module: str) -> str:
    """``module`` as numpy 1 / old scipy name it (``numpy._core.multiarray`` ->
    ``numpy.core.multiarray``); other modules unchanged."""
    for new, old in _LEGACY_MODULES:
        if module == new or module.startswith(new + "."):
            return old + module[len(new) :]
    return module


class Numpy1Pickler(pickle._Pickler):
    """Pickler that names numpy 1's and old scipy's modules (:func:`legacy_global_name`). The
    pure-Python pickler: the C one offers no hook for the names it writes."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None)
        name = name or getattr(obj, "__qualname__", None)
        legacy = legacy_global_name(module) if module else module
        if module and legacy != module:
            self.write(pickle.GLOBAL + f"{legacy}\n{name}\n".encode("ascii"))
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def dumps_numpy1(obj: Any) -> bytes:
    """``obj`` as a protocol-2 pickle that numpy 1.x (and Python 3.7+) can load: no global it
    names is under ``numpy._core`` or scipy's private sparse modules."""
    buf = io.BytesIO()
    Numpy1Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()
