"""Build the smplx SMPL module from a real SMPL file, a converted ``.npz``, or the stand-in."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import smplx
import torch
from smplx.utils import Struct

from pare.body import standin
from pare.body.parts import check_part_labels
from pare.body.smpl_io import SMPL_SOURCE_HINT, read_smpl_file
from pare.config import ConfigError
from pare.io_utils import write_json_atomic
from pare.safe_pickle import dumps_numpy1

# Beside a generated dataset's files: the identity of the body model that rendered it.
BODY_MODEL_RECORD = "body_model.json"
GENDERS = ("neutral", "male", "female")
# A batch or a shard stores a gender as its index in GENDERS.
GENDER_CODE = {g: code for code, g in enumerate(GENDERS)}
STANDIN = "standin"

# Gendered stand-ins: the neutral template moved along its own shape directions.
_GENDER_BETAS = {
    "neutral": np.zeros(10),
    "male": np.array([0.8, -0.3, 0.6, 1.2, -0.8, 0.0, 0.5, 0.0, 0.0, 0.5]),
    "female": np.array([-0.6, 0.2, -0.5, -1.2, 1.2, 0.0, -0.4, 0.0, 0.0, -0.5]),
}


def cache_dir() -> Path:
    """Where generated assets live: ``$PARE_CACHE`` or ``~/.cache/pare``."""
    return Path(os.environ.get("PARE_CACHE", Path.home() / ".cache" / "pare"))


def standin_dir(root: str | os.PathLike | None = None) -> Path:
    """The stand-in model folder, generated on first use (safe when several processes race)."""
    root = Path(root) if root is not None else cache_dir()
    final = root / f"standin-smpl-v{standin.STANDIN_VERSION}"
    if (final / "SMPL_NEUTRAL.pkl").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable
    try:
        write_standin(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "SMPL_NEUTRAL.pkl").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_standin(folder: Path) -> None:
    """Write SMPL_{NEUTRAL,MALE,FEMALE}.pkl in SMPL's format plus the evaluation extras."""
    m = standin.generate()
    for gender, betas in _GENDER_BETAS.items():
        v_template = m.v_template + m.shapedirs @ betas
        data = {
            "v_template": v_template,
            "f": m.f,
            "weights": m.weights,
            "shapedirs": m.shapedirs,
            "posedirs": m.posedirs,
            # Like the official files: a scipy.sparse csc matrix, root parent 2**32 - 1.
            "J_regressor": scipy.sparse.csc_matrix(m.J_regressor),
            "kintree_table": m.kintree_table,
            "J": m.J_regressor @ v_template,
            "bs_style": "lbs",
            "bs_type": "lrotmin",
            "standin_version": standin.STANDIN_VERSION,
        }
        # numpy 1's and old scipy's module names, as SMPL's own files: other tools load it.
        (folder / f"SMPL_{gender.upper()}.pkl").write_bytes(dumps_numpy1(data))
    np.save(folder / "J_regressor_h36m.npy", m.J_regressor_h36m)
    np.save(folder / "J_regressor_extra.npy", m.J_regressor_extra)
    np.save(folder / "smpl_part_labels.npy", m.part_labels)


def resolve_model_file(path: str | os.PathLike, gender: str = "neutral") -> Path:
    """The model file for ``path``: a ``.pkl``/``.npz`` file, a folder, or ``"standin"``."""
    if gender not in GENDERS:
        raise ValueError(f"gender must be one of {GENDERS}, got {gender!r}")
    if str(path) == STANDIN:
        path = standin_dir()
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = [path / f"SMPL_{gender.upper()}.{ext}" for ext in ("npz", "pkl")]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(
            f"No SMPL model for gender '{gender}' in {path}: looked for "
            f"{', '.join(str(c) for c in candidates)}. {SMPL_SOURCE_HINT}"
        )
    if not path.is_file():
        raise FileNotFoundError(f"SMPL model path does not exist: {path}. {SMPL_SOURCE_HINT}")
    return path


def build_body_model(
    path: str | os.PathLike = STANDIN,
    gender: str = "neutral",
    num_betas: int = 10,
    batch_size: int = 1,
    dtype: torch.dtype = torch.float32,
    **smplx_kwargs,
) -> smplx.SMPL:
    """An smplx ``SMPL`` module from a ``.pkl``, an ``.npz``, a folder, or ``"standin"``.

    A folder must hold ``SMPL_{NEUTRAL,MALE,FEMALE}.{npz,pkl}`` (``.npz`` preferred). The file
    is read without chumpy through :func:`pare.body.read_smpl_file`. The returned module has
    ``is_standin`` set, so results can be labelled.
    """
    model_file = resolve_model_file(path, gender)
    data = read_smpl_file(model_file)
    # smplx prints a warning to stdout for 10-component shape spaces (all SMPL v1 files).
    with contextlib.redirect_stdout(io.StringIO()):
        model = smplx.SMPL(
            model_path=str(model_file),
            data_struct=Struct(**data),
            gender=gender,
            num_betas=num_betas,
            batch_size=batch_size,
            dtype=dtype,
            **smplx_kwargs,
        )
    model.is_standin = "standin_version" in data
    return model


@dataclass
class EvalAssets:
    """Per-model extras for evaluation and part supervision."""

    h36m_regressor: np.ndarray  # (17, V)
    extra_regressor: np.ndarray  # (9, V) SPIN's J_regressor_extra (pare.body.joints.EXTRA_9)
    part_labels: np.ndarray  # (V,) SMPL part 0..23 of each vertex


def load_eval_assets(path: str | os.PathLike = STANDIN) -> EvalAssets:
    """``J_regressor_h36m.npy``, ``J_regressor_extra.npy`` and ``smpl_part_labels.npy`` from the
    model's folder.

    The regressors must be finite (K, V) matrices for this body (17 and 9 rows); anything else
    raises :class:`BadRegressor` naming the file.
    The part labels are checked against the body model's rest pose
    (:func:`pare.body.parts.check_part_labels`): labels in another order than SMPL's joints
    raise :class:`pare.body.parts.PartLabelError` naming the file and the fix. Missing files
    raise FileNotFoundError.
    """
    folder = standin_dir() if str(path) == STANDIN else Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    files = {
        "h36m_regressor": folder / "J_regressor_h36m.npy",
        "extra_regressor": folder / "J_regressor_extra.npy",
        "part_labels": folder / "smpl_part_labels.npy",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Missing body-model extras: {', '.join(missing)}. J_regressor_h36m.npy and "
            "J_regressor_extra.npy are distributed with SPIN/PARE's data (SPIN's fetch_data.sh, "
            "PARE's data/body_models); smpl_part_labels.npy (6890 SMPL part ids 0..23) is written by "
            "pare-convert-parts from smpl_vert_segmentation.json or PARE's "
            "smpl_partSegmentation_mapping.pkl."
        )
    assets = EvalAssets(**{k: _load_npy(p) for k, p in files.items()})
    vertices, joints = load_rest_pose(path)
    for name, rows in (("h36m_regressor", 17), ("extra_regressor", 9)):
        _check_regressor(getattr(assets, name), rows, len(vertices), files[name])
    check_part_labels(assets.part_labels, vertices, joints, files["part_labels"])
    return assets


class BadRegressor(ConfigError):
    """A joint-regressor file of the wrong shape or with non-finite values."""


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadRegressor(
            f"{path} is not a readable .npy file ({e}); copy it again from SPIN/PARE's data"
        ) from None


def _check_regressor(matrix: np.ndarray, rows: int, n_vertices: int, path: Path) -> None:
    if matrix.shape != (rows, n_vertices) or not np.isfinite(matrix).all():
        what = "non-finite values" if matrix.shape == (rows, n_vertices) else matrix.shape
        raise BadRegressor(
            f"{path} holds {what}, expected a finite ({rows}, {n_vertices}) joint regressor for "
            f"this body model; use the file SPIN/PARE ship for SMPL ({path.name})"
        )


def load_rest_pose(path: str | os.PathLike = STANDIN) -> tuple[np.ndarray, np.ndarray]:
    """The rest-pose template (V, 3) and its joints (24, 3) of the body model at ``path`` (a
    file, a folder or ``"standin"``; in a folder the first of GENDERS present)."""
    present = [g for g in GENDERS if _has_model(path, g)]
    model_file = resolve_model_file(path, present[0] if present else GENDERS[0])
    stat = model_file.stat()
    return _rest_pose(str(model_file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _rest_pose(path: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
    # Keyed on size and mtime like _file_sha256: the loader checks the part labels every time a
    # body is built, and reading an SMPL pickle takes a few tenths of a second.
    data = read_smpl_file(path)
    vertices = data["v_template"].astype(np.float64)
    joints = data["J_regressor"] @ vertices
    vertices.flags.writeable = joints.flags.writeable = False  # shared by every caller
    return vertices, joints


def _has_model(path: str | os.PathLike, gender: str) -> bool:
    try:
        resolve_model_file(path, gender)
    except FileNotFoundError:
        return False
    return True


class BodyModelMismatch(ConfigError):
    """Data made with one body model met another (packing or training). A ``ConfigError`` (so a
    ``ValueError``): entry points report it as one line and exit 2."""


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # Keyed on size and mtime as well, so an edited file is hashed again; the stand-in's three
    # SMPL files are ~100 MB together, and packers and training ask more than once.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def body_model_identity(path: str | os.PathLike) -> dict:
    """What a body model is, to tell data made with one from data made with another.

    Returns ``{"kind": "standin" | "smpl", "path": str(path) as given, "sha256": hex}``. The hash
    covers the files the project reads for ``path``: ``SMPL_{NEUTRAL,MALE,FEMALE}`` as
    :func:`resolve_model_file` picks them (``.npz`` before ``.pkl``), ``J_regressor_h36m.npy``,
    ``J_regressor_extra.npy`` and ``smpl_part_labels.npy``; each file's role and content, not its location, so a copied
    folder has the same identity. The stand-in (``"standin"``) is generated if needed and hashed
    the same way. Raises FileNotFoundError for a missing model file or extra.
    """
    files = {f"SMPL_{g.upper()}": resolve_model_file(path, g) for g in GENDERS}
    folder = standin_dir() if str(path) == STANDIN else Path(path).expanduser()
    if folder.is_file():
        folder = folder.parent
    for name in ("J_regressor_h36m.npy", "J_regressor_extra.npy", "smpl_part_labels.npy"):
        extra = folder / name
        if not extra.is_file():
            raise FileNotFoundError(f"Missing body-model extra: {extra}")
        files[name] = extra
    digest = hashlib.sha256()
    for role, file in files.items():
        stat = file.stat()
        digest.update(
            f"{role} {_file_sha256(str(file.resolve()), stat.st_size, stat.st_mtime_ns)}\n".encode()
        )
    return {
        "kind": STANDIN if str(path) == STANDIN else "smpl",
        "path": str(path),
        "sha256": digest.hexdigest(),
    }


def describe_identity(identity: dict) -> str:
    """One line for messages: kind, path and a short hash."""
    return f"{identity['kind']} body model '{identity['path']}' (sha256 {identity['sha256'][:12]})"


def write_body_model_record(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write ``<root>/body_model.json``: the identity of the body model ``path`` that rendered
    the dataset under ``root`` (atomically)."""
    return write_json_atomic(Path(root) / BODY_MODEL_RECORD, body_model_identity(path), indent=1)


def read_body_model_record(root: str | os.PathLike) -> dict | None:
    """The identity in ``<root>/body_model.json``, or None where there is none (real data)."""
    record = Path(root) / BODY_MODEL_RECORD
    return json.loads(record.read_text()) if record.is_file() else None
