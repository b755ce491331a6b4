"""Sweep report statistics, tables and writers on run records made by hand, without MLflow.

Three methods of one swept field: ``sparling`` (3 finished seeds), ``l1(coefficient=2.0)``
(2 finished, 1 failed) and ``l1(coefficient=10.0)`` (1 finished with an undefined FPE,
1 running). With 2 or 3 seeds, 1,000 bootstrap resamples always draw the smallest and
the largest value alone more than 2.5% of the time, so each interval is [min-max].
"""

from __future__ import annotations

import ast
import csv
import math
from pathlib import Path

import pytest
from conftest import REPO, run_python

from pipelines.report.records import CurvePoint, Interval, Report, RunRecord, SweepCounts
from pipelines.report.stats import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    _balanced,
    _curve,
    _group,
    _run_key,
    _summarise,
)
from pipelines.report.tables import (
    _density_decimals,
    _fmt_interval,
    _fmt_pct,
    _fmt_seconds,
    _tables,
    format_main_table,
)
from pipelines.report.writers import _md_table, _tex_table, _write_csv, _write_tables
from sparling.metrics import bootstrap_ci

FIELD = "schedule.delta_update"
SPARLING = "sparling"
L1_2 = "l1(coefficient=2.0)"
L1_10 = "l1(coefficient=10.0)"


def _run(
    method: str,
    seed: int,
    test: dict[str, float] | None = None,
    *,
    status: str = "finished",
    history: tuple[CurvePoint, ...] = (),
) -> RunRecord:
    """A run of ``method`` at ``FIELD=0.9``; ``test`` holds its ``test_*`` metrics (and
    ``total_wall_seconds``, the run's training time, and ``wall_seconds``, the last
    validation's)."""
    walls = ("wall_seconds", "total_wall_seconds")
    metrics = {k if k in walls else f"test_{k}": v for k, v in (test or {}).items()}
    return RunRecord(
        mlflow_run_id=f"mlflow-{method}-{seed}",
        run_id=f"{method}-{seed}",
        method=method,
        domain="digit-circle",
        seed=seed,
        swept={FIELD: 0.9},
        status=status,
        failure="NaN loss" if status == "failed" else None,
        metrics=metrics,
        history=history,
    )


def _history(ce: tuple[float, float]) -> tuple[CurvePoint, ...]:
    """Validation CE at the densities 50% and 25% (the second one a little off, as after
    a resume on another machine)."""
    return (
        CurvePoint(density=0.5, means={"ce": ce[0], "fpe": 0.4}, n=1),
        CurvePoint(density=0.25 + 1e-12, means={"ce": ce[1], "fpe": math.nan}, n=1),
    )


def _runs() -> list[RunRecord]:
    sparling = {"fne": 0.0, "density": 5e-5, "checkpoint_density": 5e-5, "reached_reported": 1.0}
    l1 = {"reached_reported": 0.0}
    runs = [
        # listed out of order: the report sorts them
        _run(L1_10, 1, status="running"),
        _run(
            SPARLING,
            2,
            {
                **sparling,
                "fpe": 0.03,
                "ce": 0.08,
                "e2ee": 0.04,
                "accuracy": 0.96,
                "total_wall_seconds": 59.6,
            },
            history=_history((0.3, 0.2)),
        ),
        _run(
            SPARLING,
            0,
            {
                **sparling,
                "fpe": 0.01,
                "ce": 0.05,
                "e2ee": 0.02,
                "accuracy": 0.98,
                "total_wall_seconds": 3725.0,
                "wall_seconds": 3700.0,  # the last validation's: not the run's time
            },
            history=_history((0.5, 0.1)),
        ),
        _run(
            SPARLING,
            1,
            {
                **sparling,
                "fpe": 0.02,
                "ce": 0.05,
                "e2ee": 0.03,
                "accuracy": 0.97,
                "total_wall_seconds": 3600.0,
            },
        ),
        _run(L1_2, 2, status="failed"),
        _run(L1_2, 1, {**l1, "fpe": 0.2, "fne": 0.07, "ce": 0.3, "e2ee": 0.2, "density": 0.014}),
        _run(L1_2, 0, {**l1, "fpe": 0.1, "fne": 0.05, "ce": 0.2, "e2ee": 0.1, "density": 0.012}),
        _run(
            L1_10,
            0,
            {
                **l1,
                "fpe": math.nan,
                "fne": 1.0,
                "ce": 0.9,
                "e2ee": 0.95,
                "density": 0.0,
                # tracked before total_wall_seconds existed: wall_seconds was logged last
                "wall_seconds": 125.0,
            },
        ),
    ]
    return sorted(runs, key=_run_key)


@pytest.fixture
def report(tmp_path: Path) -> Report:
    runs = _runs()
    groups = _group(runs, [FIELD])
    report = Report(
        tracking_uri="https://me:s3cret@mlflow.example:5000",
        experiment="exp",
        sweep_name="demo",
        parent_run_id="p" * 32,
        swept_fields=[FIELD],
        runs=runs,
        groups=groups,
        sensitivity={FIELD: _group(_balanced(runs, FIELD, [FIELD]), [FIELD])},
        curves={g.label: _curve(g) for g in groups},
        counts=SweepCounts(expected=9, present=8, finished=6, failed=1, running=1),
        out_dir=tmp_path,
    )
    report.tables = _tables(report)
    return report


# -- statistics ---------------------------------------------------------------------------


def test_runs_and_groups_in_natural_method_order(report: Report) -> None:
    # "2.0" before "10.0": numbers in method labels compare as numbers
    assert [(r.method, r.seed) for r in report.runs] == [
        (L1_2, 0),
        (L1_2, 1),
        (L1_2, 2),
        (L1_10, 0),
        (L1_10, 1),
        (SPARLING, 0),
        (SPARLING, 1),
        (SPARLING, 2),
    ]
    assert [g.label for g in report.groups] == [
        "l1(coefficient=2.0) (delta_update=0.9)",
        "l1(coefficient=10.0) (delta_update=0.9)",
        "sparling (delta_update=0.9)",
    ]
    # only finished runs are behind the statistics
    assert [g.seeds for g in report.groups] == [[0, 1], [0], [0, 1, 2]]
    assert [(g.reached, g.reached_reported) for g in report.groups] == [
        (0, False),
        (0, False),
        (3, True),
    ]


def test_means_and_intervals(report: Report) -> None:
    l1, l1_10, sparling = report.groups
    expected = {
        "fpe": (0.02, 0.01, 0.03),
        "fne": (0.0, 0.0, 0.0),
        "ce": (0.06, 0.05, 0.08),
        "e2ee": (0.03, 0.02, 0.04),
        "density": (5e-5, 5e-5, 5e-5),
    }
    for metric, (mean, low, high) in expected.items():
        iv = sparling.stats[metric]
        assert iv is not None and (iv.n, iv.omitted) == (3, 0)
        assert (iv.mean, iv.low, iv.high) == pytest.approx((mean, low, high), rel=1e-12)
        values = [r.metric(f"test_{metric}") for r in sparling.finished]
        assert (iv.mean, iv.low, iv.high) == bootstrap_ci(
            values, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED
        )
    density = l1.stats["density"]
    assert density is not None and density.n == 2
    assert (density.mean, density.low, density.high) == pytest.approx((0.013, 0.012, 0.014))
    # one seed: the interval is the value; an undefined FPE leaves no value at all
    ce = l1_10.stats["ce"]
    assert ce is not None and (ce.mean, ce.low, ce.high, ce.n) == (0.9, 0.9, 0.9, 1)
    assert l1_10.stats["fpe"] is None


def test_nan_values_are_left_out_and_counted() -> None:
    iv = _summarise([0.01, math.nan, 0.03])
    assert iv is not None and (iv.n, iv.omitted) == (2, 1)
    assert iv.mean == pytest.approx(0.02)
    assert _summarise([math.nan]) is None and _summarise([]) is None


def test_curves_pool_the_seeds_at_each_density(report: Report) -> None:
    curve = report.curves["sparling (delta_update=0.9)"]
    # high density first; seed 1 logged no history, so 2 runs behind each point
    assert [p.n for p in curve] == [2, 2]
    assert [p.density for p in curve] == pytest.approx([0.5, 0.25])
    assert curve[0].means == pytest.approx({"ce": 0.4, "fpe": 0.4})
    assert curve[1].means == pytest.approx({"ce": 0.15})  # NaN FPE left out: no mean
    assert report.curves["l1(coefficient=2.0) (delta_update=0.9)"] == []


# -- tables -------------------------------------------------------------------------------


def test_main_table_rows(report: Report) -> None:
    main = report.tables["main"]
    assert main.columns == (
        "method",
        FIELD,
        "seeds",
        "FPE (%)",
        "FNE (%)",
        "CE (%)",
        "E2EE (%)",
        "density (%)",
        "reached",
    )
    assert main.numeric == (False, False, True, True, True, True, True, True, True)
    assert main.text_rows() == [
        [
            L1_2,
            "0.9",
            "2 (+1 failed)",
            "15.00 [10.00-20.00]",
            "6.00 [5.00-7.00]",
            "25.00 [20.00-30.00]",
            "15.00 [10.00-20.00]",
            "1.30 [1.20-1.40]",
            "0/2",
        ],
        [L1_10, "0.9", "1 (+1 running)", "n/a", "100.00", "90.00", "95.00", "0.00", "0/1"],
        [
            SPARLING,
            "0.9",
            "3",
            "2.00 [1.00-3.00]",
            "0.00 [0.00-0.00]",
            "6.00 [5.00-8.00]",
            "3.00 [2.00-4.00]",
            "0.00500 [0.00500-0.00500]",
            "3/3",
        ],
    ]
    # the display cells keep an en dash between the bounds (LaTeX makes it "--")
    assert main.rows[2][3] == "2.00 [1.00\u20133.00]"
    # the CSV rows hold numbers, in %, rounded so that 0.07 is 7.0
    assert main.csv_rows[0][:7] == (L1_2, 0.9, 2, "0;1", 15.0, 10.0, 20.0)
    assert main.csv_rows[0][-4:] == (0, 1, 0, 0)  # reached, failed, running, stopped
    assert main.csv_rows[1][4:7] == (None, None, None)
    assert main.csv_rows[2][16:19] == (0.005, 0.005, 0.005)
    # one field swept, one value: the sensitivity table has the main table's rows
    assert report.tables["sensitivity-schedule_delta_update"].rows == main.rows


def test_main_table_as_text(report: Report) -> None:
    lines = format_main_table(report).splitlines()
    assert lines[0].split() == [
        "method",
        FIELD,
        "seeds",
        "FPE",
        "(%)",
        "FNE",
        "(%)",
        "CE",
        "(%)",
        "E2EE",
        "(%)",
        "density",
        "(%)",
        "reached",
    ]
    assert set(lines[1]) == {"-", " "}
    assert lines[2].startswith("l1(coefficient=2.0)   0.9  ")
    # numbers are right-aligned: every row ends at the same column
    assert len({len(line) for line in lines}) == 1
    assert lines[4].endswith("0.00500 [0.00500-0.00500]      3/3")


def test_percent_and_density_formatting() -> None:
    # errors: 2 decimals in %; densities: 3 significant digits in % (at least 2 decimals)
    assert _fmt_pct(0.0148) == "1.48"
    assert _fmt_pct(math.nan) == "n/a"
    assert [_fmt_pct(x, "density") for x in (0.5, 0.0123, 5e-5, 5.5e-5, 0.0)] == [
        "50.00",
        "1.23",
        "0.00500",
        "0.00550",
        "0.00",
    ]
    assert _density_decimals(5e-5) == 5 and _density_decimals(math.inf) == 2
    assert _fmt_interval(Interval(0.0148, 0.0007, 0.0423, n=3), "ce") == "1.48 [0.07\u20134.23]"
    # the bounds of a density use the mean's decimals
    assert _fmt_interval(Interval(5.5e-5, 5e-5, 6e-4, n=2), "density") == (
        "0.00550 [0.00500\u20130.06000]"
    )
    assert _fmt_interval(Interval(0.5, 0.5, 0.5, n=1), "fpe") == "50.00"
    assert _fmt_interval(None, "fpe") == "n/a"
    assert [_fmt_seconds(s) for s in (59.6, 125.0, 3725.0, math.nan)] == [
        "1m 00s",
        "2m 05s",
        "1h 02m",
        "n/a",
    ]


def test_per_seed_table(report: Report) -> None:
    table = report.tables["per_seed"]
    assert table.columns[:2] == ("method", FIELD)
    assert table.columns[2:] == (
        "seed",
        "status",
        "FPE (%)",
        "FNE (%)",
        "CE (%)",
        "E2EE (%)",
        "accuracy (%)",
        "density (%)",
        "checkpoint density (%)",
        "reached",
        "wall time",
        "run",
    )
    rows = {(r[0], r[2]): r for r in table.rows}
    assert len(table.rows) == 8
    assert rows[(SPARLING, "0")] == (
        SPARLING,
        "0.9",
        "0",
        "finished",
        "1.00",
        "0.00",
        "5.00",
        "2.00",
        "98.00",
        "0.00500",
        "0.00500",
        "yes",
        "1h 02m",
        "sparling-0",
    )
    assert rows[(L1_2, "2")][3:] == ("failed", *["n/a"] * 9, "l1(coefficient=2.0)-2")
    assert rows[(L1_10, "0")][4:13] == (
        "n/a",
        "100.00",
        "90.00",
        "95.00",
        "n/a",
        "0.00",
        "n/a",
        "no",
        "2m 05s",
    )
    # the CSV row: numbers (empty when undefined), the failure reason, no MLflow run id
    failed = next(r for r in table.csv_rows if r[3] == "failed")
    assert failed[4:13] == (None,) * 9 and failed[-2:] == ("l1(coefficient=2.0)-2", "NaN loss")
    first = next(r for r in table.csv_rows if r[:3] == (SPARLING, 0.9, 0))
    assert first[4:12] == (1.0, 0.0, 5.0, 2.0, 98.0, 0.005, 0.005, 1)
    assert first[12] == 3725.0
    assert not any("mlflow-" in str(c) for r in table.csv_rows for c in r)


# -- writers ------------------------------------------------------------------------------


def test_markdown_latex_and_csv(report: Report, tmp_path: Path) -> None:
    md = _md_table(report.tables["main"]).splitlines()
    assert md[1] == "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    assert md[4] == (
        "| sparling | 0.9 | 3 | 2.00 [1.00-3.00] | 0.00 [0.00-0.00] | 6.00 [5.00-8.00] "
        "| 3.00 [2.00-4.00] | 0.00500 [0.00500-0.00500] | 3/3 |"
    )
    tex = _tex_table(report.tables["main"], "demo")
    assert "\\label{tab:demo:main}" in tex and "\\begin{tabular}{llrrrrrrr}" in tex
    assert (
        "l1(coefficient=2.0) & 0.9 & 2 (+1 failed) & 15.00 [10.00--20.00] & "
        "6.00 [5.00--7.00] & 25.00 [20.00--30.00] & 15.00 [10.00--20.00] & "
        "1.30 [1.20--1.40] & 0/2 \\\\"
    ) in tex.splitlines()

    path = tmp_path / "main.csv"
    _write_csv(report.tables["main"], path)
    rows = list(csv.DictReader(path.open()))
    assert [r["method"] for r in rows] == [L1_2, L1_10, SPARLING]
    assert (rows[0]["ce_mean_pct"], rows[0]["ce_low_pct"], rows[0]["ce_high_pct"]) == (
        "25.0",
        "20.0",
        "30.0",
    )
    assert rows[1]["fpe_mean_pct"] == "" and rows[2]["seeds"] == "0;1;2"


def test_report_files(report: Report) -> None:
    files = _write_tables(report, ("csv", "tex", "md"), {})
    out = report.out_dir
    names = ["main", "per_seed", "sensitivity-schedule_delta_update"]
    assert files == [
        *(out / f"{n}.csv" for n in names),
        *(out / f"{n}.tex" for n in names),
        out / "report.tex",
        out / "report.md",
    ]
    md = (out / "report.md").read_text()
    assert (
        "**Status: partial: 6 of 9 expected runs finished (1 failed, 1 running, 1 missing)**" in md
    )
    assert "s3cret" not in md and "https://me:***@mlflow.example:5000" in md
    assert (
        "- l1(coefficient=2.0) (schedule.delta_update=0.9) seed 2 [run l1(coefficient=2.0)-2]: NaN loss"
        in md
    )
    assert "Reached the domain's reported density (every seed): sparling (delta_update=0.9)." in md
    assert "\\input{per_seed.tex}" in (out / "report.tex").read_text()


# -- no MLflow ----------------------------------------------------------------------------

WITHOUT_MLFLOW = ("records", "stats", "tables", "writers")

CODE = """
import sys, tempfile
from pathlib import Path
from pipelines.report.records import Report, RunRecord, SweepCounts
from pipelines.report.stats import _group
from pipelines.report.tables import _tables, format_main_table
from pipelines.report.writers import _write_tables

runs = [
    RunRecord(f"m{s}", f"r{s}", "sparling", "digit-circle", s, {}, "finished", None,
              {"test_ce": 0.01 * s, "test_density": 5e-5})
    for s in range(3)
]
with tempfile.TemporaryDirectory() as out:
    report = Report("sqlite:///x.db", "exp", "demo", "p", [], runs, _group(runs, []), {}, {},
                    SweepCounts(3, 3, 3, 0, 0), Path(out))
    report.tables = _tables(report)
    format_main_table(report)
    assert len(_write_tables(report, ("md", "csv", "tex"), {})) == 6
print(",".join(m for m in ("mlflow", "ray") if m in sys.modules) or "none")
"""


def test_stats_tables_and_writers_run_without_mlflow() -> None:
    done = run_python("-c", CODE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


@pytest.mark.parametrize("name", WITHOUT_MLFLOW)
def test_no_mlflow_import_even_inside_a_function(name: str) -> None:
    """Neither mlflow nor the module that reads MLflow, not even imported lazily."""
    tree = ast.parse((REPO / "pipelines" / "report" / f"{name}.py").read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
    assert imported, name
    for module in imported:
        assert module.split(".")[0] != "mlflow", (name, module)
        assert module not in ("pipelines.report.collect", ".collect", "pipelines.report"), (
            name,
            module,
        )


def test_a_run_counts_once_per_density_with_its_last_values() -> None:
    """Many validations at one density (E2EE at each, the motif errors only with the
    density's checkpoint): one point per density, each error's last value there."""
    history = (
        CurvePoint(density=0.5, means={"e2ee": 0.9}, n=1),
        CurvePoint(density=0.5, means={"e2ee": 0.3}, n=1),
        CurvePoint(density=0.5, means={"e2ee": 0.2, "fpe": 0.6}, n=1),
        CurvePoint(density=0.25, means={"e2ee": 0.1, "fpe": 0.2}, n=1),
    )
    runs = [_run(SPARLING, s, history=history) for s in (0, 1)]
    (group,) = _group(runs, [FIELD])
    curve = _curve(group)
    assert [p.n for p in curve] == [2, 2]
    assert curve[0].means == pytest.approx({"e2ee": 0.2, "fpe": 0.6})
    assert curve[1].means == pytest.approx({"e2ee": 0.1, "fpe": 0.2})
