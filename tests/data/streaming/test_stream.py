"""The training and evaluation streams: contract, balance across ranks, coverage, mixing."""

import json
import os
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from pare.config import load_config
from pare.data.streaming.batch import check_batch, normalize_images
from pare.data.streaming.stream import (
    ShardSource,
    StreamState,
    WeightedMix,
    eval_loader,
    shard_urls,
    sources_from_config,
    train_loader,
)
from pare.distributed import gather_per_sample
from tests.conftest import accelerate_launch


def _cfg(**overrides):
    args = [
        f"data.{k}={v}"
        for k, v in {"batch_size": 4, "num_workers": 0, "shuffle_buffer": 10, **overrides}.items()
    ]
    return load_config([], args).data


def _sources(packed):
    return [
        ShardSource(shard_urls(str(packed / "3dpw")), 0.6),
        ShardSource(shard_urls(str(packed / "mpii")), 0.4),
    ]


def _manifest_keys(folder):
    keys = []
    for shard in json.loads((folder / "manifest.json").read_text())["shardlist"]:
        with tarfile.open(folder / shard["url"]) as tar:
            keys += sorted({m.name.partition(".")[0] for m in tar})
    return keys


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_follow_the_contract_and_the_epoch_length(packed, workers):
    batches = list(train_loader(_sources(packed), _cfg(num_workers=workers), steps_per_epoch=7))
    assert len(batches) == 7
    for batch in batches:
        check_batch(batch)
        assert set(batch["dataset"].tolist()) <= {0, 1}
    images = normalize_images(batches[0]["image"])
    assert images.dtype.is_floating_point and abs(float(images.mean())) < 3


def test_mixing_ratio_over_10k_samples():
    mix = WeightedMix([iter(lambda: 0, 1), iter(lambda: 1, 2)], [0.6, 0.4], seed=3)
    draws = np.fromiter((next(it) for it in [iter(mix)] for _ in range(10_000)), int)
    assert abs(np.mean(draws == 0) - 0.6) < 0.02


def test_reproducible_within_an_epoch_fresh_across_epochs(packed):
    def keys(epoch):
        return [
            k
            for b in train_loader(_sources(packed), _cfg(), steps_per_epoch=4, epoch=epoch, seed=5)
            for k in b["__key__"]
        ]

    assert keys(0) == keys(0)
    assert keys(0) != keys(1)
    state = StreamState(epoch=3, seed=5)
    resumed = StreamState()
    resumed.load_state_dict(state.state_dict())
    assert resumed == state


def test_eval_covers_every_sample_once_on_2_ranks_x_2_workers(packed, monkeypatch):
    folder = packed / "3dpw_val"
    urls = shard_urls(str(folder))
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        for batch in eval_loader(urls, batch_size=3, num_workers=2):
            check_batch(batch)
            seen += batch["__key__"]
    assert sorted(seen) == sorted(_manifest_keys(folder))
    assert len(seen) == len(set(seen))
    # Deterministic order: the same rank sees the same keys in the same order again.
    monkeypatch.setenv("RANK", "1")
    again = [k for b in eval_loader(urls, batch_size=3, num_workers=2) for k in b["__key__"]]
    assert again == [k for k in seen if k in set(again)]


def test_pipe_urls_stream_too_and_can_be_cached(packed, tmp_path):
    urls = [f"pipe:cat {u}" for u in shard_urls(str(packed / "mpii"))]
    batch = next(iter(train_loader([ShardSource(urls)], _cfg(), steps_per_epoch=1)))
    check_batch(batch)
    cache = tmp_path / "cache"
    loader = train_loader([ShardSource(urls)], _cfg(cache_dir=str(cache)), steps_per_epoch=2)
    check_batch(next(iter(loader)))
    assert list(cache.rglob("*.tar"))  # remote shards were copied into the cache


def test_fsspec_urls_stream_manifest_and_shards(packed):
    import fsspec

    fs = fsspec.filesystem("memory")
    folder = packed / "mpii"
    fs.pipe("/bucket/mpii/manifest.json", (folder / "manifest.json").read_bytes())
    for shard in json.loads((folder / "manifest.json").read_text())["shardlist"]:
        fs.pipe(f"/bucket/mpii/{shard['url']}", (folder / shard["url"]).read_bytes())
    urls = shard_urls("memory://bucket/mpii")
    assert urls and all(u.startswith("memory://bucket/mpii/") for u in urls)
    batch = next(iter(train_loader([ShardSource(urls)], _cfg(), steps_per_epoch=1)))
    check_batch(batch)
    seen = [k for b in eval_loader(urls, batch_size=4) for k in b["__key__"]]
    assert sorted(seen) == sorted(_manifest_keys(folder))
    with pytest.raises(FileNotFoundError, match=r"manifest\.json not found"):
        shard_urls("memory://bucket/nothing")


def test_gathering_per_sample_results_refuses_double_counting():
    keys, values = gather_per_sample(["b", "a", "c"], {"err": np.array([2.0, 1.0, 3.0])})
    assert keys == ["a", "b", "c"]
    np.testing.assert_array_equal(values["err"], [1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="more than once"):
        gather_per_sample(["a", "a"], {"err": np.zeros(2)})
    with pytest.raises(ValueError, match="rows for 3 keys"):
        gather_per_sample(["a", "b", "c"], {"err": np.zeros(2)})


def test_sources_from_config(packed):
    cfg = load_config([], [f"data.train=[{{path: {packed / 'mpii'}, weight: 2.0}}]"]).data
    (source,) = sources_from_config(cfg.train)
    assert source.weight == 2.0
    assert source.urls == shard_urls(str(packed / "mpii"))


def test_missing_manifest_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json; pack it"):
        shard_urls(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"nowhere not found: pass a packed split folder"):
        shard_urls(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_two_cpu_processes_with_uneven_shards_run_the_same_steps(packed, tmp_path):
    n_shards = len(json.loads((packed / "3dpw" / "manifest.json").read_text())["shardlist"])
    use = n_shards if n_shards % 2 else n_shards - 1  # uneven over 2 ranks x 2 workers
    assert use >= 3
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    cmd = [
        *accelerate_launch(2, 29517),
        str(Path(__file__).parent / "ddp_stream_worker.py"),
        str(packed),
        str(tmp_path),
        "6",
        str(use),
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["batches"] for r in reports] == [6, 6]
    # Evaluation: both ranks evaluated part of the split and gathered all of it, each sample once.
    folder = packed / "3dpw_val"
    expected = sorted(_manifest_keys(folder))
    assert all(r["eval_local"] > 0 for r in reports)
    assert sum(r["eval_local"] for r in reports) == len(expected)
    for report in reports:
        assert report["eval_keys"] == expected
    # The gathered values belong to their keys: compare with one process reading everything.
    single = {}
    for batch in eval_loader(shard_urls(str(folder)), batch_size=5):
        single.update(zip(batch["__key__"], batch["joints_3d"][:, 0, 2].tolist(), strict=True))
    np.testing.assert_allclose(reports[0]["eval_depth"], [single[k] for k in expected], rtol=1e-6)


def test_a_truncated_manifest_is_named(packed, tmp_path):
    from pare.data.streaming.stream import DamagedManifest

    split = tmp_path / "split"
    split.mkdir()
    text = (packed / "3dpw" / "manifest.json").read_text()
    (split / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(DamagedManifest, match=r"manifest\.json is not readable JSON"):
        shard_urls(str(split))


def test_a_split_in_the_old_shard_format_is_refused_with_repack(packed, tmp_path):
    """Shards of format 1 (22 keypoints, SMPL joints) cannot train this version: the stream, the
    body-model check and verify.py all say to repack, in one line."""
    from pare.data.fields import OldShardFormat
    from pare.data.packing.verify import verify_split
    from pare.data.streaming.stream import check_body_model

    split = tmp_path / "old"
    split.mkdir()
    manifest = json.loads((packed / "3dpw" / "manifest.json").read_text())
    manifest["schema_version"] = 1
    (split / "manifest.json").write_text(json.dumps(manifest))
    for call in (lambda: shard_urls(str(split)), lambda: check_body_model([str(split)], "standin")):
        with pytest.raises(OldShardFormat, match=r"shard format 1.*format 2.*repack") as info:
            call()
        assert "\n" not in str(info.value)
    checked, problems = verify_split(split)
    assert checked == 0 and len(problems) == 1 and "repack" in problems[0]
