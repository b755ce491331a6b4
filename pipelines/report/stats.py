"""Summaries of a sweep's runs: groups by method and swept values, bootstrap intervals,
validation curves, and the order in which runs and groups are listed.

Only finished runs enter the statistics. Intervals are
:func:`sparling.metrics.bootstrap_ci` with :data:`N_RESAMPLES` resamples and seed
:data:`BOOTSTRAP_SEED`, so a report is reproducible; NaN rates (undefined, e.g. FPE of a
model that predicts nothing) are left out of a mean and counted in its :class:`Interval`.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.report.frame import column, records_frame
from pipelines.report.records import SUMMARY, CurvePoint, GroupSummary, Interval, RunRecord
from pipelines.tracking.metrics import TEST_REACHED_REPORTED
from sparling.metrics import bootstrap_ci

if TYPE_CHECKING:
    import pandas as pd

#: Bootstrap settings of every interval in a report (docs/method.md section 6).
N_RESAMPLES = 1000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def _summarise(values: Sequence[float]) -> Interval | None:
    kept = [v for v in values if not math.isnan(v)]
    if not kept:
        return None
    mean, low, high = bootstrap_ci(
        kept, n_resamples=N_RESAMPLES, confidence=CONFIDENCE, seed=BOOTSTRAP_SEED
    )
    return Interval(mean, low, high, n=len(kept), omitted=len(values) - len(kept))


_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _natural(text: str) -> tuple[Any, ...]:
    """Sort key putting ``l1(coefficient=2.0)`` before ``l1(coefficient=10.0)``."""
    parts: list[Any] = []
    pos = 0
    for m in _NUMBER.finditer(text):
        parts += [(0, text[pos : m.start()], 0.0), (1, "", float(m.group()))]
        pos = m.end()
    parts.append((0, text[pos:], 0.0))
    return tuple(parts)


def _value_key(v: Any) -> tuple[int, float, str]:
    """Numbers sort numerically, then anything else by its JSON text, then missing."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (0, float(v), "")
    if v is None:
        return (2, 0.0, "")
    return (1, 0.0, json.dumps(v, sort_keys=True))


def _run_key(r: RunRecord) -> tuple[Any, ...]:
    return (
        _natural(r.method),
        tuple(_value_key(v) for v in r.swept.values()),
        r.seed if r.seed is not None else math.inf,
        r.run_id,
    )


def _group(runs: Iterable[RunRecord], fields: Sequence[str]) -> list[GroupSummary]:
    """Group runs by method and the values of ``fields`` (pooling over any other field):
    :func:`groups_of` their frame."""
    runs = list(runs)
    return groups_of(records_frame(runs, fields), runs, fields)


def groups_of(
    frame: pd.DataFrame, runs: Sequence[RunRecord], fields: Sequence[str]
) -> list[GroupSummary]:
    """The groups of a sweep's frame (:func:`~pipelines.report.frame.records_frame`, row
    ``i`` being ``runs[i]``): its rows by ``method`` and ``swept.<field>`` for ``fields``,
    each group's statistics computed from its finished rows' ``metrics.test/*`` columns.
    The records give each group its runs (their validation curves, for the plots)."""
    # JSON text as the key: swept values may be lists or dicts (unhashable).
    keys = [
        json.dumps([frame.at[i, f"swept.{f}"] for f in fields], sort_keys=True) for i in frame.index
    ]
    out = []
    for (method, values), rows in frame.assign(_values=keys).groupby(
        ["method", "_values"], sort=False
    ):
        order = sorted(rows.index, key=lambda i: _run_key(runs[i]))
        rows = rows.loc[order]
        finished = rows[rows["status"] == "finished"]
        stats = {m: _summarise(column(finished, f"metrics.test/{m}")) for m in SUMMARY}
        reached = column(finished, f"metrics.{TEST_REACHED_REPORTED}")
        out.append(
            GroupSummary(
                method=str(method),
                swept=dict(zip(fields, json.loads(str(values)))),
                runs=tuple(runs[i] for i in order),
                stats=stats,
                reached=sum(v == 1.0 for v in reached),
            )
        )
    out.sort(key=lambda g: (_natural(g.method), tuple(_value_key(v) for v in g.swept.values())))
    return out


def _balanced(runs: Sequence[RunRecord], f: str, fields: Sequence[str]) -> list[RunRecord]:
    """The runs that compare values of ``f`` fairly: those whose method and other swept
    fields take values that occur with every value of ``f``.

    For crossed axes that is every run (pooled over the others); for a one-at-a-time
    ``vary`` axis it is the runs varying ``f`` and the base runs, not the runs that vary
    another field (whose ``f`` is the base value). If no combination of the others occurs
    with every value, all runs are pooled.
    """
    others = [o for o in fields if o != f]

    def rest(r: RunRecord) -> str:
        return json.dumps([r.method] + [r.swept.get(o) for o in others], sort_keys=True)

    values_of = defaultdict(set)
    every: dict[str, set[str]] = defaultdict(set)
    for r in runs:
        v = json.dumps(r.swept.get(f), sort_keys=True)
        every[r.method].add(v)
        values_of[rest(r)].add(v)
    keep = [r for r in runs if values_of[rest(r)] == every[r.method]]
    return keep or list(runs)


def _curve(group: GroupSummary) -> list[CurvePoint]:
    """Mean validation errors over the group's finished runs at each density, high to low.

    A run validates many times at one density; what it contributes there is each error's
    last value at that density (the one logged with that density's checkpoint, when the
    run moved on), so every run counts once per density and ``n`` counts runs."""
    # Densities follow the same schedule in every seed but may differ in the last bits
    # after a resume or on another machine: match them on 6 significant digits.
    pooled: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    densities: dict[float, list[float]] = defaultdict(list)
    for r in group.finished:
        last: dict[float, dict[str, float]] = defaultdict(dict)
        exact: dict[float, float] = {}
        for p in r.history:  # in step order: later values overwrite earlier ones
            key = float(f"{p.density:.6g}")
            exact[key] = p.density
            last[key].update({m: v for m, v in p.means.items() if not math.isnan(v)})
        for key, means in last.items():
            for m, v in means.items():
                pooled[key][m].append(v)
            densities[key].append(exact[key])
    return [
        CurvePoint(
            density=math.fsum(densities[d]) / len(densities[d]),
            means={m: math.fsum(v) / len(v) for m, v in pooled[d].items() if v},
            n=len(densities[d]),
        )
        for d in sorted(pooled, reverse=True)
    ]
