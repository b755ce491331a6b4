"""Evaluation metrics: motif errors (FPE, FNE, CE), end-to-end error, density, bootstrap CIs.

This implements docs/method.md section 6. The motif errors compare the output of ``g`` plus
the sparsity layer (one activation map per held-out input) with the ground-truth motifs
of that input (a symbol and a box per true motif):

>>> import numpy as np
>>> a = np.zeros((2, 4, 4), dtype=np.float32)
>>> a[1, 0, 0] = 0.7  # channel 1 fires inside the first box
>>> a[0, 3, 3] = 0.2  # channel 0 fires where there is no motif: a false positive
>>> motifs = [[("7", (slice(0, 2), slice(0, 2))), ("1", (slice(2, 3), slice(0, 2)))]]
>>> r = motif_errors([a], motifs, assignment="hungarian")
>>> r["fne"], r["fpe"], r["ce"], r["channel_to_symbol"]
(0.5, 0.5, 0.0, {1: '7'})

Edge cases (chosen so that a model which outputs nothing never looks perfect): a rate
whose denominator is zero is ``nan``, never 0. FNE is ``nan`` when there are no true
motifs; FPE is ``nan`` when there are no predictions at all (no matches and no false
positives); CE is ``nan`` when nothing was matched. :func:`bootstrap_ci` refuses ``nan``
unless told to omit it (the authors' code omitted it).

Nothing here imports Ray, MLflow or torch; torch tensors are accepted by duck typing.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rapidfuzz.distance import Levenshtein
from scipy.optimize import linear_sum_assignment

Assignment = Literal["hungarian", "majority"]
#: The accepted values of ``assignment`` in :func:`motif_errors`.
ASSIGNMENTS: tuple[str, ...] = ("hungarian", "majority")

__all__ = [
    "ASSIGNMENTS",
    "Assignment",
    "MotifErrors",
    "bootstrap_ci",
    "combine_motif_errors",
    "confusion_map",
    "edit_error",
    "end_to_end_error",
    "measured_density",
    "motif_errors",
]


# --------------------------------------------------------------------------------------
# Result type
# --------------------------------------------------------------------------------------


# eq=False: the fields hold an array and a dict, so generated __eq__/__hash__ would misbehave.
@dataclass(frozen=True, eq=False)
class MotifErrors:
    """The motif errors of one model on one evaluation set.

    Indexable like a dict (``r["fpe"]``); :meth:`to_dict` gives a JSON-able dict.

    Attributes:
        fpe: false-positive activations / (false positives + matched motifs).
        fne: missed motifs / true motifs.
        ce: share of matched motifs whose (channel, symbol) pair the best map does not
            explain.
        true_motifs, missed, matched, false_positives: the counts behind the rates
            (``true_motifs == missed + matched``).
        confusion: int64 array (channels x symbols) counting matched motifs by
            predicted channel (row) and true symbol (column).
        symbols: the symbol of each column of ``confusion``.
        channel_to_symbol: the map CE was measured against; only channels whose mapped
            symbol explains at least one match appear.
        assignment: ``"hungarian"`` or ``"majority"``.
    """

    fpe: float
    fne: float
    ce: float
    true_motifs: int
    missed: int
    matched: int
    false_positives: int
    confusion: NDArray[np.int64] = field(repr=False)
    symbols: tuple[str, ...]
    channel_to_symbol: dict[int, str]
    assignment: Assignment

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        return list(self.__dataclass_fields__)

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values only (the confusion table as nested lists), JSON-able."""
        return {
            "fpe": self.fpe,
            "fne": self.fne,
            "ce": self.ce,
            "true_motifs": self.true_motifs,
            "missed": self.missed,
            "matched": self.matched,
            "false_positives": self.false_positives,
            "confusion": self.confusion.tolist(),
            "symbols": list(self.symbols),
            "channel_to_symbol": dict(self.channel_to_symbol),
            "assignment": self.assignment,
        }

    def scalars(self) -> dict[str, float]:
        """The rates and counts as floats, e.g. for ``mlflow.log_metrics``."""
        keys = ("fpe", "fne", "ce", "true_motifs", "missed", "matched", "false_positives")
        return {k: float(getattr(self, k)) for k in keys}


def _ratio(numerator: int, denominator: int) -> float:
    # nan, not 0, for an empty denominator: see the module docstring.
    return numerator / denominator if denominator else math.nan


def confusion_map(confusion: ArrayLike, *, assignment: Assignment) -> tuple[dict[int, int], int]:
    """The best channel -> symbol-column map for a (channels x symbols) count table.

    Returns ``(map, explained)`` where ``explained`` is the number of matches the map
    explains. ``"hungarian"`` is one-to-one (scipy's ``linear_sum_assignment``);
    ``"majority"`` maps each channel to its most frequent column (ties: lowest column).
    Channels whose mapped column has count 0 are left out of the map.

    >>> confusion_map([[0, 5], [3, 1]], assignment="hungarian")
    ({0: 1, 1: 0}, 8)
    >>> confusion_map([[0, 5], [1, 3]], assignment="majority")
    ({0: 1, 1: 1}, 8)
    """
    _check_assignment(assignment)
    table = np.asarray(confusion)
    if table.ndim != 2:
        raise ValueError(f"confusion must be a 2-D (channels x symbols) table, got {table.shape}")
    if table.size == 0 or not table.any():
        return {}, 0
    if assignment == "hungarian":
        rows, cols = linear_sum_assignment(table, maximize=True)
    else:
        rows = np.flatnonzero(table.sum(axis=1))
        cols = table[rows].argmax(axis=1)  # argmax takes the first maximum: a stable tie-break
    mapping = {int(r): int(c) for r, c in zip(rows, cols) if table[r, c] > 0}
    explained = int(sum(int(table[r, c]) for r, c in mapping.items()))
    return mapping, explained


def _finish(
    confusion: NDArray[np.int64],
    symbols: tuple[str, ...],
    missed: int,
    false_positives: int,
    assignment: Assignment,
) -> MotifErrors:
    matched = int(confusion.sum())
    mapping, explained = confusion_map(confusion, assignment=assignment)
    return MotifErrors(
        fpe=_ratio(false_positives, false_positives + matched),
        fne=_ratio(missed, missed + matched),
        # matched - explained, not 1 - ratio, so that a perfect map gives exactly 0.0
        ce=_ratio(matched - explained, matched),
        true_motifs=missed + matched,
        missed=missed,
        matched=matched,
        false_positives=false_positives,
        confusion=confusion,
        symbols=symbols,
        channel_to_symbol={ch: symbols[col] for ch, col in sorted(mapping.items())},
        assignment=assignment,
    )


# --------------------------------------------------------------------------------------
# Input checking and conversion
# --------------------------------------------------------------------------------------


def _check_assignment(assignment: object) -> None:
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")


def _is_torch_tensor(x: object) -> bool:
    # Duck typing keeps torch out of this module's imports.
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def _to_numpy(x: Any) -> NDArray[Any]:
    if isinstance(x, np.ndarray):
        return x
    if _is_torch_tensor(x):
        t = x.detach().cpu()
        try:
            return np.asarray(t.numpy())
        except TypeError:  # bfloat16 and friends have no numpy dtype
            return np.asarray(t.float().numpy())
    return np.asarray(x)


def _check_values(a: NDArray[Any], name: str, *, nonnegative: bool = True) -> None:
    if a.dtype == np.bool_ or np.issubdtype(a.dtype, np.unsignedinteger):
        return
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers (float, int or bool), got dtype {a.dtype}")
    # min() propagates NaN, so one reduction finds both NaN and negative values
    # without a temporary mask.
    lowest = a.min() if a.size else 0.0
    if np.isnan(lowest):
        raise ValueError(f"{name} contains NaN; activations must be real numbers >= 0")
    if nonnegative and lowest < 0:
        raise ValueError(
            f"{name} has negative values (min {lowest}); activations must be the sparsity "
            "layer's output, which is >= 0"
        )


def _count_nonzero(a: NDArray[Any]) -> int:
    # count_nonzero(a != 0) is several times faster than count_nonzero(a) on floats
    # (numpy has no SIMD path for the latter), and a != 0 is exact for -0.0 as well.
    return int(np.count_nonzero(a != 0 if a.dtype.kind == "f" else a))


def _samples(activations: Any) -> list[NDArray[Any]]:
    """Per-sample numpy arrays from a stacked array/tensor or a sequence of them."""
    if isinstance(activations, np.ndarray) or _is_torch_tensor(activations):
        batch = _to_numpy(activations)
        if batch.ndim not in (3, 4):
            raise ValueError(
                "activations given as one array must be a batch shaped (N, C, H, W) or "
                f"(N, C, L), got shape {batch.shape}"
            )
        return list(batch)  # views, no copies
    if not isinstance(activations, Sequence) or isinstance(activations, str | bytes):
        raise ValueError(
            "activations must be a sequence of per-sample arrays or one batched array/tensor, "
            f"got {type(activations).__name__}"
        )
    return [_to_numpy(a) for a in activations]


#: A validated box: one ``slice(start, stop)`` per spatial axis, int bounds, in range.
Box = tuple[slice, ...]


def _bound(v: object) -> int | None:
    # Plain ints and numpy integers are bounds; bool (an int subclass) and floats are not.
    if type(v) is int:  # the fast, common case
        return v
    if isinstance(v, np.integer):
        return int(v)
    return None


def _box(slices: object, shape: tuple[int, ...], where: str) -> Box:
    """Validate one motif's slices against the spatial shape; return them normalised."""
    if not isinstance(slices, tuple | list) or not all(type(s) is slice for s in slices):
        raise ValueError(
            f"{where}: slices must be a tuple of Python slices, one per spatial axis "
            f"(here {len(shape)}), got {slices!r}"
        )
    if len(slices) != len(shape):
        raise ValueError(
            f"{where}: slices must have one slice per spatial axis of the activations "
            f"(shape {shape}, so {len(shape)}), got {len(slices)}: {slices!r}"
        )
    box = []
    for axis, (s, n) in enumerate(zip(slices, shape)):
        start = 0 if s.start is None else _bound(s.start)
        stop = n if s.stop is None else _bound(s.stop)
        if start is None or stop is None or s.step not in (None, 1):
            raise ValueError(
                f"{where}: slices must have int (or None) bounds and step 1, got {s!r} on axis {axis}"
            )
        # Negative or too-large bounds would be silently wrapped or clipped by numpy:
        # refuse them, a box outside the map is a bug in the domain.
        if not 0 <= start < stop <= n:
            raise ValueError(
                f"{where}: slices must be non-empty and inside the map: need "
                f"0 <= start < stop <= {n} on axis {axis}, got {s!r}"
            )
        box.append(slice(start, stop))
    return tuple(box)


# --------------------------------------------------------------------------------------
# Motif errors
# --------------------------------------------------------------------------------------


def motif_errors(
    activations: Any,
    motifs: Sequence[Sequence[tuple[str, Sequence[slice]]]],
    *,
    assignment: Assignment,
    symbols: Sequence[str] | None = None,
) -> MotifErrors:
    """FPE, FNE and CE of sparse activation maps against the true motifs (docs/method.md section 6).

    Args:
        activations: one map per sample, each shaped (C, H, W) or (C, L), as a sequence of
            numpy arrays / torch tensors or one stacked (N, C, ...) array or tensor. Values
            must be the sparsity layer's output: no NaN, nothing negative (a negative
            value means the maps were taken before the ReLU, and would make "nonzero"
            and "argmax" disagree).
        motifs: per sample, the true motifs in order, each ``(symbol, slices)`` (a
            :class:`sparling.domains.base.Motif` works) with one ``slice`` per spatial
            axis, step 1, inside the map and non-empty.
        assignment: ``"hungarian"`` (one-to-one channel -> symbol, DigitCircle) or
            ``"majority"`` (each channel -> its most frequent symbol, LaTeX and audio).
        symbols: column order of the confusion table; default: sorted symbols seen.
            Every true symbol must be in it.

    For each sample and each true motif in order: each channel's maximum inside the box
    is taken; if all are zero the motif is *missed*, otherwise it is *matched* to the
    argmax channel; then the box is zeroed in all channels (so a later, overlapping
    box no longer sees those values). Every nonzero value left anywhere afterwards is one
    false positive. The input is never modified.

    >>> import numpy as np
    >>> a = np.zeros((3, 10), dtype=np.float32)
    >>> a[2, 4] = 1.0
    >>> r = motif_errors([a], [[("5", (slice(3, 6),))]], assignment="majority")
    >>> r["fne"], r["fpe"], r["ce"], r["confusion"].tolist()
    (0.0, 0.0, 0.0, [[0], [0], [1]])
    """
    _check_assignment(assignment)
    if not isinstance(motifs, Sequence) or isinstance(motifs, str | bytes):
        raise ValueError(
            f"motifs must be a sequence (one list of (symbol, slices) per sample), got {type(motifs).__name__}"
        )
    arrays = _samples(activations)
    if len(arrays) != len(motifs):
        raise ValueError(
            f"activations and motifs must have one entry per sample each, got {len(arrays)} "
            f"activation maps and {len(motifs)} motif lists"
        )
    if not arrays:
        raise ValueError("activations must hold at least one sample, got none")

    # Validate everything before the (long) scoring pass, so bad input fails fast.
    first = arrays[0]
    if first.ndim not in (2, 3):
        raise ValueError(
            f"activations[0] must be shaped (C, H, W) or (C, L), got shape {first.shape}"
        )
    channels, rank = first.shape[0], first.ndim
    parsed: list[list[tuple[str, Box]]] = []
    for i, (a, sample_motifs) in enumerate(zip(arrays, motifs)):
        if a.ndim != rank or a.shape[0] != channels:
            raise ValueError(
                f"activations[{i}] must be shaped like activations[0] in rank and channel "
                f"count ({first.ndim}-D with C={channels}), got shape {a.shape}"
            )
        _check_values(a, f"activations[{i}]")
        if not isinstance(sample_motifs, Sequence):
            raise ValueError(
                f"motifs[{i}] must be a list of (symbol, slices), got {type(sample_motifs).__name__}"
            )
        entries = []
        for j, motif in enumerate(sample_motifs):
            where = f"motifs[{i}][{j}]"
            if not isinstance(motif, tuple | list) or len(motif) != 2:
                raise ValueError(f"{where} must be a (symbol, slices) pair, got {motif!r}")
            symbol, slices = motif
            if not isinstance(symbol, str):
                raise ValueError(f"{where}: symbol must be a str, got {symbol!r}")
            entries.append((symbol, _box(slices, a.shape[1:], where)))
        parsed.append(entries)

    if symbols is None:
        columns = tuple(sorted({s for entries in parsed for s, _ in entries}))
    else:
        columns = tuple(symbols)
        if len(set(columns)) != len(columns) or not all(isinstance(s, str) for s in columns):
            raise ValueError(f"symbols must be distinct strings, got {symbols!r}")
        unknown = {s for entries in parsed for s, _ in entries} - set(columns)
        if unknown:
            raise ValueError(f"symbols must include every true symbol; missing {sorted(unknown)}")
    column_of = {s: k for k, s in enumerate(columns)}

    hit_channels: list[int] = []
    hit_columns: list[int] = []
    missed = 0
    false_positives = 0
    for a, entries in zip(arrays, parsed):
        m, fp = _score_sample(a, entries, column_of, hit_channels, hit_columns)
        missed += m
        false_positives += fp

    confusion = np.zeros((channels, len(columns)), dtype=np.int64)
    np.add.at(
        confusion,
        (np.asarray(hit_channels, dtype=np.intp), np.asarray(hit_columns, dtype=np.intp)),
        1,
    )
    return _finish(confusion, columns, missed, false_positives, assignment)


def _score_sample(
    a: NDArray[Any],
    entries: list[tuple[str, Box]],
    column_of: dict[str, int],
    hit_channels: list[int],
    hit_columns: list[int],
) -> tuple[int, int]:
    """Score one map; append matches to the hit lists; return (missed, false positives).

    Instead of copying the whole map and zeroing boxes in it, a boolean mask over the
    spatial axes remembers which positions earlier boxes consumed. A box's values are
    read through that mask (exactly as if zeroed), and the nonzeros the box newly
    consumes are counted; false positives are then all nonzeros minus the consumed ones.
    This touches the full map only once (``count_nonzero``).
    """
    total = _count_nonzero(a)
    if total == 0:  # common at low density: every motif is missed, nothing else to do
        return len(entries), 0
    spatial_axes = tuple(range(1, a.ndim))
    consumed_mask = np.zeros(a.shape[1:], dtype=bool)
    zero = np.zeros((), dtype=a.dtype)
    consumed = 0
    missed = 0
    for symbol, region in entries:
        if consumed == total:  # nothing nonzero remains: the rest are all misses
            missed += 1
            continue
        block = a[(slice(None), *region)]
        already = consumed_mask[region]
        if already.any():  # overlap with an earlier box: those positions read as zero
            block = np.where(already, zero, block)
        consumed += int(np.count_nonzero(block))
        consumed_mask[region] = True
        per_channel = block.max(axis=spatial_axes)
        if per_channel.any():
            hit_channels.append(int(per_channel.argmax()))
            hit_columns.append(column_of[symbol])
        else:
            missed += 1
    return missed, total - consumed


def combine_motif_errors(parts: Sequence[MotifErrors]) -> MotifErrors:
    """Pool the counts of several :func:`motif_errors` results (e.g. chunks of a test set).

    The rates and the map are recomputed from the pooled counts, so scoring a test set in
    chunks and combining equals scoring it at once (with the same ``symbols`` order, or
    sorted symbols when the parts' orders differ).
    """
    if not parts:
        raise ValueError("parts must hold at least one MotifErrors, got none")
    assignments = {p.assignment for p in parts}
    channel_counts = {p.confusion.shape[0] for p in parts}
    if len(assignments) != 1 or len(channel_counts) != 1:
        raise ValueError(
            "parts must share one assignment and one channel count, got "
            f"{sorted(assignments)} and {sorted(channel_counts)}"
        )
    if all(p.symbols == parts[0].symbols for p in parts):
        columns = parts[0].symbols
    else:
        columns = tuple(sorted({s for p in parts for s in p.symbols}))
    column_of = {s: k for k, s in enumerate(columns)}
    confusion = np.zeros((channel_counts.pop(), len(columns)), dtype=np.int64)
    for p in parts:
        confusion[:, [column_of[s] for s in p.symbols]] += p.confusion
    return _finish(
        confusion,
        columns,
        sum(p.missed for p in parts),
        sum(p.false_positives for p in parts),
        assignments.pop(),
    )


# --------------------------------------------------------------------------------------
# End-to-end error and density
# --------------------------------------------------------------------------------------


def edit_error(predicted: Sequence[Hashable], true: Sequence[Hashable]) -> float:
    """Token edit distance over the longer length; 0.0 when both are empty.

    >>> edit_error(["1", "2", "3"], ["1", "3"])
    0.3333333333333333
    >>> edit_error([], [])
    0.0
    """
    for name, seq in (("predicted", predicted), ("true", true)):
        if not isinstance(seq, Sequence):
            raise ValueError(f"{name} must be a sequence of tokens, got {type(seq).__name__}")
    longest = max(len(predicted), len(true))
    if longest == 0:
        return 0.0
    # rapidfuzz compares lists element-wise (by hash), so multi-character tokens such as
    # "\\frac" count as one edit, unlike a comparison of joined strings.
    return Levenshtein.distance(list(predicted), list(true)) / longest


def end_to_end_error(
    predicted_seqs: Sequence[Sequence[Hashable]], true_seqs: Sequence[Sequence[Hashable]]
) -> float:
    """E2EE: the mean of :func:`edit_error` over samples.

    >>> end_to_end_error([["1", "3"], ["4"]], [["1", "2", "3"], ["4"]])
    0.16666666666666666
    """
    if len(predicted_seqs) != len(true_seqs):
        raise ValueError(
            "predicted_seqs and true_seqs must have the same length, got "
            f"{len(predicted_seqs)} and {len(true_seqs)}"
        )
    if len(true_seqs) == 0:
        raise ValueError("true_seqs must hold at least one sequence, got none")
    return math.fsum(edit_error(p, t) for p, t in zip(predicted_seqs, true_seqs)) / len(true_seqs)


def measured_density(activations: Any) -> float:
    """Fraction of nonzero values over an activation map, batch, or sequence of them.

    Torch tensors are counted where they live (no copy to the CPU).

    >>> import numpy as np
    >>> measured_density([np.array([[0.0, 1.0], [0.0, 0.0]]), np.zeros((2, 2))])
    0.125
    """
    items = (
        [activations]
        if isinstance(activations, np.ndarray) or _is_torch_tensor(activations)
        else activations
    )
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ValueError(
            f"activations must be an array, a tensor or a sequence of them, got {type(activations).__name__}"
        )
    nonzero = 0
    size = 0
    for k, item in enumerate(items):
        if _is_torch_tensor(item):
            if item.is_floating_point() and bool(item.isnan().any()):
                raise ValueError(f"activations[{k}] contains NaN; activations must be real numbers")
            nonzero += int(item.count_nonzero())
            size += int(item.numel())
        else:
            a = _to_numpy(item)
            _check_values(a, f"activations[{k}]", nonnegative=False)
            nonzero += _count_nonzero(a)
            size += a.size
    if size == 0:
        raise ValueError("activations must hold at least one value, got none")
    return nonzero / size


# --------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------


def bootstrap_ci(
    values: ArrayLike,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    nan_policy: Literal["raise", "omit"] = "raise",
) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` with a seeded percentile-bootstrap interval.

    ``n_resamples`` resamples of ``len(values)`` values (with replacement) are drawn
    from ``numpy.random.default_rng(seed)``; the bounds are the ``(1 - confidence) / 2``
    and ``(1 + confidence) / 2`` quantiles (linear interpolation) of their means. The
    same seed gives the same interval. ``nan_policy="omit"`` drops NaN first (as the
    authors' code did); the default refuses it. A single value gives ``(v, v, v)``.

    >>> bootstrap_ci([0.5])
    (0.5, 0.5, 0.5)
    >>> m, lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0], seed=1)
    >>> m, lo <= m <= hi
    (2.5, True)
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"values must be a 1-D sequence of numbers, got shape {x.shape}")
    if nan_policy not in ("raise", "omit"):
        raise ValueError(f"nan_policy must be 'raise' or 'omit', got {nan_policy!r}")
    if nan_policy == "omit":
        x = x[~np.isnan(x)]
    if not np.isfinite(x).all():
        raise ValueError("values must be finite (pass nan_policy='omit' to drop NaN)")
    if x.size == 0:
        raise ValueError("values must hold at least one (non-NaN) number, got none")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(x.mean()), float(low), float(high)
