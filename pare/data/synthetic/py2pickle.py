"""Write pickles the way Python 2 wrote 3DPW's and SMPL's: protocol 2, ``str`` as byte strings,
numpy arrays under ``numpy.core.multiarray``.

Python 3's pickler emits bytes through ``_codecs.encode`` and names ``numpy._core`` under numpy
2; neither appears in the real files. Writing the same opcodes as Python 2 lets the synthetic
datasets exercise exactly the reader paths that the real files take.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pare.io_utils import write_bytes_atomic
from pare.safe_pickle import Numpy1Pickler


class _Py2Pickler(Numpy1Pickler):
    # Module names as numpy 1 / old scipy write them (the real files' era), str as Python 2's.
    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _write_py2_str(self, data: bytes, obj: Any) -> None:
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + data)
        self.memoize(obj)

    def save_bytes_as_py2_str(self, obj: bytes) -> None:
        self._write_py2_str(obj, obj)

    def save_str_as_py2_str(self, obj: str) -> None:
        # Python 2 pickled plain (latin-1) text as str: bytes on disk, text again after latin1.
        try:
            data = obj.encode("latin1")
        except UnicodeEncodeError:
            pickle._Pickler.save_str(self, obj)
        else:
            self._write_py2_str(data, obj)

    dispatch[bytes] = save_bytes_as_py2_str
    dispatch[str] = save_str_as_py2_str


def _plain(value: Any) -> Any:
    """Numpy scalars become Python numbers, as Python 2's files hold them."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def dumps_py2(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(_plain(obj))
    return buf.getvalue()


def dump_py2(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as a Python-2-style pickle, atomically (temporary file, then rename)."""
    return write_bytes_atomic(path, dumps_py2(obj))
