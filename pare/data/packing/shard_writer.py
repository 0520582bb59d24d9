"""Write samples into WebDataset tar shards: globally shuffled, reproducible, resumable.

- The sample order is a seeded permutation of all records, so no shard is a single sequence.
- Tar members have fixed metadata (mtime, owner, mode) and a fixed order, so the same inputs
  give byte-identical shards.
- A shard is written under a temporary name and renamed when complete; a journal
  (``.progress.json``) records each completed shard, its record range and sha256. A rerun after
  a kill keeps the complete shards that still match, removes partial ones and continues.
- Samples are built in worker processes (ordered ``imap``), written by the main process.
- ``manifest.json`` describes the split: counts, bytes, sha256 per shard, skips by reason, the
  joint layout and crop parameters, the identity of the body model that made the ground truth,
  and a ``shardlist`` in the wids index format.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import tarfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from tqdm import tqdm

from pare.body.joints import KEYPOINTS_49
from pare.data.fields import NPZ_FIELDS, SCHEMA_VERSION
from pare.data.packing.readers import FILTERS, Skips
from pare.data.packing.samples import (
    BOX_EXTENT,
    STORED_CROP_CONTEXT,
    STORED_CROP_MAX,
    SampleError,
)
from pare.io_utils import leftover_temporaries, write_json_atomic

TAR_MTIME = 1_600_000_000  # fixed member mtime: reproducible bytes
MEMBER_ORDER = ("jpg", "json", "npz", "png")
JOURNAL = ".progress.json"
MANIFEST = "manifest.json"
LOCK = ".pack.lock"


@dataclass
class ShardOptions:
    maxcount: int = 1000
    maxsize: int = 256 * 1024 * 1024  # bytes
    workers: int = 1
    seed: int = 0
    strict: bool = False
    progress: bool = True
    # Array jobs: build slice ``slice_index`` of ``num_slices`` (see write_slice), or with
    # ``merge`` turn the complete slices into the shards and manifest.
    slice_index: int | None = None
    num_slices: int = 1
    merge: bool = False
    # The stored crop's side at most (px): see pare.data.packing.samples.STORED_CROP_MAX.
    stored_crop_max: int = STORED_CROP_MAX


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
    parser.add_argument(
        "--slice", type=int, metavar="I", help="build only slice I of --num-slices (array jobs)"
    )
    parser.add_argument("--num-slices", type=int, default=1, metavar="N")
    parser.add_argument(
        "--merge", action="store_true", help="write shards + manifest from N complete slices"
    )
    parser.add_argument(
        "--stored-crop-max",
        type=int,
        default=STORED_CROP_MAX,
        metavar="PX",
        help=f"side of the stored crops at most (default {STORED_CROP_MAX}: PARE's 224 px input "
        "is then never upsampled from them at augmentation scale 0.75)",
    )


def shard_options(args) -> ShardOptions:
    if args.num_slices < 1:
        raise SystemExit("error: --num-slices must be at least 1")
    if args.merge and args.slice is not None:
        raise SystemExit("error: --merge and --slice exclude each other")
    if args.slice is not None and not 0 <= args.slice < args.num_slices:
        raise SystemExit(f"error: --slice must be in 0..{args.num_slices - 1} (--num-slices)")
    if args.stored_crop_max < 8:
        raise SystemExit("error: --stored-crop-max must be at least 8 (pixels)")
    return ShardOptions(
        args.maxcount,
        int(args.maxsize_mb * 1024 * 1024),
        max(1, args.workers),
        args.seed,
        args.strict,
        not args.no_progress,
        args.slice,
        args.num_slices,
        args.merge,
        args.stored_crop_max,
    )


class PackError(RuntimeError):
    """Packing stopped (``--strict`` and a sample had to be skipped, or inconsistent state)."""


class _StartFailure:
    """A worker could not make its sample builder (a wrong body-model folder, a truncated EFT
    file): returned in place of every result so that the main process raises ``error``. Raised
    in the initializer instead, the pool would restart the dying worker forever."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


# Worker-process state: the sample builder, made once per process by the initializer.
_BUILDER: Callable[[Any], dict[str, bytes]] | None = None
_START_FAILURE: _StartFailure | None = None


def _init_worker(factory: Callable[[], Callable[[Any], dict[str, bytes]]]) -> None:
    global _BUILDER, _START_FAILURE
    try:
        _BUILDER = factory()
    except Exception as e:  # carried back to the main process: see _StartFailure
        _START_FAILURE = _StartFailure(e)


def _build(record: Any) -> dict[str, bytes] | SampleError | _StartFailure:
    if _START_FAILURE is not None:
        return _START_FAILURE
    assert _BUILDER is not None
    # One torch thread: float results (body model, joints) can differ in the last bit between
    # thread counts, and shards must be byte-identical wherever they are packed (a laptop, a
    # cluster node, an array task). Packing parallelism comes from worker processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _BUILDER(record)
    except SampleError as e:
        return e
    finally:
        torch.set_num_threads(threads)


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _add_sample(tar: tarfile.TarFile, sample: dict[str, bytes]) -> None:
    """A sample's members, adjacent and in MEMBER_ORDER (WebDataset groups them by key)."""
    for ext in MEMBER_ORDER:
        if ext in sample:
            _tar_member(tar, f"{sample['__key__']}.{ext}", sample[ext])


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
        _add_sample(self.tar, sample)
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
            # The examples too: a rerun rebuilds the manifest from the journal, byte for byte.
            "skipped_examples": self.skips.examples,
        }


def _build_all(todo: list, builder_factory, options: ShardOptions):
    """Build ``todo`` in order (in worker processes when asked); (results iterator, pool)."""
    if options.workers > 1 and todo:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        pool = ctx.Pool(options.workers, initializer=_init_worker, initargs=(builder_factory,))
        return pool.imap(_build, todo, chunksize=4), pool
    global _BUILDER
    _BUILDER = builder_factory()  # in this process: a failure raises here
    return map(_build, todo), None


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
        skips.merge(_entry_skips(entry))
    results, pool = _build_all([records[i] for i in order[start:]], builder_factory, options)
    try:
        return _write_results(
            results, start, len(records), out, prefix, options, fingerprint, done, skips
        )
    finally:
        if pool is not None:
            pool.terminate()


def _write_results(
    results,
    start: int,
    total: int,
    out: Path,
    prefix: str,
    options: ShardOptions,
    fingerprint: dict,
    done: list[dict],
    skips: Skips,
) -> list[dict]:
    """Write built samples (or SampleErrors) for positions ``start..total`` of the global order
    into shards after ``done``, journalling each completed shard."""
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"packing {prefix}",
        unit="sample",
        disable=not options.progress,
    )
    sink: _ShardSink | None = None
    try:
        for position, result in enumerate(results, start=start):
            if isinstance(result, _StartFailure):
                raise result.error
            if sink is None:
                sink = _ShardSink(out, f"{prefix}-{len(done):06d}.tar", position)
            if isinstance(result, SampleError):
                skips.add(result.reason, str(result))  # raises under --strict (not a filter)
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
            done.append(sink.close(total))
            _save_journal(out, fingerprint, done)
        elif sink is not None:  # only skips since the last shard: extend the last one's range
            sink.tar.close()
            sink.file.close()
            sink.tmp.unlink()
            if done:
                done[-1]["end"] = total
                last = _entry_skips(done[-1])
                last.merge(sink.skips)
                done[-1]["skipped"], done[-1]["skipped_examples"] = last.counts, last.examples
                _save_journal(out, fingerprint, done)
    finally:
        bar.close()
    return done


# ----------------------------------------------------------------------------- slices
# A cluster packs a split as an array job: task i of n builds slice i of the global order (the
# same seeded permutation) into SLICES/, and a merge step streams the slices, in order, through
# the same shard writer. Shard boundaries depend on every earlier sample (skips, sizes), so
# only the merge can cut shards; it copies bytes and rebuilds nothing, and its shards and
# manifest are those of a single process.

SLICES = ".slices"


def slice_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """Positions [start, end) of slice ``index`` of ``count`` over ``total`` records."""
    if not 0 <= index < count:
        raise ValueError(f"slice {index} does not exist: slices are numbered 0..{count - 1}")
    return total * index // count, total * (index + 1) // count


def _slice_paths(out: Path, prefix: str, index: int, count: int) -> tuple[Path, Path]:
    stem = out / SLICES / f"{prefix}-slice-{index:04d}-of-{count:04d}"
    return stem.with_suffix(".tar"), stem.with_suffix(".json")


def write_slice(
    records: Sequence[Any],
    builder_factory: Callable[[], Callable[[Any], dict[str, bytes]]],
    out: Path,
    prefix: str,
    options: ShardOptions,
    fingerprint: dict,
    index: int,
    count: int,
) -> dict:
    """Build slice ``index`` of ``count`` of the shuffled records into ``out/.slices/``: a tar of
    its samples and a JSON of every position (a key or a skip). The JSON, written last, marks the
    slice complete; a rerun rewrites the slice."""
    order = np.random.default_rng(options.seed).permutation(len(records))
    start, end = slice_bounds(len(records), index, count)
    tar_path, json_path = _slice_paths(out, prefix, index, count)
    tar_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.unlink(missing_ok=True)
    results, pool = _build_all([records[i] for i in order[start:end]], builder_factory, options)
    entries = []
    tmp = tar_path.with_name(f".{tar_path.name}.tmp")
    bar = tqdm(
        total=end - start, desc=f"slice {index}", unit="sample", disable=not options.progress
    )
    try:
        with (
            tmp.open("wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for result in results:
                if isinstance(result, SampleError):
                    if options.strict and result.reason not in FILTERS:
                        raise PackError(f"--strict: {result}")
                    entries.append({"skip": result.reason, "detail": result.detail})
                else:
                    entries.append({"key": result["__key__"]})
                    _add_sample(tar, result)
                bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    tmp.replace(tar_path)
    state = {"fingerprint": fingerprint, "start": start, "end": end, "entries": entries}
    write_json_atomic(json_path, state)
    return {
        "slice": str(tar_path),
        "start": start,
        "end": end,
        "samples": sum("key" in e for e in entries),
    }


def _slice_results(tar_path: Path, entries: list[dict]):
    """The slice's positions in order: sample dicts from the tar, SampleErrors for skips."""
    with tarfile.open(tar_path) as tar:
        members = iter(tar)
        pending = next(members, None)
        for entry in entries:
            if "skip" in entry:
                yield SampleError(entry["skip"], entry["detail"])
                continue
            sample = {"__key__": entry["key"]}
            while pending is not None and pending.name.split(".", 1)[0] == entry["key"]:
                sample[pending.name.split(".", 1)[1]] = tar.extractfile(pending).read()
                pending = next(members, None)
            yield sample


def merge_slices(
    out: Path,
    prefix: str,
    options: ShardOptions,
    fingerprint: dict,
    count: int,
    total: int,
    skips: Skips,
) -> list[dict]:
    """Write the shards of ``count`` complete slices, as one process would have; then remove
    the slices. Missing or mismatched slices raise :class:`PackError` naming them. A merge
    killed after its last shard (while removing the slices) finishes from its journal."""
    done = _resume(out, prefix, fingerprint)
    if done and done[-1]["end"] == total:
        for entry in done:
            skips.merge(_entry_skips(entry))
        _remove_slices(out, prefix, count)
        return done
    states = []
    for index in range(count):
        tar_path, json_path = _slice_paths(out, prefix, index, count)
        if not json_path.is_file() or not tar_path.is_file():
            raise PackError(
                f"slice {index} of {count} is missing or incomplete ({json_path}): rerun that "
                f"slice (--slice {index} --num-slices {count}) before merging"
            )
        state = json.loads(json_path.read_text())
        if state["fingerprint"] != fingerprint:
            raise PackError(
                f"slice {index} was packed with other arguments ({json_path}); pack every slice "
                "with the same arguments as the merge"
            )
        expected = slice_bounds(total, index, count)
        if (state["start"], state["end"]) != expected:
            raise PackError(
                f"slice {index} covers {state['start']}..{state['end']}, not {expected}"
            )
        states.append((tar_path, state))
    # A fresh set of shards: any earlier shards or journal of this prefix go.
    (out / JOURNAL).unlink(missing_ok=True)
    done = _resume(out, prefix, {"merge": True})

    def results():
        for tar_path, state in states:
            yield from _slice_results(tar_path, state["entries"])

    done = _write_results(results(), 0, total, out, prefix, options, fingerprint, done, skips)
    _remove_slices(out, prefix, count)
    return done


def _remove_slices(out: Path, prefix: str, count: int) -> None:
    for index in range(count):
        for path in _slice_paths(out, prefix, index, count):
            path.unlink(missing_ok=True)
    try:
        (out / SLICES).rmdir()
    except OSError:
        pass  # slices of another prefix or count are still there


def _entry_skips(entry: dict) -> Skips:
    """The skips a journalled shard recorded; journals written before the examples were kept
    name the shard instead."""
    examples = entry.get("skipped_examples")
    if examples is None:
        examples = {reason: [f"(in {entry['url']})"] for reason in entry["skipped"]}
    return Skips(dict(entry["skipped"]), {k: list(v) for k, v in examples.items()})


@contextmanager
def pack_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.pack.lock`` while writing shards, journal and manifest: two packers writing
    one folder would interleave shards and journal. Raises :class:`PackError` at once if
    another packer holds it (the lock goes with its process, so a killed packer never leaves
    the folder locked)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / LOCK)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PackError(
            f"another packer is writing {out} (it holds {out / LOCK}); wait for it to finish, "
            "or pack into another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def start_writing(out: Path) -> None:
    """Before shards change: remove the manifest (written last, it marks a finished pack, so a
    killed repack never leaves an old manifest beside new shards) and temporary files a killed
    run left (:func:`pare.io_utils.leftover_temporaries`)."""
    (out / MANIFEST).unlink(missing_ok=True)
    for tmp in leftover_temporaries(out / MANIFEST) + leftover_temporaries(out / JOURNAL):
        tmp.unlink()


def _resume(out: Path, prefix: str, fingerprint: dict) -> list[dict]:
    """Complete shards of an earlier run with the same arguments; everything else is removed."""
    start_writing(out)
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
    out: Path,
    dataset: str,
    split: str,
    arguments: dict,
    shards: list[dict],
    skips: Skips,
    body_model: dict,
    extra: dict | None = None,
) -> Path:
    """``manifest.json``: everything a reader or a verifier needs to trust the split.
    ``body_model`` is the identity (:func:`pare.body.body_model_identity`) of the body model
    used; training checks it against its own. ``extra`` adds dataset-specific top-level blocks
    (MPII: ``validation``, ``eft``)."""
    manifest = {
        "__kind__": "wids-shard-index-v1",
        "wids_version": 1,
        "schema_version": SCHEMA_VERSION,
        "dataset": dataset,
        "split": split,
        "arguments": arguments,
        "body_model": body_model,
        "num_samples": sum(s["nsamples"] for s in shards),
        "num_bytes": sum(s["filesize"] for s in shards),
        "shardlist": [
            {k: s[k] for k in ("url", "nsamples", "filesize", "md5sum", "sha256")} for s in shards
        ],
        "skipped": skips.counts,
        "skipped_examples": skips.examples,
        "keypoint_layout": list(KEYPOINTS_49),
        "crop": {
            "context": STORED_CROP_CONTEXT,
            "max_size": arguments.get("stored_crop_max", STORED_CROP_MAX),
            "box_extent": BOX_EXTENT,
            "convention": "200px",
        },
        "members": {
            "jpg": "RGB crop",
            "npz": {k: [list(shape), np.dtype(dt).name] for k, (shape, dt) in NPZ_FIELDS.items()},
            "png": "part labels 0..24 (0 background)",
            "json": "provenance",
        },
    } | (extra or {})
    return write_json_atomic(out / MANIFEST, manifest, indent=1)
