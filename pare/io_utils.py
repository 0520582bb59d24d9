"""Atomic file writing: write to a temporary name in the same folder, then rename.

A crash or an interrupted job never leaves a half-written file under the final name, and
readers never see one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name leftover_temporaries() looks for.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; keep the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files a killed :func:`atomic_open` of ``path`` left behind."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*.tmp"))


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: object, indent: int | None = None) -> Path:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
    return Path(path)
