"""Per-sample gathering: merged by key across ranks, each sample once, optional arrays kept."""

import numpy as np
import pytest

import pare.distributed as D


def _fake_world(monkeypatch, parts):
    monkeypatch.setattr(D, "gather_objects", lambda obj: parts)


def test_gather_merges_ranks_sorted_by_key(monkeypatch):
    a = (["k2", "k0"], {"e": np.array([2.0, 0.0]), "x": np.ones((2, 3))})
    b = (["k1"], {"e": np.array([1.0]), "x": np.zeros((1, 3))})
    _fake_world(monkeypatch, [a, b])
    keys, merged = D.gather_per_sample(["k2", "k0"], a[1])
    assert keys == ["k0", "k1", "k2"]
    np.testing.assert_array_equal(merged["e"], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(merged["x"][:, 0], [1.0, 0.0, 1.0])


def test_a_rank_without_samples_may_lack_the_optional_arrays(monkeypatch):
    full = (["k1", "k0"], {"e": np.array([1.0, 0.0]), "joints": np.arange(6.0).reshape(2, 3)})
    empty = ([], {"e": np.zeros(0)})  # saw no sample, so never built "joints"
    _fake_world(monkeypatch, [empty, full])
    keys, merged = D.gather_per_sample([], empty[1])
    assert keys == ["k0", "k1"]
    np.testing.assert_array_equal(merged["joints"], [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]])


def test_a_sample_on_two_ranks_is_an_error(monkeypatch):
    _fake_world(monkeypatch, [(["k0"], {"e": np.zeros(1)}), (["k0"], {"e": np.zeros(1)})])
    with pytest.raises(RuntimeError, match="more than once"):
        D.gather_per_sample(["k0"], {"e": np.zeros(1)})


def _fail_on_rank_1(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        with D.fail_together():
            if rank == 1:
                raise ValueError("evaluation shard val-000001.tar cannot be read")
        D.gather_per_sample([f"k{rank}"], {"e": np.zeros(1)})  # where rank 0 used to wait
        results.put((rank, "finished", ""))
    except Exception as e:
        results.put((rank, type(e).__name__, str(e)))
    finally:
        dist.destroy_process_group()


def test_an_error_on_one_rank_stops_every_rank():
    """Without it, rank 0 waits in the gather for rank 1 until the process group times out."""
    import multiprocessing
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_fail_on_rank_1, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    message = "evaluation shard val-000001.tar cannot be read"
    assert got == [(0, "ValueError", message), (1, "ValueError", message)]


def test_without_a_process_group_the_error_passes_through():
    with pytest.raises(KeyError, match="x"):
        with D.fail_together():
            raise KeyError("x")
    with D.fail_together():
        pass
