"""The benchmark scripts run and their two implementations agree (speed is not asserted)."""

import json
import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "benchmarks"


def test_metrics_benchmark_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "metrics.json"
    monkeypatch.setattr(
        sys, "argv", ["bench_metrics.py", "--samples", "300", "--repeats", "1", "--out", str(out)]
    )
    runpy.run_path(str(BENCH / "bench_metrics.py"), run_name="__main__")
    result = json.loads(out.read_text())
    assert result["samples"] == 300 and result["joints"] == 14
    assert result["max_abs_difference"] < 1e-9
    assert result["numpy_loop_s"] > 0 and result["batched_torch_s"] > 0


@pytest.mark.slow
def test_render_benchmark_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "render.json"
    monkeypatch.setattr(
        sys, "argv", ["bench_render.py", "--frames", "1", "--repeats", "1", "--out", str(out)]
    )
    runpy.run_path(str(BENCH / "bench_render.py"), run_name="__main__")
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["what"] == "render one body 512x512"
    assert all(r["ms_per_frame"] > 0 for r in rows)


@pytest.mark.slow
def test_pack_benchmark_writes_json(tmp_path, monkeypatch):
    out = tmp_path / "pack.json"
    monkeypatch.setattr(
        sys, "argv", ["bench_pack.py", "--sequences", "1", "--frames", "6", "--out", str(out)]
    )
    runpy.run_path(str(BENCH / "bench_pack.py"), run_name="__main__")
    result = json.loads(out.read_text())
    assert result["samples"] > 0 and result["shard_bytes_per_sample"] > 1000
