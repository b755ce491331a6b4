"""The report's plots (PNG, drawn with matplotlib, imported when a plot is drawn):
validation errors against density, per group and per method; test CE per group with
its interval; and, per swept field, the test errors against its values.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.report.records import ERRORS, LABEL, GroupSummary, Report, _fmt_value
from pipelines.report.stats import CONFIDENCE, _value_key
from pipelines.report.tables import _sensitivity_name

if TYPE_CHECKING:
    from matplotlib.axes import Axes

_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _method_colours(groups: Sequence[GroupSummary]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    methods = list(dict.fromkeys(g.method for g in groups))
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _percent_ticks(ax: Axes) -> None:
    """Plain numbers (``0.01``, ``50``) on a log axis instead of ``10^-2``, ``5x10^1``."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    low, high = sorted(ax.get_xlim())
    # Within one decade there are too few major ticks, so label the minor ones too.
    ax.xaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())


def _plot_error_vs_density(report: Report, path: Path) -> bool:
    from matplotlib.figure import Figure

    curves = [(g, report.curves.get(g.label, [])) for g in report.groups]
    curves = [(g, c) for g, c in curves if c]
    if not curves:
        return False
    colours = _method_colours(report.groups)
    # Colour = method, line style = combination of swept values.
    combos = list(dict.fromkeys(json.dumps(g.swept, sort_keys=True) for g, _ in curves))
    fig = Figure(figsize=(11, 7), layout="constrained")
    axes = fig.subplots(2, 2, sharex=True)
    for ax, m in zip(axes.flat, ERRORS):
        for g, curve in curves:
            points = [(p.density, p.means[m]) for p in curve if m in p.means]
            if not points:
                continue
            xs, ys = zip(*points)
            style = _STYLES[combos.index(json.dumps(g.swept, sort_keys=True)) % len(_STYLES)]
            ax.plot(
                [100 * x for x in xs],
                [100 * y for y in ys],
                style,
                marker="o",
                markersize=3,
                color=colours[g.method],
                label=g.label,
            )
        ax.set_xscale("log")
        _percent_ticks(ax)
        ax.set_title(f"validation {LABEL[m]}")
        ax.set_ylabel(f"{LABEL[m]} (%)")
        ax.grid(True, which="both", alpha=0.3)
    # Once, not per axis: the axes share x, and each inversion would undo the last.
    # Training goes from dense to sparse, so the curves then read left to right.
    axes[0, 0].invert_xaxis()
    for ax in axes[1]:
        ax.set_xlabel("density trained at (%, log scale; training runs left to right)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(3, len(labels)), fontsize="small"
    )
    fig.suptitle(f"Sweep {report.sweep_name}: validation errors against density (mean over seeds)")
    fig.savefig(path, dpi=110)
    return True


def _plot_errors_per_method(report: Report, path: Path) -> bool:
    """One panel per method (and swept values): FPE, FNE, CE and E2EE against the density
    trained at, mean over seeds, as the paper draws each domain."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    curves = [(g, report.curves.get(g.label, [])) for g in report.groups]
    curves = [(g, c) for g, c in curves if c]
    if not curves:
        return False
    cols = min(3, len(curves))
    rows = -(-len(curves) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = colormaps["tab10"]
    for ax, (g, curve) in zip(axes.flat, curves):
        for i, m in enumerate(ERRORS):
            points = [(p.density, p.means[m]) for p in curve if m in p.means]
            if points:
                xs, ys = zip(*points)
                ax.plot(
                    [100 * x for x in xs],
                    [100 * y for y in ys],
                    marker="o",
                    markersize=2.5,
                    color=colours(i),
                    label=LABEL[m],
                )
        ax.set_xscale("log")
        ax.invert_xaxis()
        _percent_ticks(ax)
        ax.set_ylim(-2, 102)
        n = max((p.n for p in curve), default=0)
        ax.set_title(f"{g.label} ({n} seed{'s' if n != 1 else ''})", fontsize=10)
        ax.set_xlabel("density trained at (%, log scale)")
        ax.set_ylabel("validation error (%)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper right")
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    # two lines: a one-method figure is a single panel wide
    fig.suptitle(
        f"Sweep {report.sweep_name}:\nerrors against density per method (mean over seeds)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    return True


def _plot_ce(report: Report, path: Path) -> bool:
    from matplotlib.figure import Figure

    groups = [g for g in report.groups if g.stats["ce"] is not None]
    if not groups:
        return False
    colours = _method_colours(report.groups)
    # Horizontal: group labels such as "l1(coefficient=1.0) (delta_update=0.75)" stay
    # readable however many groups there are, in the main table's order top to bottom.
    # Wide enough for the longest label beside a readable axis.
    width = max(9.0, 5.0 + 0.075 * max(len(g.label) for g in groups))
    fig = Figure(figsize=(width, 1.6 + 0.45 * len(groups)), layout="constrained")
    ax = fig.subplots()
    for y, g in enumerate(groups):
        iv = g.stats["ce"]
        assert iv is not None
        ax.errorbar(
            [100 * iv.mean],
            [y],
            xerr=[[100 * (iv.mean - iv.low)], [100 * (iv.high - iv.mean)]],
            fmt="o",
            capsize=4,
            color=colours[g.method],
        )
        ax.annotate(
            f"{100 * iv.mean:.2f} (n={iv.n})",
            (100 * iv.high, y),
            textcoords="offset points",
            xytext=(6, 0),
            va="center",
            fontsize="small",
        )
    ax.set_yticks(range(len(groups)), [g.label for g in groups])
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xlim(left=0)
    ax.margins(x=0.15)
    ax.set_xlabel("test CE (%)")
    # On the figure, not the axes: a title over the axes alone is cut off when the
    # labels take most of the width.
    fig.suptitle(
        f"Sweep {report.sweep_name}: classification error (CE) per group\n"
        f"mean over seeds, {CONFIDENCE:.0%} bootstrap interval"
    )
    ax.grid(True, axis="x", alpha=0.3)
    fig.savefig(path, dpi=110)
    return True


def _plot_sensitivity(report: Report, f: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    groups = report.sensitivity[f]
    values = sorted(
        {json.dumps(g.swept[f]) for g in groups}, key=lambda s: _value_key(json.loads(s))
    )
    decoded = [json.loads(v) for v in values]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in decoded)
    # Numbers on a real axis (log when they span a factor of 20 or more), anything else
    # as evenly spaced categories.
    log = numeric and min(decoded) > 0 and max(decoded) / min(decoded) >= 20
    position = {v: (json.loads(v) if numeric else i) for i, v in enumerate(values)}
    colours = _method_colours(groups)
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes: Sequence[Axes] = fig.subplots(1, len(ERRORS), sharex=True)
    drew = False
    for ax, m in zip(axes, ERRORS):
        for k, method in enumerate(dict.fromkeys(g.method for g in groups)):
            pts = [
                (position[json.dumps(g.swept[f])], iv)
                for g in groups
                if g.method == method and (iv := g.stats[m]) is not None
            ]
            if not pts:
                continue
            drew = True
            ax.errorbar(
                [x for x, _ in pts],
                [100 * iv.mean for _, iv in pts],
                yerr=[
                    [100 * (iv.mean - iv.low) for _, iv in pts],
                    [100 * (iv.high - iv.mean) for _, iv in pts],
                ],
                marker=_MARKERS[k % len(_MARKERS)],
                capsize=4,
                color=colours[method],
                label=method,
                alpha=0.85,
            )
        if log:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(values)), [_fmt_value(v) for v in decoded])
        else:
            ax.set_xticks(decoded, [_fmt_value(v) for v in decoded])
        ax.set_title(f"test {LABEL[m]}")
        ax.set_xlabel(f)
        ax.set_ylabel(f"{LABEL[m]} (%)")
        ax.grid(True, alpha=0.3)
    if not drew:
        return False
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize="small"
    )
    fig.suptitle(f"Sweep {report.sweep_name}: sensitivity to {f} (mean, {CONFIDENCE:.0%} interval)")
    fig.savefig(path, dpi=110)
    return True


def _plots(report: Report) -> dict[str, Path]:
    plot_dir = report.out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    path = plot_dir / "ce_by_method.png"
    if _plot_ce(report, path):
        written["ce_by_method"] = path
    path = plot_dir / "error_vs_density.png"
    if _plot_error_vs_density(report, path):
        written["error_vs_density"] = path
    path = plot_dir / "errors_per_method.png"
    if _plot_errors_per_method(report, path):
        written["errors_per_method"] = path
    for f in report.sensitivity:
        path = plot_dir / f"{_sensitivity_name(f)}.png"
        if _plot_sensitivity(report, f, path):
            written[f"sensitivity:{f}"] = path
    return written
