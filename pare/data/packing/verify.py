"""Verify a packed split against its manifest: every shard, every sample, every member."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import simplejpeg
from PIL import Image

from pare.data.fields import NPZ_FIELDS, OldShardFormat, check_schema_version, nonfinite_fields
from pare.data.packing.samples import stored_parts_size
from pare.data.packing.shard_writer import MANIFEST


def verify_split(folder: str | Path) -> tuple[int, list[str]]:
    """(samples checked, problems). A problem names the shard and, where it applies, the sample."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return 0, [
            f"{manifest_path}: missing; is {folder} a packed split (pack_3dpw.py / pack_mpii.py output)?"
        ]
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return 0, [f"{manifest_path}: not readable JSON ({e}); truncated or damaged, repack"]
    try:
        check_schema_version(manifest, str(manifest_path))
    except OldShardFormat as e:
        return 0, [str(e)]
    problems: list[str] = []
    keys: set[str] = set()
    checked = 0
    for shard in manifest["shardlist"]:
        path = folder / shard["url"]
        if not path.is_file():
            problems.append(f"{shard['url']}: missing")
            continue
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != shard["sha256"] or len(data) != shard["filesize"]:
            problems.append(
                f"{shard['url']}: sha256/size differ from the manifest (corrupted or replaced)"
            )
        try:
            samples = _read_tar(data)
        except tarfile.TarError as e:
            problems.append(f"{shard['url']}: unreadable tar ({e})")
            continue
        if len(samples) != shard["nsamples"]:
            problems.append(
                f"{shard['url']}: {len(samples)} samples, manifest says {shard['nsamples']}"
            )
        for key, members in samples.items():
            where = f"{shard['url']}:{key}"
            if key in keys:
                problems.append(f"{where}: duplicate key")
            keys.add(key)
            problems += [f"{where}: {p}" for p in _check_sample(members)]
            checked += 1
    if sum(s["nsamples"] for s in manifest["shardlist"]) != manifest["num_samples"]:
        problems.append("manifest: per-shard counts do not add up to num_samples")
    return checked, problems


def _read_tar(data: bytes) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def _check_sample(members: dict[str, bytes]) -> list[str]:
    problems = []
    for required in ("jpg", "npz", "json"):
        if required not in members:
            problems.append(f"no .{required}")
    if problems:
        return problems
    try:
        image = simplejpeg.decode_jpeg(members["jpg"])
    except (ValueError, RuntimeError) as e:
        return [f"jpg does not decode ({e})"]
    try:
        with np.load(io.BytesIO(members["npz"]), allow_pickle=False) as z:
            for name, (shape, dtype) in NPZ_FIELDS.items():
                if name not in z.files:
                    problems.append(f"npz lacks {name}")
                elif z[name].shape != shape or z[name].dtype != np.dtype(dtype):
                    problems.append(
                        f"npz {name} is {z[name].shape} {z[name].dtype}, expected {shape} {np.dtype(dtype)}"
                    )
            has_smpl = bool(z["has_smpl"]) if "has_smpl" in z.files else False
            nonfinite = nonfinite_fields({name: z[name] for name in z.files})
            if nonfinite:
                problems.append(f"npz {', '.join(nonfinite)} not finite (NaN or inf)")
    except (ValueError, OSError) as e:
        return [f"npz does not load ({e})"]
    if "png" in members:
        parts = np.asarray(Image.open(io.BytesIO(members["png"])))
        expected = (stored_parts_size(image.shape[0]), stored_parts_size(image.shape[1]))
        if parts.shape != expected or parts.max() > 24:
            problems.append(
                f"png part map {parts.shape} (max {parts.max()}) does not fit the {image.shape[:2]} crop"
            )
    elif has_smpl:
        problems.append("has_smpl but no part-label png")
    try:
        json.loads(members["json"])
    except ValueError as e:
        problems.append(f"json does not parse ({e})")
    return problems
