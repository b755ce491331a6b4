"""Sweep reports: a synthetic sweep logged to a real MLflow store, read back and checked.

The store (SQLite plus an artifact folder) is built once per module through
``MlflowClient`` exactly as the sweep driver logs a sweep: one parent run per sweep,
one child run per training run, with known test metrics and validation histories.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import read_only

from pipelines.report import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    Report,
    build_report,
    format_main_table,
    log_report,
    report_command,
)
from pipelines.tracking.metrics import RECORD_TO_METRIC
from sparling.errors import SparlingError
from sparling.metrics import bootstrap_ci

EXPERIMENT = "sparling-report-test"
SWEEP = "ast-sensitivity"
FIELD = "schedule.delta_update"
STEM = "schedule_delta_update"  # FIELD in file names
METHODS = ("sparling", "sparling-st", "l1(coefficient=1.0)")
VALUES = (0.75, 0.9)
SEEDS = (0, 1, 2)
MISSING = ("sparling-st", 0.9, 2)  # in the sweep file, never logged
FAILED = ("l1(coefficient=1.0)", 0.75, 1)
FAILURE = "NaN loss at 12000 training samples"
RUNNING = ("sparling", 0.9, 2)
NAN_FPE = ("sparling-st", 0.75, 0)  # FPE undefined (nothing predicted)
VAL_DENSITY_STEPS = 4


def _test_metrics(mi: int, vi: int, seed: int) -> dict[str, float]:
    """Known, distinct test metrics for method ``mi``, swept value ``vi``, ``seed``."""
    m = {
        "test_fpe": 0.01 * (mi + 1) + 0.003 * seed + 0.02 * vi,
        "test_fne": 0.005 * (mi + 1) + 0.001 * seed**2 + 0.01 * vi,
        "test_ce": 0.02 * (mi + 1) + 0.011 * seed + 0.05 * vi,
        "test_e2ee": 0.007 * (mi + 1) + 0.002 * seed + 0.001 * vi,
        "test_accuracy": 0.99 - 0.01 * seed,
        "test_density": 5e-5 * (1 + 0.1 * seed) + 1e-5 * vi,
        "test_checkpoint_density": 5e-5,
        # l1 never reaches the reported density; sparling-st misses it once
        "test_reached_reported": 0.0 if mi == 2 or (mi == 1 and seed == 1) else 1.0,
        "total_wall_seconds": 3600.0 + 60 * seed + 7,
    }
    if (METHODS[mi], VALUES[vi], seed) == NAN_FPE:
        m["test_fpe"] = math.nan
    return m


def _val(mi: int, vi: int, seed: int, k: int) -> dict[str, float]:
    """Validation errors at the k-th density step (all in [0, 1])."""
    return {
        "val_fpe": 0.5 * 0.8**k + 0.01 * seed,
        "val_fne": 0.3 * (1 - 0.9**k) + 0.002 * mi,
        "val_ce": 0.4 * 0.85**k + 0.01 * mi + 0.003 * seed,
        "val_e2ee": 0.3 * 0.9**k + 0.01 * vi,
    }


def _density(vi: int, k: int) -> float:
    return 0.5 * VALUES[vi] ** k


@dataclass
class Store:
    uri: str
    root: Path
    parent_id: str
    retry_parent_id: str
    runs: dict[tuple[str, float, int], str]  # (method, value, seed) -> status


def _log_child(
    client: Any,
    experiment_id: str,
    parent_id: str,
    *,
    run_id: str,
    method: str,
    seed: int,
    swept: dict[str, Any],
    status: str,
    metrics: list[Any],
    start_time: int,
    failure: str | None = None,
) -> None:
    from mlflow.entities import Param

    tags = {
        "mlflow.parentRunId": parent_id,
        "sparling.kind": "run",
        "sparling.run_id": run_id,
        "sparling.method": method,
        "sparling.domain": "digit-circle",
        "sparling.seed": str(seed),
        "sparling.swept": json.dumps(swept),
        "sparling.status": status,
    }
    if failure:
        tags["sparling.failure"] = failure
    run = client.create_run(experiment_id, start_time=start_time, tags=tags)
    params = [Param("seed", str(seed)), Param("bottleneck.name", method.split("(")[0])]
    params += [Param(k, str(v)) for k, v in swept.items()]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    if status != "running":
        client.set_terminated(run.info.run_id, "FINISHED" if status == "finished" else "FAILED")


#: How the runs name their metrics: as a sweep logs them now, as runs tracked before the
#: grouped names did (the record keys), and as a run resumed across the change does (the
#: old names for the first validations, the new ones after).
NAMINGS = ("new", "old", "resumed")


def _namer(naming: str) -> Any:
    """``name(key, step)``: the metric name of a record key logged at ``step``."""

    def name(key: str, step: int) -> str:
        if naming == "old" or (naming == "resumed" and step <= 4000):
            return key
        return RECORD_TO_METRIC[key]

    return name


@pytest.fixture(scope="module", params=NAMINGS)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Store:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    name = _namer(request.param)

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(
        exp,
        tags={
            "sparling.kind": "sweep",
            "sparling.sweep_name": SWEEP,
            "sparling.expected_runs": str(len(METHODS) * len(VALUES) * len(SEEDS)),
            "sparling.swept_fields": json.dumps([FIELD]),
        },
    )
    pid = parent.info.run_id
    runs: dict[tuple[str, float, int], str] = {}
    t = 1_700_000_000_000
    for mi, method in enumerate(METHODS):
        for vi, value in enumerate(VALUES):
            for seed in SEEDS:
                key = (method, value, seed)
                if key == MISSING:
                    continue
                status = {FAILED: "failed", RUNNING: "running"}.get(key, "finished")
                metrics = []
                for k in range(VAL_DENSITY_STEPS):
                    # Two validations per density step; the motif errors are logged at
                    # the second, which is where the density changes.
                    for step in (1000 * (2 * k + 1), 1000 * (2 * k + 2)):
                        metrics += [
                            Metric(name("density", step), _density(vi, k), t, step),
                            Metric(name("val_accuracy", step), 0.5 + 0.1 * k, t, step),
                            Metric(name("train_loss", step), 1.0 / (step + 1), t, step),
                        ]
                    if status != "failed" or k < 2:
                        metrics += [
                            Metric(name(n, step), v, t, step)
                            for n, v in _val(mi, vi, seed, k).items()
                        ]
                if status == "finished":
                    last = 1000 * 2 * VAL_DENSITY_STEPS
                    metrics += [
                        Metric(name(n, last), v, t, last)
                        for n, v in _test_metrics(mi, vi, seed).items()
                    ]
                _log_child(
                    client,
                    exp,
                    pid,
                    run_id=f"cfg{mi}{vi}{seed}",
                    method=method,
                    seed=seed,
                    swept={FIELD: value},
                    status=status,
                    metrics=metrics,
                    start_time=t,
                    failure=FAILURE if status == "failed" else None,
                )
                runs[key] = status
                t += 1000

    # A second, complete sweep in the same experiment with nothing swept: one run was
    # retried (a failed attempt, then a finished one under the same config hash).
    retry = client.create_run(
        exp,
        tags={
            "sparling.kind": "sweep",
            "sparling.sweep_name": "retry",
            "sparling.expected_runs": "2",
            "sparling.swept_fields": "[]",
        },
    )
    rid = retry.info.run_id
    for i, (method, status, start) in enumerate(
        [("sparling", "failed", t), ("sparling", "finished", t + 10), ("topk", "finished", t)]
    ):
        metrics = (
            [Metric(name(n, 8000), v, t, 8000) for n, v in _test_metrics(i % 2, 0, 0).items()]
            if status == "finished"
            else []
        )
        _log_child(
            client,
            exp,
            rid,
            run_id=f"retry-{method}",
            method=method,
            seed=0,
            swept={},
            status=status,
            metrics=metrics,
            start_time=start,
            failure="worker lost" if status == "failed" else None,
        )
    return Store(uri, root, pid, rid, runs)


@pytest.fixture(scope="module")
def report(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Report:
    return build_report(store.uri, EXPERIMENT, SWEEP, tmp_path_factory.mktemp("report"))


def _finished_values(method: str, value: float, metric: str) -> list[float]:
    mi, vi = METHODS.index(method), VALUES.index(value)
    out = []
    for seed in SEEDS:
        key = (method, value, seed)
        if key in (MISSING, FAILED, RUNNING):
            continue
        v = _test_metrics(mi, vi, seed)[metric]
        if not math.isnan(v):
            out.append(v)
    return out


# -- statistics ---------------------------------------------------------------------------


def test_groups_are_methods_by_swept_values(report: Report) -> None:
    assert [(g.method, g.swept[FIELD]) for g in report.groups] == [
        # natural order of the method labels, then the swept value
        (m, v)
        for m in ("l1(coefficient=1.0)", "sparling", "sparling-st")
        for v in VALUES
    ]


def test_group_means_equal_hand_computed_means(report: Report) -> None:
    for g in report.groups:
        value = g.swept[FIELD]
        for metric in ("fpe", "fne", "ce", "e2ee", "density"):
            expected = _finished_values(g.method, value, f"test_{metric}")
            iv = g.stats[metric]
            assert iv is not None
            assert iv.n == len(expected)
            assert iv.mean == pytest.approx(float(np.mean(expected)), rel=1e-12)
    by_key = {(g.method, g.swept[FIELD]): g for g in report.groups}
    # failed and running runs are not in the statistics; the NaN FPE is left out
    assert by_key[("l1(coefficient=1.0)", 0.75)].seeds == [0, 2]
    assert by_key[("sparling", 0.9)].seeds == [0, 1]
    nan_group = by_key[("sparling-st", 0.75)]
    assert nan_group.n_seeds == 3
    fpe = nan_group.stats["fpe"]
    assert fpe is not None and (fpe.n, fpe.omitted) == (2, 1)
    assert any("NaN" in n and "sparling-st" in n for n in report.notes)


def test_intervals_contain_the_mean_and_are_seeded(
    report: Report, store: Store, tmp_path: Path
) -> None:
    again = build_report(store.uri, EXPERIMENT, SWEEP, tmp_path, formats=("csv",))
    for g, h in zip(report.groups, again.groups, strict=True):
        for metric, iv in g.stats.items():
            assert iv is not None
            assert iv.low <= iv.mean <= iv.high
            assert h.stats[metric] == iv  # deterministic
            values = _finished_values(g.method, g.swept[FIELD], f"test_{metric}")
            assert (iv.mean, iv.low, iv.high) == bootstrap_ci(
                values, n_resamples=N_RESAMPLES, seed=BOOTSTRAP_SEED
            )
    # the tables hold no MLflow run ids or times: the same results give the same files
    for name in ("main.csv", "per_seed.csv"):
        assert (tmp_path / name).read_text() == (report.out_dir / name).read_text()
    # with 3 distinct seeds the interval is not degenerate
    ce = report.groups[2].stats["ce"]
    assert ce is not None and ce.low < ce.mean < ce.high


def test_reached_reported_density(report: Report) -> None:
    by_key = {(g.method, g.swept[FIELD]): g for g in report.groups}
    assert by_key[("sparling", 0.75)].reached_reported
    assert not by_key[("l1(coefficient=1.0)", 0.75)].reached_reported
    assert by_key[("sparling-st", 0.75)].reached == 2  # seed 1 missed it
    assert "2/3" in format_main_table(report)


def test_partial_sweep_counts(report: Report) -> None:
    c = report.counts
    assert (c.expected, c.present, c.finished, c.failed, c.running, c.missing) == (
        18,
        17,
        15,
        1,
        1,
        1,
    )
    assert report.partial
    assert c.describe() == (
        "partial: 15 of 18 expected runs finished (1 failed, 1 running, 1 missing)"
    )
    md = (report.out_dir / "report.md").read_text()
    header = md.split("## Main table")[0]
    assert "partial: 15 of 18 expected runs finished (1 failed, 1 running, 1 missing)" in header


def test_failed_run_listed_with_reason(report: Report) -> None:
    [failed] = report.failed
    assert (failed.method, failed.swept[FIELD], failed.seed) == FAILED
    assert failed.failure == FAILURE
    md = (report.out_dir / "report.md").read_text()
    failed_section = md.split("## Failed runs")[1].split("##")[0]
    assert f"l1(coefficient=1.0) (schedule.delta_update=0.75) seed 1 [run cfg201]: {FAILURE}" in (
        failed_section
    )


def test_sensitivity_table_rows(report: Report) -> None:
    assert list(report.sensitivity) == [FIELD]
    rows = [(g.method, g.swept[FIELD]) for g in report.sensitivity[FIELD]]
    assert rows == [(g.method, g.swept[FIELD]) for g in report.groups]  # one field: same groups
    table = report.tables[f"sensitivity-{STEM}"]
    assert table.columns[:3] == ("method", FIELD, "seeds")
    # the seeds column counts finished seeds and says what else the group holds
    seeds = {
        ("l1(coefficient=1.0)", 0.75): "2 (+1 failed)",
        ("sparling", 0.9): "2 (+1 running)",
    }
    assert [r[:3] for r in table.rows] == [
        (m, f"{v:g}", seeds.get((m, v), str(len(_finished_values(m, v, "test_ce")))))
        for m in ("l1(coefficient=1.0)", "sparling", "sparling-st")
        for v in VALUES
    ]


def test_validation_curves_pair_errors_with_density(report: Report) -> None:
    curve = report.curves["sparling (delta_update=0.75)"]
    assert [p.density for p in curve] == pytest.approx(
        [_density(0, k) for k in range(VAL_DENSITY_STEPS)]
    )
    for k, point in enumerate(curve):
        # finished seeds 0, 1, 2 of (sparling, 0.75)
        expected = np.mean([_val(1 - 1, 0, s, k)["val_ce"] for s in SEEDS])
        assert point.n == 3
        assert point.means["ce"] == pytest.approx(expected)


def test_runs_whose_density_ast_did_not_set_have_no_density_curve(report: Report) -> None:
    # l1 logged the schedule's density and errors at every step, as every run does
    assert report.curves.get("sparling-st (delta_update=0.75)")
    assert not [k for k, curve in report.curves.items() if k.startswith("l1") and curve]
    from pipelines.report.collect import driven_by_ast

    assert driven_by_ast({"bottleneck.name": "topk", "schedule.enabled": "True"})
    assert not driven_by_ast({"bottleneck.name": "sparling", "schedule.enabled": "False"})
    assert not driven_by_ast({"bottleneck.name": "non-sparse"})  # Non-sparse, Retrained
    assert not driven_by_ast({})


def test_single_seed_and_retried_runs(store: Store, tmp_path: Path) -> None:
    r = build_report(store.uri, EXPERIMENT, "retry", tmp_path, formats=("md",))
    assert not r.partial and r.counts.describe() == "complete: 2 of 2 expected runs finished"
    assert [(x.method, x.status) for x in r.runs] == [
        ("sparling", "finished"),
        ("topk", "finished"),
    ]
    assert any("2 attempts" in n for n in r.notes)
    assert r.sensitivity == {}
    text = format_main_table(r)
    assert "[" not in text  # one seed: the value, no interval
    assert "complete" in (tmp_path / "report.md").read_text().split("## Main table")[0]


# -- files --------------------------------------------------------------------------------


def test_main_table_format(report: Report) -> None:
    text = format_main_table(report)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["method", FIELD, "seeds"]
    row = next(line for line in lines if line.startswith("sparling ") and " 0.75 " in line)
    iv = report.groups[2].stats["fpe"]
    assert iv is not None
    assert f"{100 * iv.mean:.2f} [{100 * iv.low:.2f}-{100 * iv.high:.2f}]" in row
    assert re.search(r"\d+\.\d\d \[\d+\.\d\d-\d+\.\d\d\]", row)


def test_files_in_each_format(report: Report) -> None:
    out = report.out_dir
    stem = f"sensitivity-{STEM}"
    for name in ("main", "per_seed", stem):
        assert (out / f"{name}.csv").is_file()
        assert (out / f"{name}.tex").is_file()
    assert (out / "report.md").is_file() and (out / "report.tex").is_file()
    assert set(report.files) >= {out / "report.md", out / "main.csv", out / "main.tex"}

    import csv

    with (out / "main.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    row = next(r for r in rows if r["method"] == "sparling" and r[FIELD] == "0.75")
    assert float(row["ce_mean_pct"]) == pytest.approx(
        100 * np.mean(_finished_values("sparling", 0.75, "test_ce"))
    )
    with (out / "per_seed.csv").open() as f:
        per_seed = list(csv.DictReader(f))
    assert len(per_seed) == 17
    failed = next(r for r in per_seed if r["status"] == "failed")
    assert failed["failure"] == FAILURE and failed["ce_pct"] == ""

    md = (out / "report.md").read_text()
    for heading in ("## Main table", "## Failed runs", f"## Sensitivity: {FIELD}", "## Per-seed"):
        assert heading in md
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    assert len(re.findall(r"!\[", md)) == 4


def _check_latex(text: str) -> None:
    """Structural LaTeX checks (no TeX on this machine): environments, braces, cells."""
    body = "\n".join(line for line in text.splitlines() if not line.startswith("%"))
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{([^}]*)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"unbalanced \\end{{{env}}}"
    assert not stack, f"unclosed environments {stack}"
    # File names and label keys are not typeset: "_" is fine there.
    body = re.sub(r"\\(input|label|includegraphics(\[[^]]*\])?)\{[^}]*\}", "", body)
    unescaped = re.sub(r"\\[{}]", "", body)
    assert unescaped.count("{") == unescaped.count("}")
    assert not re.search(r"(?<!\\)[%_&#$]", re.sub(r"\\\\|&", "", body)), "unescaped special"
    for spec, table in re.findall(
        r"\\begin\{tabular\}\{([lr]+)\}(.*?)\\end\{tabular\}", body, re.S
    ):
        rows = [r for r in table.split("\\\\") if r.strip() and "rule" not in r.strip()]
        for r in rows:
            r = re.sub(r"\\(top|mid|bottom)rule", "", r)
            if r.strip():
                assert len(re.findall(r"(?<!\\)&", r)) == len(spec) - 1, r
        assert "\\toprule" in table and "\\midrule" in table and "\\bottomrule" in table


def test_latex_is_well_formed(report: Report) -> None:
    for path in report.out_dir.glob("*.tex"):
        _check_latex(path.read_text())
    main = (report.out_dir / "main.tex").read_text()
    assert "l1(coefficient=1.0)" in main and "FPE (\\%)" in main
    assert re.search(r"\d\.\d\d \[\d\.\d\d--\d+\.\d\d\]", main)  # en dash in LaTeX
    doc = (report.out_dir / "report.tex").read_text()
    assert "\\input{main.tex}" in doc and "\\usepackage{booktabs}" in doc


def test_plots_are_pngs(report: Report) -> None:
    from matplotlib.image import imread

    plots = sorted((report.out_dir / "plots").glob("*.png"))
    assert [p.name for p in plots] == [
        "ce_by_method.png",
        "error_vs_density.png",
        "errors_per_method.png",
        f"sensitivity-{STEM}.png",
    ]
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = imread(p)
        assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
        assert image.std() > 0.01  # something was drawn


def test_report_command_prints_and_logs(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    out = tmp_path / "cli"
    text = report_command(store.uri, EXPERIMENT, SWEEP, out, ("md", "csv"))
    first = text.splitlines()[0]
    assert "PARTIAL: 15 of 18 expected runs finished (1 failed, 1 running, 1 missing)" in first
    assert FAILURE in text and "Failed runs:" in text
    assert "method" in text and "E2EE (%)" in text
    assert not list(out.glob("*.tex"))  # only the formats asked for

    client = MlflowClient(tracking_uri=store.uri)
    # the per-seed table as an MLflow table too: made again, it is replaced, not doubled
    report_command(store.uri, EXPERIMENT, SWEEP, out, ("md",))
    exp = client.get_run(store.parent_id).info.experiment_id
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # load_table searches the default
    table = client.load_table(exp, "report/per_seed_table.json", run_ids=[store.parent_id])
    with (out / "per_seed.csv").open() as f:
        header = next(iter(__import__("csv").reader(f)))
    assert list(table.columns) == header and len(table) == 17
    row = table[(table["method"] == "sparling") & (table["seed"] == 1)].iloc[0]
    assert row["ce_pct"] == pytest.approx(100 * _test_metrics(0, 0, 1)["test_ce"])
    logged = {a.path for a in client.list_artifacts(store.parent_id, "report")}
    assert {"report/report.md", "report/main.csv", "report/plots"} <= logged
    plots = {a.path for a in client.list_artifacts(store.parent_id, "report/plots")}
    assert "report/plots/ce_by_method.png" in plots


# -- bad input ----------------------------------------------------------------------------


def test_an_unwritable_out_is_refused_before_anything_is_read_or_logged(
    store: Store, tmp_path: Path
) -> None:
    """A read-only ``--out`` (or a file there): the path and the cause, said before the
    sweep is read back, and nothing made or logged."""
    from mlflow import MlflowClient

    from sparling.errors import describe_os_error

    client = MlflowClient(tracking_uri=store.uri)
    logged = {a.path for a in client.list_artifacts(store.parent_id)}
    ro = tmp_path / "ro"
    ro.mkdir()
    with read_only(ro):
        with pytest.raises(OSError) as refused:
            report_command(store.uri, EXPERIMENT, SWEEP, ro / "out")
        assert (
            describe_os_error(refused.value) == f"cannot write {ro / 'out'}: Read-only file system"
        )
        assert not (ro / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as refused:
        report_command(store.uri, EXPERIMENT, SWEEP, tmp_path / "file")
    assert (
        describe_os_error(refused.value)
        == f"{tmp_path / 'file'} is a file, where a folder is expected"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"]
    assert {a.path for a in client.list_artifacts(store.parent_id)} == logged


def test_unknown_sweep_lists_the_sweeps_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SparlingError, match=r"no sweep 'nope'.*'ast-sensitivity', 'retry'"):
        build_report(store.uri, EXPERIMENT, "nope", tmp_path)


def test_missing_experiment_lists_experiments(store: Store, tmp_path: Path) -> None:
    with pytest.raises(SparlingError, match=rf"no experiment 'nope'.*'{EXPERIMENT}'"):
        build_report(store.uri, "nope", SWEEP, tmp_path)


def test_missing_store_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "typo.db"
    with pytest.raises(SparlingError, match="no MLflow tracking store"):
        build_report(f"sqlite:///{db}", EXPERIMENT, SWEEP, tmp_path / "out")
    assert not db.exists()


def test_bad_formats_and_log_targets(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="formats must be some of"):
        build_report(store.uri, EXPERIMENT, SWEEP, tmp_path, formats=("pdf",))
    with pytest.raises(SparlingError, match="no report to log"):
        log_report(store.uri, store.parent_id, tmp_path / "empty")
    (tmp_path / "x.md").write_text("x")
    with pytest.raises(SparlingError, match="no MLflow run"):
        log_report(store.uri, "0" * 32, tmp_path)


def test_sensitivity_pools_over_the_other_swept_fields() -> None:
    from pipelines.report import RunRecord, _group

    def run(method: str, a: float, b: str, seed: int, ce: float) -> RunRecord:
        return RunRecord(
            mlflow_run_id=f"m{method}{a}{b}{seed}",
            run_id=f"{method}{a}{b}{seed}",
            method=method,
            domain="digit-circle",
            seed=seed,
            swept={"a": a, "b": b},
            status="finished",
            failure=None,
            metrics={"test_ce": ce},
        )

    runs = [
        run(m, a, b, s, ce=0.01 * s + (0.1 if a == 2.0 else 0) + (0.2 if b == "y" else 0))
        for m in ("topk", "sparling")
        for a in (10.0, 2.0)
        for b in ("x", "y")
        for s in (0, 1)
    ]
    by_a = _group(runs, ["a"])
    assert [(g.method, g.swept) for g in by_a] == [
        ("sparling", {"a": 2.0}),  # numeric order of the values, not text order
        ("sparling", {"a": 10.0}),
        ("topk", {"a": 2.0}),
        ("topk", {"a": 10.0}),
    ]
    ce = by_a[0].stats["ce"]
    assert by_a[0].n_seeds == 4 and ce is not None  # both values of b pooled
    assert ce.mean == pytest.approx(np.mean([0.1, 0.11, 0.3, 0.31]))
    assert by_a[0].stats["fpe"] is None  # never logged: n/a, not an error
    assert len(_group(runs, ["a", "b"])) == 8


def test_passwords_in_the_tracking_uri_are_not_written(report: Report) -> None:
    from pipelines.tracking.redaction import redact_uri as _redact

    assert (
        _redact("https://me:s3cret@mlflow.example:5000/x") == "https://me:***@mlflow.example:5000/x"
    )
    assert _redact(report.tracking_uri) == report.tracking_uri
    with pytest.raises(SparlingError) as e:
        build_report("file://me:s3cret@localhost/nowhere", EXPERIMENT, SWEEP, Path("unused"))
    assert "s3cret" not in str(e.value)


def test_one_at_a_time_sensitivity_compares_each_value_with_the_base_runs() -> None:
    """A ``vary`` axis: runs that vary another field are left out of a field's table."""
    from pipelines.report import RunRecord, _balanced, _group, _param

    def run(m: float, d: float, seed: int) -> RunRecord:
        return RunRecord(
            mlflow_run_id=f"r{m}{d}{seed}",
            run_id=f"{m}{d}{seed}",
            method="sparling",
            domain="digit-circle",
            seed=seed,
            swept={"m": m, "d": d},
            status="finished",
            failure=None,
            metrics={"test_ce": m + d},
        )

    base = [run(0.1, 0.75, s) for s in (0, 1)]
    vary_m = [run(m, 0.75, s) for m in (0.03, 0.3) for s in (0, 1)]
    vary_d = [run(0.1, d, s) for d in (0.5, 0.9) for s in (0, 1)]
    runs = base + vary_m + vary_d
    by_m = _group(_balanced(runs, "m", ["m", "d"]), ["m"])
    assert [(g.swept["m"], g.n_seeds) for g in by_m] == [(0.03, 2), (0.1, 2), (0.3, 2)]
    mid = by_m[1].stats["ce"]
    assert mid is not None and mid.mean == pytest.approx(0.85)  # the base runs only
    by_d = _group(_balanced(runs, "d", ["m", "d"]), ["d"])
    assert [(g.swept["d"], g.n_seeds) for g in by_d] == [(0.5, 2), (0.75, 2), (0.9, 2)]
    # pooling everything would have put 6 runs at m=0.1
    assert [g.n_seeds for g in _group(runs, ["m"])] == [2, 6, 2]
    # params are JSON text (strings as they are); a run's unvaried field is read from them
    assert _param({"schedule.delta_update": "0.75"}, "schedule.delta_update") == 0.75
    assert _param({"bottleneck.name": "sparling"}, "bottleneck.name") == "sparling"
    assert _param({}, "x") is None and _param(None, "x") is None


# -- the runs as a DataFrame ----------------------------------------------------------------


def test_runs_frame_has_a_row_per_run_with_config_metrics_and_tags(store: Store) -> None:
    from pipelines.report import runs_frame

    df = runs_frame(SWEEP, tracking_uri=store.uri, experiment=EXPERIMENT)
    assert len(df) == 17 and df["run_id"].is_unique
    assert list(df.columns[:8]) == [
        "run_id",
        "mlflow_run_id",
        "method",
        "domain",
        "seed",
        "status",
        "failure",
        "start_time",
    ]
    assert df["status"].value_counts().to_dict() == {"finished": 15, "failed": 1, "running": 1}
    # config values as they were (floats, not MLflow's text)
    assert set(df[f"config.{FIELD}"]) == set(VALUES)
    # metrics under the current names, whatever names the runs were tracked under
    assert not [c for c in df.columns if c.startswith("metrics.") and "/" not in c]
    for mi, method in enumerate(METHODS):
        for vi, value in enumerate(VALUES):
            for seed in SEEDS:
                rows = df[
                    (df.method == method) & (df[f"config.{FIELD}"] == value) & (df.seed == seed)
                ]
                key = (method, value, seed)
                if key == MISSING:
                    assert rows.empty
                    continue
                assert len(rows) == 1
                r = rows.iloc[0]
                assert r["tags.sparling.method"] == method
                if r["status"] == "finished":
                    expected = _test_metrics(mi, vi, seed)
                    assert r["metrics.test/e2ee"] == pytest.approx(expected["test_e2ee"])
                    assert r["metrics.time/total_wall_seconds"] == expected["total_wall_seconds"]
                else:
                    assert math.isnan(r["metrics.test/ce"])
    failed = df[df.status == "failed"].iloc[0]
    assert failed["failure"] == FAILURE
    assert df.attrs["counts"] == {
        "expected": 18,
        "present": 17,
        "finished": 15,
        "failed": 1,
        "running": 1,
        "stopped": 0,
        "missing": 1,
    }
    assert df.attrs["swept_fields"] == [FIELD] and df.attrs["parent_run_id"] == store.parent_id
    # a groupby gives the report's means: sparling's finished runs at both values
    finished = df[df.status == "finished"]
    sparling = [
        _test_metrics(0, vi, seed)["test_ce"]
        for vi, value in enumerate(VALUES)
        for seed in SEEDS
        if ("sparling", value, seed) != RUNNING
    ]
    by_method = finished.groupby("method")["metrics.test/ce"].mean()
    assert by_method["sparling"] == pytest.approx(np.mean(sparling))


def test_runs_frame_of_an_unknown_sweep_lists_the_sweeps(store: Store) -> None:
    from pipelines.report import runs_frame

    with pytest.raises(SparlingError, match=r"no sweep 'nope'.*'ast-sensitivity', 'retry'"):
        runs_frame("nope", tracking_uri=store.uri, experiment=EXPERIMENT)


def test_the_report_is_made_from_the_runs_frame(report: Report, store: Store) -> None:
    from pipelines.report import runs_frame

    df = runs_frame(SWEEP, tracking_uri=store.uri, experiment=EXPERIMENT)
    assert report.frame is not None and report.frame.equals(df)
    assert report.frame.attrs["counts"] == df.attrs["counts"]
    assert list(df[f"swept.{FIELD}"]) == [r.swept[FIELD] for r in report.runs]
    # the main table's means are the frame's groupby means of the finished runs ...
    finished = df[df.status == "finished"]
    for metric in ("fpe", "ce", "density"):
        means = finished.groupby(["method", f"swept.{FIELD}"])[f"metrics.test/{metric}"].mean()
        for g in report.groups:
            iv = g.stats[metric]
            assert iv is not None
            assert iv.mean == pytest.approx(means[(g.method, g.swept[FIELD])], rel=1e-12)
    # ... and the per-seed table's rows are the frame's rows, in its order
    per_seed = report.tables["per_seed"]
    run_col = per_seed.csv_columns.index("run_id")
    ce_col = per_seed.csv_columns.index("ce_pct")
    assert [row[run_col] for row in per_seed.csv_rows] == list(df.run_id)
    for row, ce in zip(per_seed.csv_rows, df["metrics.test/ce"], strict=True):
        assert (row[ce_col] is None) == math.isnan(ce)
        if row[ce_col] is not None:
            assert row[ce_col] == pytest.approx(100 * ce)


def test_a_run_told_to_stop_is_reported_stopped_not_running(tmp_path: Path) -> None:
    """A child left KILLED with its status tag still ``running`` (stopped by a deadline
    or a signal, or never started before the stop) is a resumable, stopped run: the
    counts, the seeds cell and the per-seed status say so, not "running"."""
    from mlflow import MlflowClient

    from pipelines.report.collect import read_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("stops", artifact_location=(tmp_path / "a").as_uri())
    parent = client.create_run(
        exp,
        tags={
            "sparling.kind": "sweep",
            "sparling.sweep_name": "stops",
            "sparling.expected_runs": "3",
            "sparling.swept_fields": json.dumps([]),
        },
    )
    pid = parent.info.run_id
    for seed, status in enumerate(("finished", "running", "running")):
        _log_child(
            client, exp, pid, run_id=f"r{seed}", method="sparling", seed=seed, swept={},
            status=status, metrics=[], start_time=1_700_000_000_000 + seed,
        )  # fmt: skip
    [killed] = client.search_runs([exp], "tags.`sparling.run_id` = 'r1'")
    client.set_terminated(killed.info.run_id, "KILLED")
    notes: list[str] = []
    sweep = read_sweep(uri, "stops", "stops", notes)
    statuses = {r.run_id: r.status for r in sweep.runs}
    assert statuses == {"r0": "finished", "r1": "stopped", "r2": "running"}
    assert sweep.counts.describe() == (
        "partial: 1 of 3 expected runs finished (1 running, 1 stopped)"
    )
