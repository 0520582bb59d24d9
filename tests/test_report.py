"""Result tables against hand-written text: the markdown formatter, the evaluation's markdown and
CSV, the comparison's markdown and CSV."""

import pytest

from pare.evaluation import METRICS
from pare.report import (
    comparison_csv,
    comparison_markdown,
    csv_text,
    eval_csv,
    markdown_table,
    metrics_markdown,
)


def _metrics(shift: float, samples: int) -> dict:
    return {
        "mpjpe": 93.44 + shift,
        "pa_mpjpe": 61.25 - shift,
        "pve": 110.05 + 2 * shift,
        "pve_pare": 120.0 + shift,
        "pck50": 40.0 + shift,
        "auc": 55.55,
        "pck50_official": 30.0 - shift,
        "auc_official": 0.61234,
        "samples": samples,
    }


REPORT = {
    "weights": "w.safetensors",
    "3dpw": {
        "PARE (hrnet, step 4)": {
            "overall": _metrics(0, 7),
            "per_sequence": {"courtyard_a_00": _metrics(1, 3), "b": _metrics(2.345, 4)},
        },
        "mean-pose baseline": {"overall": _metrics(10, 7), "per_sequence": {"b": _metrics(12, 7)}},
    },
    "mpii": {"PARE (hrnet, step 4)": {"pckh": 71.23456, "samples": 12}},
}


def test_markdown_table_padded_and_compact():
    header, rows = ["name", "value"], [["a", "1.0"], ["longer", "22.5"]]
    assert markdown_table(header, rows, right=[False, True]) == (
        "| name   | value |\n|--------|-------|\n| a      |   1.0 |\n| longer |  22.5 |"
    )
    assert markdown_table(["", "x"], [["a", "1"]], right=[False, True], padded=False) == (
        "| | x |\n|---|---:|\n| a | 1 |"
    )


def test_csv_text_quotes_and_ends_rows_like_the_csv_module():
    assert csv_text([["a", "b c", "d,e"], [1, "", 2.5]]) == 'a,b c,"d,e"\r\n1,,2.5\r\n'


def test_metrics_markdown():
    overall = {name: r["overall"] for name, r in REPORT["3dpw"].items()}
    assert metrics_markdown(overall, METRICS) == (
        "| model                | MPJPE (mm) | PA-MPJPE (mm) | PVE pelvis-aligned (mm) "
        "| PVE as PARE (mm) | PA-PCK@50 (%) | PA-AUC (%) | PCK@50 (3DPW evaluator) (%) "
        "| AUC (3DPW evaluator) (fraction) |\n"
        "|----------------------|------------|---------------|-------------------------"
        "|------------------|---------------|------------|-----------------------------"
        "|---------------------------------|\n"
        "| PARE (hrnet, step 4) |       93.4 |          61.2 |                   110.0 "
        "|            120.0 |          40.0 |       55.5 |                        30.0 "
        "|                           0.612 |\n"
        "| mean-pose baseline   |      103.4 |          51.2 |                   130.1 "
        "|            130.0 |          50.0 |       55.5 |                        20.0 "
        "|                           0.612 |"
    )
    sequences = REPORT["3dpw"]["PARE (hrnet, step 4)"]["per_sequence"]
    assert metrics_markdown(sequences, ("pa_mpjpe", "mpjpe", "pve"), "sequence") == (
        "| sequence       | PA-MPJPE (mm) | MPJPE (mm) | PVE pelvis-aligned (mm) |\n"
        "|----------------|---------------|------------|-------------------------|\n"
        "| courtyard_a_00 |          60.2 |       94.4 |                   112.0 |\n"
        "| b              |          58.9 |       95.8 |                   114.7 |"
    )


def test_eval_csv():
    assert eval_csv(REPORT) == (
        "model,dataset,sequence,samples,mpjpe_mm,pa_mpjpe_mm,pve_mm,pve_pare_mm,pck50_pct,"
        "auc_pct,pck50_official_pct,auc_official_fraction,pckh_pct\r\n"
        '"PARE (hrnet, step 4)",3dpw,all,7,93.4400,61.2500,110.0500,120.0000,40.0000,55.5500,'
        "30.0000,0.6123,\r\n"
        '"PARE (hrnet, step 4)",3dpw,courtyard_a_00,3,94.4400,60.2500,112.0500,121.0000,41.0000,'
        "55.5500,29.0000,0.6123,\r\n"
        '"PARE (hrnet, step 4)",3dpw,b,4,95.7850,58.9050,114.7400,122.3450,42.3450,55.5500,'
        "27.6550,0.6123,\r\n"
        "mean-pose baseline,3dpw,all,7,103.4400,51.2500,130.0500,130.0000,50.0000,55.5500,"
        "20.0000,0.6123,\r\n"
        "mean-pose baseline,3dpw,b,7,105.4400,49.2500,134.0500,132.0000,52.0000,55.5500,"
        "18.0000,0.6123,\r\n"
        '"PARE (hrnet, step 4)",mpii,all,12,,,,,,,,,71.2346\r\n'
    )
    without_mpii = {"3dpw": {"m": REPORT["3dpw"]["mean-pose baseline"]}}
    assert eval_csv(without_mpii).count("\r\n") == 3


RESULTS = {
    "vanilla": {
        "mpjpe": 90.0,
        "pa_mpjpe": 60.0,
        "pve": 100.0,
        "pve_pare": 104.25,
        "parameters_m": 1.2345,
        "step_time_s": 0.5,
        "peak_memory_mb": 1234.4,
    },
    "attention": {
        "mpjpe": 91.0,
        "pa_mpjpe": 58.5,
        "pve": 99.0,  # no pve_pare: an older run's marker
        "parameters_m": 1.3,
        "step_time_s": None,  # absent in an older run's marker
        "peak_memory_mb": 1300.6,
    },
}
DESIGN_NOTE = (
    "The design document reports (its own validation runs): "
    "MPJPE 93.4 -> 138.5 mm, PA-MPJPE 93.9 -> 81.5 mm.\n"
)


@pytest.mark.parametrize(("kind", "memory_label"), [("", "MB"), ("cuda", "MB, cuda")])
def test_comparison_markdown(kind, memory_label):
    assert comparison_markdown(RESULTS, kind) == (
        "| | vanilla PARE | + self-attention | difference |\n"
        "|---|---:|---:|---:|\n"
        "| MPJPE (mm) | 90.0 | 91.0 | +1.0 |\n"
        "| PA-MPJPE (mm) | 60.0 | 58.5 | -1.5 |\n"
        "| PVE pelvis-aligned (mm) | 100.0 | 99.0 | -1.0 |\n"
        "| PVE as PARE (mm) | 104.2 | nan | +nan |\n"
        "| parameters (M) | 1.234 | 1.300 | +0.066 |\n"
        "| step time (s) | 0.500 | nan | +nan |\n"
        f"| peak memory ({memory_label}) | 1234 | 1301 | +66 |\n"
        "\n" + DESIGN_NOTE
    )


def test_comparison_csv():
    assert comparison_csv(RESULTS) == (
        "metric,vanilla,attention,difference\r\n"
        "MPJPE (mm),90,91,1\r\n"
        "PA-MPJPE (mm),60,58.5,-1.5\r\n"
        "PVE pelvis-aligned (mm),100,99,-1\r\n"
        "PVE as PARE (mm),104.25,nan,nan\r\n"
        "parameters (M),1.2345,1.3,0.0655\r\n"
        "step time (s),0.5,nan,nan\r\n"
        "peak memory (MB),1234.4,1300.6,66.2\r\n"
    )
