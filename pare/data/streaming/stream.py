"""Training and evaluation streams over packed shards.

Training: per dataset, resampled shards (split by node and worker), a shuffle buffer of
still-encoded samples, then decode (simplejpeg) and augment; datasets are mixed by weight and
batched in the workers. Every rank yields exactly ``steps_per_epoch`` batches, so DDP never
waits on a rank that ran out. Seeds derive from (seed, epoch, rank, worker): a run is
reproducible, and a resumed run at a new epoch sees fresh samples.

Evaluation: every sample exactly once across all ranks and workers, in a deterministic order.

Shard locations are anything webdataset opens (local paths, ``pipe:`` commands, http(s), gs)
plus every fsspec protocol (s3://, gcs://, az://, memory://, ...), registered here with
webdataset's opener.
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import multiprocessing
import os
import random
import re
import signal
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import numpy as np
import simplejpeg
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.gopen import gopen_schemes

from pare.body import BodyModelMismatch, body_model_identity, describe_identity
from pare.data.fields import BATCH_FIELDS, check_schema_version
from pare.data.packing.shard_writer import JOURNAL
from pare.data.streaming.augment import AugmentParams, augment, draw_params
from pare.data.streaming.batch import collate

if TYPE_CHECKING:
    from pare.config import AugmentConfig, DataConfig, DatasetSource


@dataclass
class ShardSource:
    """One dataset of the mix, resolved: its shard URLs and its sampling weight (the config's
    :class:`pare.config.DatasetSource` before its path is expanded)."""

    urls: list[str]
    weight: float = 1.0
    label: str = ""  # how errors name the dataset (its config path); "" = its first URL

    def name(self) -> str:
        return self.label or (self.urls[0] if self.urls else "?")


log = logging.getLogger("pare.data")


class NoReadableShards(RuntimeError):
    """Every shard of a training source failed to open: the stream would wait forever."""


class BadSamples(RuntimeError):
    """More unreadable samples than ``data.max_bad_samples`` in one loader process (for
    evaluation, which needs every sample: any)."""


class DamagedManifest(ValueError):
    """A split's ``manifest.json`` that is not readable JSON (a truncated copy)."""


def _read_manifest(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedManifest(
            f"{path} is not readable JSON ({e}); the split's manifest is truncated or damaged: "
            "copy the split folder again or repack it"
        ) from None


class ShardsDisagree(DamagedManifest):
    """A split folder whose shard files are not the ones its manifest lists: another pack's (an
    interrupted repack), or cut short."""


def _check_shard_files(manifest: Path, shardlist: list[dict]) -> None:
    """Every shard ``manifest`` lists exists beside it with the listed size (one stat each; a
    full sha256 check is ``shards/verify.py``'s). Raises FileNotFoundError for missing shards and
    :class:`ShardsDisagree` for a size that differs, naming the first."""
    missing, wrong = [], []
    for shard in shardlist:
        path = manifest.parent / shard["url"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            missing.append(path)
            continue
        if "filesize" in shard and size != shard["filesize"]:
            wrong.append((path, size, shard["filesize"]))
    if missing:
        what = (
            f"none of the {len(shardlist)} shards"
            if len(missing) == len(shardlist)
            else f"{len(missing)} of the {len(shardlist)} shards"
        )
        raise FileNotFoundError(
            f"{what} listed in {manifest} exist (e.g. {missing[0]}); copy the split folder "
            "again or repack it (shards/pack_*.py)"
        )
    if wrong:
        path, size, listed = wrong[0]
        raise ShardsDisagree(
            f"{path} is {size} bytes but {manifest} lists {listed} ({len(wrong)} such shards): "
            "the shards and the manifest come from different packs (an interrupted repack?) or "
            "were cut short; rerun the packer to finish, or repack"
        )


class UnreadableShard(RuntimeError):
    """An evaluation shard that cannot be opened or read to its end."""


def _shard_error(error: Exception) -> tuple[str, str]:
    """(url, "Type: first argument") of an exception webdataset hands its handlers: it appends
    the shard's URL to the arguments of what reading the shard raised."""
    url = next((a for a in reversed(error.args) if isinstance(a, str)), "?")
    return url, f"{type(error).__name__}: {error.args[0] if error.args else ''}"


def _eval_shard_error(error: Exception) -> bool:
    """webdataset's handler for evaluation: every sample counts, so a shard that cannot be read
    stops evaluation, naming it."""
    url, what = _shard_error(error)
    raise UnreadableShard(
        f"evaluation shard {url} cannot be read ({what}); check it with shards/verify.py and "
        "repack it"
    )


def _open_with_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    return fsspec.open(url, mode).open()


def register_fsspec_protocols() -> None:
    """Let webdataset open every URL scheme fsspec knows and webdataset itself does not (it
    raises "unknown URL scheme" for s3:// and the like). Called on import."""
    for protocol in fsspec.available_protocols():
        gopen_schemes.setdefault(protocol, _open_with_fsspec)


register_fsspec_protocols()


def _is_fsspec_url(path: str) -> bool:
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme in fsspec.available_protocols() and scheme != "file"


def shard_urls(path: str) -> list[str]:
    """A split folder (its manifest.json), a manifest file, a brace pattern or a single URL.

    Manifests on object storage (``s3://bucket/3dpw/train/manifest.json``, or the folder) are read
    with fsspec and their shard names resolved beside them."""
    if _is_fsspec_url(path):
        manifest = path if path.endswith(".json") else path.rstrip("/") + "/manifest.json"
        fs, fs_path = fsspec.core.url_to_fs(manifest)
        if fs.exists(fs_path):
            with fsspec.open(manifest, "rt") as f:
                data = json.load(f)
            check_schema_version(data, manifest)
            base = manifest.rsplit("/", 1)[0]
            return [f"{base}/{s['url']}" for s in data["shardlist"]]
        if not path.endswith(".tar") and "{" not in path:
            raise FileNotFoundError(f"{manifest} not found; pack the split and upload its folder")
        return list(wds.shardlists.expand_urls(path))
    p = Path(path)
    manifest = p / "manifest.json" if p.is_dir() else p
    if manifest.suffix == ".json" and manifest.is_file():
        data = _read_manifest(manifest)
        check_schema_version(data, str(manifest))
        _check_shard_files(manifest, data["shardlist"])
        return [str(manifest.parent / s["url"]) for s in data["shardlist"]]
    if p.is_dir() and (p / JOURNAL).is_file():
        # The packer removes the manifest when it starts and writes it last.
        raise FileNotFoundError(
            f"{p} has no manifest.json: its packing did not finish ({JOURNAL} is there); rerun "
            "the same packer command to complete it"
        )
    if p.is_dir():
        raise FileNotFoundError(f"{p} has no manifest.json; pack it with shards/pack_*.py first")
    local = ":" not in path.split("/", 1)[0] and "{" not in path
    if local and not p.exists():
        raise FileNotFoundError(
            f"{p} not found: pass a packed split folder (with manifest.json), a manifest, shard "
            "files, a brace pattern or URLs"
        )
    return list(wds.shardlists.expand_urls(str(path)))


def check_body_model(split_paths: list[str], model_path: str) -> None:
    """Stop before training or evaluating on shards whose ground truth another body model made.

    Each local split folder or manifest in ``split_paths`` names the body model it was packed
    with; it must be ``model_path``'s (same files, compared by
    :func:`pare.body.body_model_identity`). URLs, shard patterns and manifest-less paths are
    skipped. A manifest written before packers recorded the body model only warns (repack it).
    Raises :class:`pare.body.BodyModelMismatch` naming both models (a ConfigError).
    """
    ours = None
    for path in split_paths:
        if _is_fsspec_url(path):
            continue
        p = Path(path)
        manifest = p / "manifest.json" if p.is_dir() else p
        if manifest.suffix != ".json" or not manifest.is_file():
            continue
        data = _read_manifest(manifest)
        check_schema_version(data, str(manifest))  # an old format's fix is a repack, say so first
        recorded = data.get("body_model")
        if recorded is None:
            warnings.warn(
                f"{manifest} does not record the body model it was packed with; repack it "
                "(shards/pack_*.py) so a mismatch with body.model_path can be caught",
                stacklevel=2,
            )
            continue
        ours = ours or body_model_identity(model_path)
        if recorded["sha256"] != ours["sha256"]:
            if recorded["path"] == ours["path"]:
                # Same name, other files (a newer stand-in, replaced SMPL files): naming the
                # path as the fix would send the user in a circle.
                fix = (
                    f"the files of '{ours['path']}' changed since packing; repack the split "
                    "(synthetic data: regenerate it first, shards/make_synthetic.py)"
                )
            else:
                fix = (
                    "repack the split with that body model or set "
                    f"body.model_path={recorded['path']}"
                )
            raise BodyModelMismatch(
                f"{path} was packed with {describe_identity(recorded)}, but body.model_path is "
                f"{describe_identity(ours)}; {fix}"
            )


def rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


def decode_sample(raw: dict) -> dict:
    """Shard members -> arrays: ``image`` (s, s, 3) uint8 for the stored size s, ``parts``
    (s/2, s/2) uint8 or None, and the npz fields."""
    image = simplejpeg.decode_jpeg(raw["jpg"], colorspace="RGB", fastdct=True, fastupsample=True)
    sample = {"__key__": raw["__key__"], "image": image}
    sample["parts"] = np.asarray(Image.open(io.BytesIO(raw["png"]))) if "png" in raw else None
    sample.update(read_npz(raw["npz"]))
    return sample


_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...]]] = {}
_HEADER_RE = re.compile(
    rb"'descr':\s*'([^']+)',\s*'fortran_order':\s*False,\s*'shape':\s*\(([^)]*)\)"
)


def read_npz(data: bytes) -> dict[str, np.ndarray]:
    """Arrays of an uncompressed npz, read straight from the zip's local headers.

    np.load spends most of a sample's decoding time in zipfile bookkeeping and in evaluating the
    text header of every array; packed samples repeat the same dozen headers, so they are parsed
    once and cached. Anything unusual (compression, data descriptors, Fortran order) falls back
    to np.load (allow_pickle=False).
    """
    out, pos = {}, 0
    while data[pos : pos + 4] == b"PK\x03\x04":
        flags, method = struct.unpack_from("<HH", data, pos + 6)
        name_len, extra_len = struct.unpack_from("<HH", data, pos + 26)
        start = pos + 30 + name_len + extra_len
        if (
            method != 0
            or flags & 0x08
            or data[start : start + 6] != b"\x93NUMPY"
            or data[start + 6] != 1
        ):
            return _np_load(data)
        header_len = int.from_bytes(data[start + 8 : start + 10], "little")
        header = data[start + 10 : start + 10 + header_len]
        parsed = _NPY_HEADERS.get(header)
        if parsed is None:
            match = _HEADER_RE.search(header)
            if match is None:
                return _np_load(data)
            shape = tuple(int(v) for v in match.group(2).split(b",") if v.strip())
            parsed = _NPY_HEADERS.setdefault(header, (np.dtype(match.group(1).decode()), shape))
        dtype, shape = parsed
        count = int(np.prod(shape, dtype=np.int64))
        offset = start + 10 + header_len
        name = data[pos + 30 : pos + 30 + name_len].decode()
        out[name.removesuffix(".npy")] = np.frombuffer(data, dtype, count, offset).reshape(shape)
        pos = offset + count * dtype.itemsize
    return out if out else _np_load(data)


def _np_load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def to_item(sample: dict, dataset_index: int) -> dict:
    """An augmented sample -> the per-sample arrays of the batch contract
    (:data:`pare.data.fields.BATCH_FIELDS`); raises KeyError for a missing required field."""
    made = {
        "__key__": sample["__key__"],
        "has_part_labels": sample.get("parts") is not None,
        "dataset": dataset_index,
    }
    item = {"__key__": made["__key__"]}
    for field in BATCH_FIELDS:
        if field.name in made:
            item[field.name] = made[field.name]
        elif field.default is not None:  # shards packed before the field existed lack it
            item[field.name] = sample.get(field.name, field.default)
        else:
            item[field.name] = sample[field.name]
    return item


class DecodeAugment:
    """Picklable map: decode, augment with a per-(rank, worker) generator, convert."""

    def __init__(
        self,
        augment_cfg: AugmentConfig | None,
        dataset_index: int,
        seed: int,
        crop_size: int,
        train: bool,
        max_bad_samples: int = 0,
    ):
        self.cfg, self.index, self.seed = augment_cfg, dataset_index, seed
        self.crop_size, self.train = crop_size, train
        self.max_bad_samples, self.bad_samples = max_bad_samples, 0
        self._rng: np.random.Generator | None = None

    def __call__(self, raw: dict) -> dict | None:
        if self._rng is None:
            rank, _ = rank_and_world()
            self._rng = np.random.default_rng(_seed(self.seed, rank, _worker()[0], self.index))
        try:
            sample = decode_sample(raw)
        except Exception as e:  # a damaged sample: skipped and counted (see _skip)
            return self._skip(raw, e)
        params = draw_params(self._rng, self.cfg) if self.train else AugmentParams()
        return to_item(augment(sample, params, self.crop_size), self.index)

    def _skip(self, raw: dict, error: Exception) -> None:
        """Skip a sample that does not decode (a corrupt JPEG, a member lost to a truncated
        shard), naming its shard and key; past ``max_bad_samples`` in this process, stop. A
        crash here would replay on every resume: the stream is deterministic."""
        self.bad_samples += 1
        where = f"{raw.get('__url__', '?')}, sample {raw.get('__key__', '?')}"
        why = f"{type(error).__name__}: {error}"
        if self.bad_samples > self.max_bad_samples:
            raise BadSamples(
                f"{self.bad_samples} unreadable samples in one loader process, more than "
                f"data.max_bad_samples={self.max_bad_samples}; the last: {where} ({why}). "
                "Check the splits with shards/verify.py and repack the damaged ones"
            ) from error
        log.warning(
            "skipping an unreadable sample (%d so far): %s (%s)", self.bad_samples, where, why
        )
        return None


class _ShardFailures:
    """webdataset's handler for shards that fail to open or read: warn once per shard, go on
    with the others, and stop naming the source when every one of its shards has failed
    (resampling would otherwise retry them forever and the run would never take a step)."""

    def __init__(self, source: ShardSource) -> None:
        self.source, self.failed = source, {}

    def __call__(self, error: Exception) -> bool:
        url, what = _shard_error(error)
        if url not in self.failed:
            self.failed[url] = what
            log.warning("cannot read shard %s (%s); using the others", url, self.failed[url])
        if set(self.source.urls) <= set(self.failed):
            example = next(iter(self.failed.items()))
            raise NoReadableShards(
                f"no shard of {self.source.name()} can be read ({len(self.source.urls)} tried; "
                f"e.g. {example[0]}: {example[1]}); check the split with shards/verify.py"
            )
        return True


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: loader workers ignore SIGTERM, SIGINT and SIGUSR1. A
    process-group signal (``timeout``, ``kill -TERM -PGID``, SLURM job steps) reaches them too;
    dying first, they would crash the trainer before it saves. The main process decides, and
    stops them when it exits (:func:`_kill_loader_workers`)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)


def _kill_loader_workers() -> None:
    """At exit, SIGKILL the loader workers still running (daemonic children). multiprocessing's
    own exit hook would SIGTERM them, which they ignore, and then wait forever; registered
    later, this hook runs first. (PyTorch's SIGCHLD handler, which reports a killed worker as
    an error, is reset first: here the kill is the intent.)"""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


_EXIT_HOOK: list[bool] = []


def _register_exit_hook() -> None:
    if not _EXIT_HOOK:
        atexit.register(_kill_loader_workers)
        _EXIT_HOOK.append(True)


class _WorkerSeed:
    """ResampledShards' worker seed: distinct per (rank, worker), fixed per run and epoch."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self) -> int:
        return _seed(self.seed, rank_and_world()[0], _worker()[0])


def _samples_from_shards(cache_dir: str, handler=wds.warn_and_continue) -> list:
    """Pipeline stages from shard URLs to samples; with ``cache_dir``, remote shards (URLs,
    ``pipe:`` commands) are downloaded there once and read locally afterwards. ``handler``
    gets every shard-level error."""
    if not cache_dir:
        return [wds.tarfile_to_samples(handler=handler)]
    return [
        wds.cache.FileCache(cache_dir, handler=handler),
        wds.filters.pipelinefilter(wds.tariterators.tar_file_expander)(handler=handler),
        wds.filters.pipelinefilter(wds.tariterators.group_by_keys)(handler=handler),
    ]


def _dataset_pipeline(
    source: ShardSource, index: int, cfg: DataConfig, seed: int
) -> wds.DataPipeline:
    return wds.DataPipeline(
        wds.ResampledShards(
            source.urls, seed=seed, worker_seed=_WorkerSeed(seed), deterministic=True
        ),
        *_samples_from_shards(cfg.cache_dir, _ShardFailures(source)),
        wds.shuffle(
            cfg.shuffle_buffer,
            initial=min(cfg.shuffle_buffer, 100),
            rng=random.Random(seed + index),
        ),
        wds.map(
            DecodeAugment(
                cfg.augment,
                index,
                seed,
                cfg.crop_size,
                train=True,
                max_bad_samples=cfg.max_bad_samples,
            )
        ),
    )


class WeightedMix(IterableDataset):
    """Draw each next sample from dataset i with probability weight_i (seeded per worker)."""

    def __init__(self, datasets: list, weights: list[float], seed: int) -> None:
        self.datasets, self.weights, self.seed = datasets, np.asarray(weights, float), seed

    def __iter__(self):
        rng = np.random.default_rng(_seed(self.seed, rank_and_world()[0], _worker()[0], 7))
        iterators = [iter(d) for d in self.datasets]
        probs = self.weights / self.weights.sum()
        while True:
            yield next(iterators[rng.choice(len(iterators), p=probs)])


def sources_from_config(entries: list[DatasetSource]) -> list[ShardSource]:
    """``data.train`` / ``data.val`` entries ({path, weight}) -> stream sources. Raises
    FileNotFoundError naming a source with a local shard file that does not exist, and
    :class:`ShardsDisagree` for a split whose shards are not its manifest's (see
    :func:`shard_urls`): training on part of a split, or on another pack's shards, would be
    silent."""
    sources = []
    for entry in entries:
        urls = shard_urls(entry.path)
        local = [u for u in urls if ":" not in u.split("/", 1)[0] and "{" not in u]
        missing = [u for u in local if not Path(u).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of the {len(urls)} shards of {entry.path} do not exist (e.g. "
                f"{missing[0]}); fix data.train/data.val or repack the split"
            )
        sources.append(ShardSource(urls, entry.weight, entry.path))
    return sources


def train_loader(
    sources: list[ShardSource], cfg: DataConfig, steps_per_epoch: int, epoch: int = 0, seed: int = 0
) -> wds.WebLoader:
    """Endless resampled mix, cut to exactly ``steps_per_epoch`` batches on every rank.

    ``cfg`` is a :class:`pare.config.DataConfig`; build a new loader per epoch.
    """
    epoch_seed = _seed(seed, epoch)
    datasets = [_dataset_pipeline(s, i, cfg, _seed(epoch_seed, i)) for i, s in enumerate(sources)]
    mixed = wds.DataPipeline(
        WeightedMix(datasets, [s.weight for s in sources], epoch_seed),
        wds.batched(cfg.batch_size, collation_fn=collate, partial=False),
    )
    loader = wds.WebLoader(
        mixed,
        batch_size=None,
        num_workers=cfg.num_workers,
        persistent_workers=False,
        pin_memory=False,
        worker_init_fn=ignore_stop_signals if cfg.num_workers else None,
    )
    if cfg.num_workers:
        _register_exit_hook()
    return loader.with_epoch(steps_per_epoch)


class EvalSamples(IterableDataset):
    """Each sample of ``urls`` exactly once across ranks and workers (slot = index mod total)."""

    def __init__(
        self,
        urls: list[str],
        crop_size: int = 224,
        dataset_index: int = 0,
    ) -> None:
        self.urls = urls
        self.convert = DecodeAugment(None, dataset_index, 0, crop_size, train=False)

    def __iter__(self):
        rank, world = rank_and_world()
        worker, workers = _worker()
        slot, total = rank * workers + worker, world * workers
        samples = wds.DataPipeline(
            wds.SimpleShardList(self.urls), wds.tarfile_to_samples(handler=_eval_shard_error)
        )
        for index, raw in enumerate(samples):  # a fixed order: shards in list order, tar order
            if index % total == slot:
                yield self.convert(raw)


def eval_loader(
    urls: list[str],
    batch_size: int,
    num_workers: int = 0,
    crop_size: int = 224,
) -> torch.utils.data.DataLoader:
    """Batches of every sample of ``urls`` once (see :class:`EvalSamples`), unaugmented, images
    (B, 3, S, S) for S = ``crop_size`` and part labels (B, H, H) for H = S / 4."""
    dataset = EvalSamples(urls, crop_size)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate
    )


@dataclass
class StreamState:
    """What a checkpoint must hold for the stream to continue where it stopped: the epoch the
    current loader was built for, how many of its batches this rank has consumed, and the run's
    seed. A resumed run rebuilds that epoch's loader (deterministic per seed, epoch, rank and
    worker) and skips the consumed batches, so it trains on the samples it had not seen yet, in
    the order an uninterrupted run would have. train/train.py keeps it in the checkpoint's
    ``trainer_state.json``."""

    epoch: int = 0
    seed: int = 0
    batches: int = 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed, "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
        self.batches = int(state.get("batches", 0))
