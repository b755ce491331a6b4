"""The report's tables: cell formatting, the main, per-seed and sensitivity tables, and
the main table as aligned plain text.

Each :class:`Table` holds formatted cells for display (percentages, ``n/a`` for a
missing value, intervals as ``mean [low–high]``) and plain numbers for the CSV files,
so that the writers only lay them out.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipelines.report.records import (
    ERRORS,
    LABEL,
    MISSING,
    RANGE_SEP,
    SUMMARY,
    GroupSummary,
    Interval,
    Report,
    RunRecord,
    Table,
    _fmt_value,
)
from pipelines.report.stats import CONFIDENCE
from pipelines.tracking.metrics import (
    TEST_CHECKPOINT_DENSITY,
    TEST_DENSITY,
    TEST_EXACT_MATCH,
    TEST_REACHED_REPORTED,
    TOTAL_WALL_SECONDS,
    WALL_SECONDS,
)

if TYPE_CHECKING:
    import pandas as pd

# --------------------------------------------------------------------------------------
# Formatting
# --------------------------------------------------------------------------------------


def _fmt_interval(iv: Interval | None, metric: str) -> str:
    """``1.48 [0.07–4.23]`` in %; the density with 3 significant digits; one seed: no interval."""
    if iv is None:
        return MISSING

    decimals = _density_decimals(iv.mean) if metric == "density" else 2

    def num(x: float) -> str:
        return f"{100 * x:.{decimals}f}"

    if iv.n == 1:  # a bootstrap over one value is that value: print no interval
        return num(iv.mean)
    return f"{num(iv.mean)} [{num(iv.low)}{RANGE_SEP}{num(iv.high)}]"


def _density_decimals(fraction: float) -> int:
    """Decimals showing a density in % to 3 significant digits (at least 2 decimals).

    Densities span 50% down to 0.005%, so a fixed number of decimals would print the
    interesting ones as 0.00; the bounds of an interval use the mean's decimals, so that
    ``0.00550 [0.00500-0.00600]`` reads as one scale.
    """
    pct = 100 * fraction
    if pct <= 0 or not math.isfinite(pct):
        return 2
    return max(2, 2 - math.floor(math.log10(pct)))


def _fmt_pct(x: float, metric: str = "") -> str:
    if math.isnan(x):
        return MISSING
    decimals = _density_decimals(x) if metric == "density" else 2
    return f"{100 * x:.{decimals}f}"


def _fmt_seconds(s: float) -> str:
    if math.isnan(s):
        return MISSING
    s = round(s)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {sec:02d}s" if m else f"{sec}s")


def _wall_seconds(r: RunRecord | _Row) -> float:
    """The run's training wall time: ``time/total_wall_seconds``; for a run tracked before
    that metric existed, the latest ``wall_seconds`` (then logged last with the total)."""
    total = r.metric(TOTAL_WALL_SECONDS)
    return r.metric(WALL_SECONDS) if math.isnan(total) else total


class _Row:
    """One row of a sweep's frame (:func:`~pipelines.report.frame.records_frame`), read as
    the tables read a run."""

    def __init__(self, row: pd.Series) -> None:
        self.row = row

    def __getattr__(self, name: str) -> Any:
        value = self.row[name]
        return None if _missing(value) else value

    @property
    def seed(self) -> int | None:
        value = self.row["seed"]
        return None if _missing(value) else int(value)

    def swept(self, field: str) -> Any:
        value = self.row[f"swept.{field}"]
        return None if _missing(value) else value

    def metric(self, name: str) -> float:
        key = f"metrics.{name}"
        return float(self.row[key]) if key in self.row.index else math.nan


def _missing(value: Any) -> bool:
    """Whether a frame cell holds no value (None, NaN, pandas' NA); not for lists."""
    import pandas as pd

    return value is None or (not isinstance(value, list | dict | tuple) and bool(pd.isna(value)))


def _pct(x: float | None) -> float | None:
    """A fraction as a percentage for the CSV files (empty cell when undefined).

    Rounded to 12 significant digits so that 0.07 prints as 7.0, not 7.000000000000001.
    """
    return None if x is None or math.isnan(x) else float(f"{100 * x:.12g}")


def _interval_csv(iv: Interval | None) -> list[float | None]:
    return [None, None, None] if iv is None else [_pct(iv.mean), _pct(iv.low), _pct(iv.high)]


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _seeds_cell(g: GroupSummary) -> str:
    """The finished seeds behind a row, e.g. ``2`` or ``2 (+1 failed)``."""
    others = Counter(r.status for r in g.runs if r.status != "finished")
    extra = ", ".join(f"+{n} {status}" for status, n in sorted(others.items()))
    return f"{g.n_seeds} ({extra})" if extra else str(g.n_seeds)


def _summary_table(
    name: str, title: str, groups: Sequence[GroupSummary], fields: Sequence[str]
) -> Table:
    columns = (
        "method",
        *fields,
        "seeds",
        *(f"{LABEL[m]} (%)" for m in SUMMARY),
        "reached",
    )
    rows = []
    csv_rows = []
    for g in groups:
        rows.append(
            (
                g.method,
                *(_fmt_value(g.swept.get(f)) for f in fields),
                _seeds_cell(g),
                *(_fmt_interval(g.stats[m], m) for m in SUMMARY),
                f"{g.reached}/{g.n_seeds}",
            )
        )
        csv_rows.append(
            (
                g.method,
                *(g.swept.get(f) for f in fields),
                g.n_seeds,
                ";".join(str(s) for s in g.seeds),
                *(x for m in SUMMARY for x in _interval_csv(g.stats[m])),
                g.reached,
                sum(r.status == "failed" for r in g.runs),
                sum(r.status == "running" for r in g.runs),
                sum(r.status == "stopped" for r in g.runs),
            )
        )
    csv_columns = (
        "method",
        *fields,
        "n_seeds",
        "seeds",
        *(f"{m}_{part}_pct" for m in SUMMARY for part in ("mean", "low", "high")),
        "reached_reported",
        "failed",
        "running",
        "stopped",
    )
    numeric = tuple(i > len(fields) for i in range(len(columns)))
    return Table(name, title, columns, tuple(rows), numeric, csv_columns, tuple(csv_rows))


def _per_seed_table(frame: pd.DataFrame, fields: Sequence[str]) -> Table:
    """The per-seed table: a row per row of the sweep's frame, in its order."""
    columns = (
        "method",
        *fields,
        "seed",
        "status",
        *(f"{LABEL[m]} (%)" for m in ERRORS),
        "accuracy (%)",
        "density (%)",
        "checkpoint density (%)",
        "reached",
        "wall time",
        "run",
    )
    rows = []
    csv_rows = []
    for _, row in frame.iterrows():
        r = _Row(row)
        reached = r.metric(TEST_REACHED_REPORTED)
        rows.append(
            (
                r.method,
                *(_fmt_value(r.swept(f)) for f in fields),
                MISSING if r.seed is None else str(r.seed),
                r.status,
                *(_fmt_pct(r.metric(f"test/{m}")) for m in ERRORS),
                _fmt_pct(r.metric(TEST_EXACT_MATCH)),
                _fmt_pct(r.metric(TEST_DENSITY), "density"),
                _fmt_pct(r.metric(TEST_CHECKPOINT_DENSITY), "density"),
                MISSING if math.isnan(reached) else ("yes" if reached == 1.0 else "no"),
                _fmt_seconds(_wall_seconds(r)),
                r.run_id,
            )
        )
        csv_rows.append(
            (
                r.method,
                *(r.swept(f) for f in fields),
                r.seed,
                r.status,
                *(_pct(r.metric(f"test/{m}")) for m in ERRORS),
                _pct(r.metric(TEST_EXACT_MATCH)),
                _pct(r.metric(TEST_DENSITY)),
                _pct(r.metric(TEST_CHECKPOINT_DENSITY)),
                None if math.isnan(reached) else int(reached == 1.0),
                None if math.isnan(_wall_seconds(r)) else _wall_seconds(r),
                r.run_id,
                r.failure or "",
            )
        )
    csv_columns = (
        "method",
        *fields,
        "seed",
        "status",
        *(f"{m}_pct" for m in ERRORS),
        "accuracy_pct",
        "density_pct",
        "checkpoint_density_pct",
        "reached_reported",
        "wall_seconds",
        # No MLflow run id: the table then depends only on the sweep's results, so a
        # resumed sweep and a clean one give the same file (apart from wall time).
        "run_id",
        "failure",
    )
    first_numeric = len(fields) + 3  # method, fields, seed, status: text
    numeric = tuple(first_numeric <= i < len(columns) - 1 for i in range(len(columns)))
    return Table(
        "per_seed",
        "Per-seed test results",
        columns,
        tuple(rows),
        numeric,
        csv_columns,
        tuple(csv_rows),
    )


def report_frame(report: Report) -> pd.DataFrame:
    """The frame the report's tables are made from: the one it was built with (that of
    :func:`~pipelines.report.runs_frame`), or its runs' for a report built by hand."""
    from pipelines.report.frame import records_frame

    if report.frame is None:
        report.frame = records_frame(report.runs, report.swept_fields)
    return report.frame


def _file_stem(text: str) -> str:
    # Letters, digits, "_" and "-" only: no spaces or "%" to trip LaTeX's \input and
    # \includegraphics, and no extra "." (which older graphicx misreads as the extension).
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")


def _label(text: str) -> str:
    # \label keys: letters, digits, ":" and "-" are safe with every package (babel too).
    return re.sub(r"[^A-Za-z0-9:-]+", "-", text)


def _sensitivity_name(field: str) -> str:
    """The table (and file) name of a swept field's sensitivity table."""
    return f"sensitivity-{_file_stem(field)}"


def _tables(report: Report) -> dict[str, Table]:
    fields = report.swept_fields
    tables = {
        "main": _summary_table(
            "main",
            f"Sweep {report.sweep_name}: test errors and density (%), mean over seeds "
            f"[{CONFIDENCE:.0%} bootstrap interval]",
            report.groups,
            fields,
        ),
        "per_seed": _per_seed_table(report_frame(report), fields),
    }
    for f, groups in report.sensitivity.items():
        # One row per (method, value), each method's values together.
        name = _sensitivity_name(f)
        tables[name] = _summary_table(name, f"Sensitivity to {f}", groups, [f])
    return tables


def _aligned(columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool]) -> str:
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def format_main_table(report: Report) -> str:
    """The main table as aligned plain text (what ``sparling report`` prints)."""
    table = report.tables.get("main") or _tables(report)["main"]
    if not table.rows:
        return "(no runs)"
    return _aligned(table.columns, table.text_rows(), table.numeric)
