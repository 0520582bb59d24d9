"""The vanilla-versus-self-attention table: metrics, size and cost of the two variants side by
side, with the difference (attention minus vanilla), as markdown and CSV."""

from __future__ import annotations

import csv
import io

VARIANTS = ("vanilla", "attention")
TITLES = {"vanilla": "vanilla PARE", "attention": "+ self-attention"}

# (row label, key in a variant's results, decimals)
ROWS = (
    ("MPJPE (mm)", "mpjpe", 1),
    ("PA-MPJPE (mm)", "pa_mpjpe", 1),
    ("PVE (mm)", "pve", 1),
    ("parameters (M)", "parameters_m", 3),
    ("step time (s)", "step_time_s", 3),
    ("peak memory (MB)", "peak_memory_mb", 0),
)

# What the design document reports on its own validation runs (mm; see shared/reference/pare.md).
DESIGN_DOCUMENT = {
    "vanilla": {"mpjpe": 93.4, "pa_mpjpe": 93.9},
    "attention": {"mpjpe": 138.5, "pa_mpjpe": 81.5},
}


def comparison_rows(results: dict[str, dict]) -> list[tuple[str, float, float, float, int]]:
    """(label, vanilla, attention, attention - vanilla, decimals) per row of :data:`ROWS`."""
    rows = []
    for label, key, decimals in ROWS:
        a, b = (
            float("nan") if results[v][key] is None else float(results[v][key]) for v in VARIANTS
        )
        rows.append((label, a, b, b - a, decimals))
    return rows


def markdown_table(results: dict[str, dict], memory_kind: str = "") -> str:
    lines = [
        f"| | {TITLES['vanilla']} | {TITLES['attention']} | difference |",
        "|---|---:|---:|---:|",
    ]
    for label, a, b, diff, d in comparison_rows(results):
        if label.startswith("peak memory") and memory_kind:
            label = f"peak memory (MB, {memory_kind})"
        lines.append(f"| {label} | {a:.{d}f} | {b:.{d}f} | {diff:+.{d}f} |")
    doc = DESIGN_DOCUMENT
    lines += [
        "",
        "The design document reports (its own validation runs): "
        f"MPJPE {doc['vanilla']['mpjpe']} -> {doc['attention']['mpjpe']} mm, "
        f"PA-MPJPE {doc['vanilla']['pa_mpjpe']} -> {doc['attention']['pa_mpjpe']} mm.",
    ]
    return "\n".join(lines) + "\n"


def csv_table(results: dict[str, dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["metric", *VARIANTS, "difference"])
    for label, a, b, diff, _ in comparison_rows(results):
        writer.writerow([label, f"{a:.6g}", f"{b:.6g}", f"{diff:.6g}"])
    return buf.getvalue()
