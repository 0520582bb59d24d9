"""Write samples into WebDataset tar shards: globally shuffled, reproducible, resumable.

- The sample order is a seeded permutation of all records, so no shard is a single sequence.
- Tar members have fixed metadata (mtime, owner, mode) and a fixed order, so the same inputs
  give byte-identical shards.
- A shard is written under a temporary name and renamed when complete; a journal
  (``.progress.json``) records each completed shard, its record range and sha256. A rerun after
  a kill keeps the complete shards that still match, removes partial ones and continues.
- Samples are built in worker processes (ordered ``imap``), written by the main process.
- ``manifest.json`` describes the split: counts, bytes, sha256 per shard, skips by reason, the
  joint layout and crop parameters, and a ``shardlist`` in the wids index format.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pare.body.joints import UNIFIED
from pare.data.readers import Skips
from pare.data.samples import BOX_EXTENT, CROP_CONTEXT, CROP_MAX, NPZ_FIELDS, SampleError
from pare.io_utils import write_json_atomic

SCHEMA_VERSION = 1
TAR_MTIME = 1_600_000_000  # fixed member mtime: reproducible bytes
MEMBER_ORDER = ("jpg", "json", "npz", "png")
JOURNAL = ".progress.json"
MANIFEST = "manifest.json"


@dataclass
class ShardOptions:
    maxcount: int = 1000
    maxsize: int = 256 * 1024 * 1024  # bytes
    workers: int = 1
    seed: int = 0
    strict: bool = False
    progress: bool = True


def add_shard_arguments(parser) -> None:
    """The command-line options every packer shares (see :class:`ShardOptions`)."""
    parser.add_argument("--workers", type=int, default=1, help="sample-building processes")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most")
    parser.add_argument("--maxsize-mb", type=float, default=256, help="shard size in MiB at most")
    parser.add_argument("--seed", type=int, default=0, help="seed of the global sample shuffle")
    parser.add_argument(
        "--strict", action="store_true", help="fail instead of skipping a bad sample"
    )
    parser.add_argument("--no-progress", action="store_true")


def shard_options(args) -> ShardOptions:
    return ShardOptions(
        args.maxcount,
        int(args.maxsize_mb * 1024 * 1024),
        max(1, args.workers),
        args.seed,
        args.strict,
        not args.no_progress,
    )


class PackError(RuntimeError):
    """Packing stopped (``--strict`` and a sample had to be skipped, or inconsistent state)."""


# Worker-process state: the sample builder, made once per process by the initializer.
_BUILDER: Callable[[Any], dict[str, bytes]] | None = None


def _init_worker(factory: Callable[[], Callable[[Any], dict[str, bytes]]]) -> None:
    global _BUILDER
    _BUILDER = factory()


def _build(record: Any) -> dict[str, bytes] | SampleError:
    assert _BUILDER is not None
    try:
        return _BUILDER(record)
    except SampleError as e:
        return e


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def sample_bytes(sample: dict[str, bytes]) -> int:
    return sum(len(v) for k, v in sample.items() if k != "__key__") + 512 * (len(sample) - 1)


class _ShardSink:
    """The shard being written: a temporary file, renamed when closed."""

    def __init__(self, folder: Path, name: str, start: int) -> None:
        self.final = folder / name
        self.tmp = folder / f".{name}.tmp"
        self.start, self.count, self.bytes = start, 0, 0
        self.file = self.tmp.open("wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.skips = Skips()

    def add(self, sample: dict[str, bytes]) -> None:
        key = sample["__key__"]
        if "." in key:
            raise PackError(f"sample key {key!r} contains a dot; WebDataset splits keys at dots")
        for ext in MEMBER_ORDER:
            if ext in sample:
                _tar_member(self.tar, f"{key}.{ext}", sample[ext])
        self.count += 1
        self.bytes += sample_bytes(sample)

    def close(self, end: int) -> dict:
        self.tar.close()
        self.file.close()
        data = self.tmp.read_bytes()
        self.tmp.replace(self.final)
        return {
            "url": self.final.name,
            "nsamples": self.count,
            "filesize": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "md5sum": hashlib.md5(data).hexdigest(),
            "start": self.start,
            "end": end,
            "skipped": self.skips.counts,
        }


def write_shards(
    records: Sequence[Any],
    builder_factory: Callable[[], Callable[[Any], dict[str, bytes]]],
    out: Path,
    prefix: str,
    options: ShardOptions,
    fingerprint: dict,
    skips: Skips,
) -> list[dict]:
    """Shuffle ``records`` (seeded), build each with the builder and write shards into ``out``.

    Returns the shard entries. ``fingerprint`` (the packing arguments) must match the journal
    of a previous run for its complete shards to be reused.
    """
    out.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(options.seed).permutation(len(records))
    done = _resume(out, prefix, fingerprint)
    start = done[-1]["end"] if done else 0
    for entry in done:
        for reason, n in entry["skipped"].items():
            skips.add(reason, f"(in {entry['url']})", n)

    todo = [records[i] for i in order[start:]]
    bar = tqdm(
        total=len(records),
        initial=start,
        desc=f"packing {prefix}",
        unit="sample",
        disable=not options.progress,
    )
    if options.workers > 1 and todo:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        pool = ctx.Pool(options.workers, initializer=_init_worker, initargs=(builder_factory,))
        results = pool.imap(_build, todo, chunksize=4)
    else:
        pool = None
        _init_worker(builder_factory)
        results = map(_build, todo)
    sink: _ShardSink | None = None
    try:
        for position, result in enumerate(results, start=start):
            if sink is None:
                sink = _ShardSink(out, f"{prefix}-{len(done):06d}.tar", position)
            if isinstance(result, SampleError):
                if options.strict:
                    raise PackError(f"--strict: {result}")
                skips.add(result.reason, str(result))
                sink.skips.add(result.reason, str(result))
            else:
                if sink.count and sink.bytes + sample_bytes(result) > options.maxsize:
                    done.append(sink.close(position))
                    _save_journal(out, fingerprint, done)
                    sink = _ShardSink(out, f"{prefix}-{len(done):06d}.tar", position)
                sink.add(result)
                if sink.count >= options.maxcount:
                    done.append(sink.close(position + 1))
                    _save_journal(out, fingerprint, done)
                    sink = None
            bar.update()
        if sink is not None and sink.count:
            done.append(sink.close(len(records)))
            _save_journal(out, fingerprint, done)
        elif sink is not None:  # only skips since the last shard: extend the last one's range
            sink.tar.close()
            sink.file.close()
            sink.tmp.unlink()
            if done:
                done[-1]["end"] = len(records)
                for reason, n in sink.skips.counts.items():
                    done[-1]["skipped"][reason] = done[-1]["skipped"].get(reason, 0) + n
                _save_journal(out, fingerprint, done)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    return done


def _resume(out: Path, prefix: str, fingerprint: dict) -> list[dict]:
    """Complete shards of an earlier run with the same arguments; everything else is removed."""
    for tmp in out.glob(f".{prefix}-*.tar.tmp"):
        tmp.unlink()
    journal = out / JOURNAL
    done: list[dict] = []
    if journal.is_file():
        state = json.loads(journal.read_text())
        if state.get("fingerprint") == fingerprint:
            for entry in state["shards"]:
                path = out / entry["url"]
                if (
                    not path.is_file()
                    or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]
                ):
                    break
                done.append(entry)
    keep = {e["url"] for e in done}
    for stale in out.glob(f"{prefix}-*.tar"):
        if stale.name not in keep:
            stale.unlink()
    return done


def _save_journal(out: Path, fingerprint: dict, done: list[dict]) -> None:
    write_json_atomic(out / JOURNAL, {"fingerprint": fingerprint, "shards": done})


def write_manifest(
    out: Path, dataset: str, split: str, arguments: dict, shards: list[dict], skips: Skips
) -> Path:
    """``manifest.json``: everything a reader or a verifier needs to trust the split."""
    manifest = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "split": split,
        "arguments": arguments,
        "num_samples": sum(s["nsamples"] for s in shards),
        "num_bytes": sum(s["filesize"] for s in shards),
        "shardlist": [
            {k: s[k] for k in ("url", "nsamples", "filesize", "md5sum", "sha256")} for s in shards
        ],
        "skipped": skips.counts,
        "skipped_examples": skips.examples,
        "keypoint_layout": list(UNIFIED),
        "crop": {
            "context": CROP_CONTEXT,
            "max_size": CROP_MAX,
            "box_extent": BOX_EXTENT,
            "convention": "200px",
        },
        "members": {
            "jpg": "RGB crop",
            "npz": {k: [list(shape), np.dtype(dt).name] for k, (shape, dt) in NPZ_FIELDS.items()},
            "png": "part labels 0..24 (0 background)",
            "json": "provenance",
        },
    }
    return write_json_atomic(out / MANIFEST, manifest, indent=1)
