"""Result tables: the evaluation's metrics (markdown for the terminal, CSV with one row per
sequence, a W&B summary run) and the vanilla-versus-self-attention comparison (markdown, CSV),
on one markdown formatter and one CSV writer."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

from pare.config import LoggingConfig
from pare.evaluation import METRICS, UNITS, metric_key

# ---------------------------------------------------------------------------- formatting


def markdown_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    right: Sequence[bool],
    padded: bool = True,
) -> str:
    """A markdown table of formatted cells, lines joined by newlines (no trailing newline).

    ``right`` marks the right-aligned columns. ``padded``: every column as wide as its widest
    cell and a plain dashed rule, so the table also lines up as terminal text; otherwise the
    cells as given and the alignment in the rule (``---:``)."""
    table = [list(header), *map(list, rows)]
    if padded:
        widths = [max(map(len, column)) for column in zip(*table, strict=True)]
        table = [
            [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
            for row in table
        ]
        rule = ["-" * (w + 2) for w in widths]
    else:
        rule = ["---:" if r else "---" for r in right]
    # An empty cell (the comparison's corner) prints as "| |", not "|  |".
    lines = ["|" + "|".join(f" {c} " if c else " " for c in row) + "|" for row in table]
    return "\n".join([lines[0], "|" + "|".join(rule) + "|", *lines[1:]])


def csv_text(rows: Iterable[Sequence]) -> str:
    """CSV text of the rows (the first is the header), as Python's csv module writes it."""
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    return buf.getvalue()


# ---------------------------------------------------------------------------- evaluation

METRIC_LABELS = {
    "mpjpe": "MPJPE",
    "pa_mpjpe": "PA-MPJPE",
    "pve": "PVE pelvis-aligned",
    "pve_pare": "PVE as PARE",
    # Ours are on the 14 Procrustes-aligned evaluation joints; the official 3DPW evaluator's PCK
    # and AUC use 12 root-aligned SMPL joints (and AUC as a fraction): "PA-" keeps them apart.
    "pck50": "PA-PCK@50",
    "auc": "PA-AUC",
    "pck50_official": "PCK@50 (3DPW evaluator)",
    "auc_official": "AUC (3DPW evaluator)",
}


def metrics_markdown(rows: dict[str, dict], columns: Sequence[str], first: str = "model") -> str:
    """A padded markdown table: one row per name (column ``first``), the metrics ``columns``
    (names in :data:`pare.evaluation.METRICS`) with their units, values with one decimal (three
    for fractions)."""
    header = [first, *(f"{METRIC_LABELS[c]} ({UNITS[c]})" for c in columns)]
    digits = {c: 3 if UNITS[c] == "fraction" else 1 for c in columns}
    cells = [
        [name, *(f"{values[c]:.{digits[c]}f}" for c in columns)] for name, values in rows.items()
    ]
    return markdown_table(header, cells, right=[False, *(True for _ in columns)])


def eval_csv(report: dict) -> str:
    """The CSV of an evaluation report (``train/evaluate.py``'s ``eval.json``): per model one row
    per 3DPW sequence after an 'all' row, metrics with 4 decimals; then MPII's PCKh rows."""
    blank = [""] * len(METRICS)
    rows: list[list] = [
        ["model", "dataset", "sequence", "samples", *map(metric_key, METRICS), "pckh_pct"]
    ]
    for model, result in report["3dpw"].items():
        for sequence, values in {"all": result["overall"], **result["per_sequence"]}.items():
            metrics = [f"{values[m]:.4f}" for m in METRICS]
            rows.append([model, "3dpw", sequence, values["samples"], *metrics, ""])
    for model, result in report.get("mpii", {}).items():
        rows.append([model, "mpii", "all", result["samples"], *blank, f"{result['pckh']:.4f}"])
    return csv_text(rows)


def log_eval_to_wandb(
    report: dict, *, out: Path, name: str, mode: str, logging: LoggingConfig
) -> str:
    """A W&B run (job type 'eval', named ``eval-<name>``, in ``logging``'s project and group,
    files under ``out``) whose summary holds each model's overall metrics and MPII PCKh and whose
    tables hold the per-sequence rows. ``mode``: 'offline' or 'online'. Returns its folder."""
    import wandb

    run = wandb.init(
        project=logging.project,
        entity=logging.entity or None,
        group=logging.group or None,
        job_type="eval",
        name=f"eval-{name}",
        mode=mode,
        dir=str(out),
        config={"checkpoint": report["weights"]},
    )
    try:
        for model, result in report["3dpw"].items():
            for m in METRICS:
                run.summary[f"eval/{model}/{metric_key(m)}"] = result["overall"][m]
            columns = ["sequence", "samples", *map(metric_key, METRICS)]
            data = [
                [seq, v["samples"], *(v[m] for m in METRICS)]
                for seq, v in result["per_sequence"].items()
            ]
            run.log({f"eval/{model}/per_sequence": wandb.Table(columns=columns, data=data)})
        for model, result in report.get("mpii", {}).items():
            run.summary[f"eval/{model}/pckh_pct"] = result["pckh"]
        return str(Path(run.dir).parent)
    finally:
        run.finish()


# ---------------------------------------------------------------------------- comparison

VARIANTS = ("vanilla", "attention")
TITLES = {"vanilla": "vanilla PARE", "attention": "+ self-attention"}

# (row label, key in a variant's results, decimals)
ROWS = (
    ("MPJPE (mm)", "mpjpe", 1),
    ("PA-MPJPE (mm)", "pa_mpjpe", 1),
    ("PVE pelvis-aligned (mm)", "pve", 1),
    ("PVE as PARE (mm)", "pve_pare", 1),
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
    """(label, vanilla, attention, attention - vanilla, decimals) per row of :data:`ROWS`; a
    missing or None value is NaN."""
    rows = []
    for label, key, decimals in ROWS:
        # An older run's marker may lack a value (e.g. pve_pare): NaN, not an error.
        a, b = (
            float("nan") if results[v].get(key) is None else float(results[v][key])
            for v in VARIANTS
        )
        rows.append((label, a, b, b - a, decimals))
    return rows


def comparison_markdown(results: dict[str, dict], memory_kind: str = "") -> str:
    """The comparison as a compact markdown table (values, signed difference), then what the
    design document reports; ends with a newline. ``memory_kind`` (e.g. 'cuda') labels the
    peak-memory row."""
    cells = []
    for label, a, b, diff, d in comparison_rows(results):
        if label.startswith("peak memory") and memory_kind:
            label = f"peak memory (MB, {memory_kind})"
        cells.append([label, f"{a:.{d}f}", f"{b:.{d}f}", f"{diff:+.{d}f}"])
    header = ["", TITLES["vanilla"], TITLES["attention"], "difference"]
    table = markdown_table(header, cells, right=[False, True, True, True], padded=False)
    doc = DESIGN_DOCUMENT
    note = (
        "The design document reports (its own validation runs): "
        f"MPJPE {doc['vanilla']['mpjpe']} -> {doc['attention']['mpjpe']} mm, "
        f"PA-MPJPE {doc['vanilla']['pa_mpjpe']} -> {doc['attention']['pa_mpjpe']} mm."
    )
    return f"{table}\n\n{note}\n"


def comparison_csv(results: dict[str, dict]) -> str:
    """The comparison as CSV: metric, vanilla, attention, difference (6 significant digits)."""
    rows: list[list] = [["metric", *VARIANTS, "difference"]]
    for label, a, b, diff, _ in comparison_rows(results):
        rows.append([label, f"{a:.6g}", f"{b:.6g}", f"{diff:.6g}"])
    return csv_text(rows)
