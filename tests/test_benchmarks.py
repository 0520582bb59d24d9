"""The benchmark scripts run and write their JSON (speed is not asserted: benchmarks, not tests)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


def _run(script, args, tmp_path, monkeypatch):
    out = tmp_path / "result.json"
    monkeypatch.setattr(sys, "argv", [script, *args, "--out", str(out)])
    runpy.run_path(str(BENCH / script), run_name="__main__")
    return json.loads(out.read_text())


def test_metrics_benchmark(tmp_path, monkeypatch):
    result = _run("bench_metrics.py", ["--samples", "300", "--repeats", "1"], tmp_path, monkeypatch)
    assert result["samples"] == 300 and result["joints"] == 14
    assert result["max_abs_difference"] < 1e-9  # the two implementations agree
    assert result["numpy_loop_s"] > 0 and result["batched_torch_s"] > 0


@pytest.mark.slow
def test_render_benchmark(tmp_path, monkeypatch):
    rows = _run("bench_render.py", ["--frames", "1", "--repeats", "1"], tmp_path, monkeypatch)[
        "rows"
    ]
    assert rows[0]["what"] == "render one body 512x512"
    assert all(r["ms_per_frame"] > 0 for r in rows)


@pytest.mark.slow
def test_pack_benchmark(tmp_path, monkeypatch):
    args = ["--sequences", "1", "--frames", "6", "--caps", "320", "600", "--repeats", "1"]
    result = _run("bench_pack.py", args, tmp_path, monkeypatch)
    assert result["samples"] > 0 and result["shard_bytes_per_sample"] > 1000
    small, large = result["caps"]["320"], result["caps"]["600"]
    # A larger cap stores more pixels of the same people: never fewer bytes.
    assert large["shard_bytes_per_sample"] > small["shard_bytes_per_sample"]
    assert small["time_ratio_to_first"] == 1.0


@pytest.mark.slow
def test_loader_benchmark(tmp_path, monkeypatch):
    result = _run("bench_loader.py", ["--frames", "8", "--batches", "2"], tmp_path, monkeypatch)
    for key in ("pipeline_samples_per_s", "decode_only_samples_per_s", "per_file_samples_per_s"):
        assert result[key] > 0
    assert result["goal_a_over_c"] == 5.0 and result["goal_a_over_b"] == 0.6


@pytest.mark.slow
def test_model_benchmark(tmp_path, monkeypatch):
    # A smoke test of the script and its table: fp32 only (CPU bf16 rows took 2.5 of its 3.3
    # min), each row timed on its first step. The attention rows keep batch 8: at batch 2 a
    # fresh CI install measured fused/naive peak 1.0 (the process's import peak hid both).
    args = [
        *("--backbone", "hrnet_w18_small", "--batch", "1", "--repeats", "0"),
        *("--precisions", "fp32"),
    ]
    result = _run("bench_model.py", args, tmp_path, monkeypatch)
    assert [(r["model"], r["precision"]) for r in result["rows"]][:3] == [
        ("vanilla", "fp32"),
        ("variant 28x28 (default)", "fp32"),
        ("variant 56x56", "fp32"),
    ]
    assert all(r["seconds"] > 0 and r["peak_mb"] > 0 for r in result["rows"])
    # Memory is measured, not assumed: the naive attention stores N x N matrices, the fused not.
    assert result["fused_over_naive_peak_mb"] < 0.5


@pytest.mark.slow
def test_ddp_benchmark(packed, tmp_path, monkeypatch):
    data = [
        f"data.train=[{{path: {packed / '3dpw'}, weight: 1.0}}]",
        f"data.val=[{{path: {packed / '3dpw_val'}, weight: 1.0}}]",
        "data.batch_size=2",
        "model.mean_params=''",
    ]
    result = _run("bench_ddp.py", ["--steps", "3", *data], tmp_path, monkeypatch)
    assert set(result["samples_per_s"]) == {
        "1 process, 1 thread",
        "1 process, 2 threads",
        "2 processes, 1 thread each",
    }
    assert all(v > 0 for v in result["samples_per_s"].values()) and result["goal"] == 1.6
