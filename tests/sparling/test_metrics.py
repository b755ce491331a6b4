"""Tests for sparling.metrics: hand-built maps with known answers, a randomized check
against a slow reference written here, E2EE, density, bootstrap and bad input."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from sparling.domains.base import Motif
from sparling.metrics import (
    MotifErrors,
    bootstrap_ci,
    combine_motif_errors,
    confusion_map,
    edit_error,
    end_to_end_error,
    measured_density,
    motif_errors,
)


def box(r0: int, r1: int, c0: int, c1: int) -> tuple[slice, slice]:
    return (slice(r0, r1), slice(c0, c1))


def blank(channels: int = 3, h: int = 10, w: int = 10) -> np.ndarray:
    return np.zeros((channels, h, w), dtype=np.float32)


# ------------------------------------------------------------------------------------
# Hand-built maps
# ------------------------------------------------------------------------------------


@pytest.mark.parametrize("assignment", ["hungarian", "majority"])
def test_perfect_map_has_no_errors(assignment: str) -> None:
    a0, a1 = blank(), blank()
    a0[0, 1, 1] = 1.0
    a0[2, 5, 6] = 0.3
    a1[1, 8, 8] = 2.0
    a1[0, 2, 3] = 0.1
    motifs = [
        [Motif("3", box(0, 3, 0, 3)), Motif("7", box(4, 7, 5, 8))],
        [Motif("5", box(7, 10, 7, 10)), Motif("3", box(2, 4, 2, 4))],
    ]
    r = motif_errors([a0, a1], motifs, assignment=assignment)
    assert (r["fpe"], r["fne"], r["ce"]) == (0.0, 0.0, 0.0)
    assert (r.true_motifs, r.missed, r.matched, r.false_positives) == (4, 0, 4, 0)
    assert r.symbols == ("3", "5", "7")
    assert r.confusion.tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 1]]
    assert r["channel_to_symbol"] == {0: "3", 1: "5", 2: "7"}


def test_missed_motif_counts_in_fne_only() -> None:
    a = blank()
    a[1, 1, 1] = 1.0
    motifs = [[("a", box(0, 3, 0, 3)), ("b", box(5, 8, 5, 8)), ("c", box(0, 2, 7, 9))]]
    r = motif_errors([a], motifs, assignment="hungarian")
    assert (r.missed, r.matched, r.false_positives) == (2, 1, 0)
    assert r.fne == pytest.approx(2 / 3)
    assert r.fpe == 0.0
    assert r.ce == 0.0


def test_false_positives_counted_per_nonzero_value() -> None:
    a = blank()
    a[0, 1, 1] = 1.0  # the match
    a[2, 0, 0] = 0.5  # another channel inside the same box: zeroed with it, not an FP
    a[1, 7:9, 7:9] = 0.2  # a 2x2 blob outside every box: four false positives
    a[0, 9, 0] = 0.1  # and one more in another channel
    r = motif_errors([a], [[("x", box(0, 3, 0, 3))]], assignment="majority")
    assert r.false_positives == 5
    assert r.matched == 1
    assert r.fpe == pytest.approx(5 / 6)


def test_overlapping_box_sees_first_box_zeroed() -> None:
    # Boxes A (rows 0-4) and B (rows 3-7) overlap on rows 3-4.
    a = blank()
    a[0, 3, 3] = 1.0  # in the overlap, strongest
    a[1, 6, 3] = 0.4  # only in B, weaker
    motifs = [[("p", box(0, 5, 0, 6)), ("q", box(3, 8, 0, 6))]]
    r = motif_errors([a], motifs, assignment="hungarian")
    # Without zeroing, B's argmax would be channel 0 again; after it, channel 1.
    assert r.confusion.tolist() == [[1, 0], [0, 1], [0, 0]]
    assert (r.missed, r.false_positives) == (0, 0)

    # If the only activation is in the overlap, the second motif is missed.
    b = blank()
    b[0, 4, 4] = 1.0
    r = motif_errors([b], motifs, assignment="hungarian")
    assert (r.matched, r.missed, r.false_positives) == (1, 1, 0)
    assert r.confusion.tolist() == [[1, 0], [0, 0], [0, 0]]

    # Order matters: reversed, q takes the value and p is missed.
    r = motif_errors([b], [motifs[0][::-1]], assignment="hungarian")
    assert r.confusion.tolist() == [[0, 1], [0, 0], [0, 0]]
    assert r.missed == 1


def test_identical_boxes_and_nonzeros_in_overlap_not_double_counted() -> None:
    a = blank()
    a[:, 2, 2] = [0.1, 0.9, 0.2]  # three nonzeros in the shared region
    a[2, 5, 5] = 1.0  # one in the second box only
    a[0, 9, 9] = 1.0  # one false positive
    motifs = [[("u", box(0, 4, 0, 4)), ("v", box(1, 6, 1, 6)), ("w", box(0, 4, 0, 4))]]
    r = motif_errors([a], motifs, assignment="majority")
    assert r.confusion.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0]]
    assert (r.missed, r.false_positives) == (1, 1)


def test_permuted_channels_are_explained_by_hungarian() -> None:
    perm = {"0": 2, "1": 0, "2": 1}  # channel that fires for each symbol
    arrays, motifs = [], []
    for k in range(6):
        a = blank()
        sym = str(k % 3)
        a[perm[sym], 4, 4] = 1.0
        arrays.append(a)
        motifs.append([(sym, box(3, 6, 3, 6))])
    for assignment in ("hungarian", "majority"):
        r = motif_errors(arrays, motifs, assignment=assignment)
        assert r.ce == 0.0
        assert r.channel_to_symbol == {2: "0", 0: "1", 1: "2"}


def test_two_channels_for_one_symbol_hungarian_vs_majority() -> None:
    # Channels 0 and 1 both stand for "a" (3 and 2 times), channel 2 for "b" (once).
    arrays, motifs = [], []
    for channel, sym in [(0, "a")] * 3 + [(1, "a")] * 2 + [(2, "b")]:
        a = blank()
        a[channel, 1, 1] = 1.0
        arrays.append(a)
        motifs.append([(sym, box(0, 3, 0, 3))])
    hung = motif_errors(arrays, motifs, assignment="hungarian")
    assert hung.ce == pytest.approx(2 / 6)  # channel 1 cannot map to "a" as well
    assert hung.channel_to_symbol == {0: "a", 2: "b"}
    maj = motif_errors(arrays, motifs, assignment="majority")
    assert maj.ce == 0.0
    assert maj.channel_to_symbol == {0: "a", 1: "a", 2: "b"}
    assert hung.fne == maj.fne == 0.0 and hung.fpe == maj.fpe == 0.0


def test_majority_ce_counts_minority_symbols() -> None:
    arrays, motifs = [], []
    for sym in ["a", "a", "a", "b"]:  # channel 0 fires for all of them
        a = blank()
        a[0, 1, 1] = 1.0
        arrays.append(a)
        motifs.append([(sym, box(0, 3, 0, 3))])
    r = motif_errors(arrays, motifs, assignment="majority")
    assert r.ce == pytest.approx(1 / 4)
    assert r.channel_to_symbol == {0: "a"}


def test_fpe_denominator_excludes_misses() -> None:
    a = blank(channels=2, h=20, w=20)
    a[0, 1, 1] = 1.0
    a[1, 6, 6] = 1.0
    a[0, 11, 11] = 1.0
    a[1, 19, 0] = 0.5  # FP
    a[1, 19, 1] = 0.5  # FP
    motifs = [
        [
            ("a", box(0, 3, 0, 3)),
            ("b", box(5, 8, 5, 8)),
            ("a", box(10, 13, 10, 13)),
            ("b", box(15, 17, 15, 17)),  # missed
        ]
    ]
    r = motif_errors([a], motifs, assignment="hungarian")
    assert (r.matched, r.missed, r.false_positives) == (3, 1, 2)
    assert r.fpe == pytest.approx(2 / 5)  # FP / (FP + matched): the miss is not a prediction
    assert r.fne == pytest.approx(1 / 4)


def test_argmax_picks_strongest_channel_and_input_untouched() -> None:
    a = blank()
    a[0, 1, 1] = 0.2
    a[2, 2, 2] = 0.9
    before = a.copy()
    r = motif_errors([a], [[("z", box(0, 3, 0, 3))]], assignment="hungarian")
    assert r.confusion[:, 0].tolist() == [0, 0, 1]
    assert np.array_equal(a, before)


def test_edge_cases_give_nan_not_zero() -> None:
    # No motifs at all: FNE undefined; any nonzero is a false positive.
    a = blank()
    a[0, 0, 0] = 1.0
    r = motif_errors([a, blank()], [[], []], assignment="hungarian")
    assert math.isnan(r.fne) and math.isnan(r.ce)
    assert r.fpe == 1.0 and r.false_positives == 1
    assert r.confusion.shape == (3, 0) and r.channel_to_symbol == {}
    # Nothing fires: everything missed, no predictions, FPE and CE undefined.
    r = motif_errors([blank()], [[("a", box(0, 2, 0, 2))]], assignment="majority")
    assert r.fne == 1.0 and math.isnan(r.fpe) and math.isnan(r.ce)
    # Only false positives: FPE 1, CE undefined.
    r = motif_errors([a], [[("a", box(5, 7, 5, 7))]], assignment="majority")
    assert r.fpe == 1.0 and r.fne == 1.0 and math.isnan(r.ce)


def test_integer_and_bool_maps() -> None:
    a = np.zeros((2, 6, 6), dtype=bool)
    a[1, 0, 0] = True
    a[0, 5, 5] = True
    r = motif_errors([a], GOOD_MOTIFS, assignment="hungarian")
    assert (r.confusion.tolist(), r.false_positives) == ([[0], [1]], 1)
    r2 = motif_errors([a.astype(np.uint8)], GOOD_MOTIFS, assignment="hungarian")
    assert r2.to_dict() == r.to_dict()


def test_one_dimensional_maps_and_torch_inputs() -> None:
    a = np.zeros((2, 50), dtype=np.float32)
    a[1, 10] = 0.5
    a[0, 30] = 0.7
    a[0, 45] = 0.1  # FP
    motifs = [[("4", (slice(8, 15),)), ("9", (slice(28, 35),))]]
    want = motif_errors([a], motifs, assignment="majority").to_dict()
    assert want["confusion"] == [[0, 1], [1, 0]] and want["false_positives"] == 1
    t = torch.from_numpy(a)
    assert motif_errors([t], motifs, assignment="majority").to_dict() == want
    assert motif_errors(t[None], motifs, assignment="majority").to_dict() == want
    assert motif_errors(t[None].bfloat16(), motifs, assignment="majority").to_dict() == want
    assert motif_errors(a[None], motifs, assignment="majority").to_dict() == want


def test_symbols_order_result_access_and_json() -> None:
    a = blank()
    a[1, 1, 1] = 1.0
    r = motif_errors(
        [a], [[("b", box(0, 3, 0, 3))]], assignment="hungarian", symbols=["c", "b", "a"]
    )
    assert r.symbols == ("c", "b", "a")
    assert r.confusion.tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert r.channel_to_symbol == {1: "b"}
    d = r.to_dict()
    assert set(d) == set(r.keys())
    assert json.loads(json.dumps(d))["confusion"] == d["confusion"]
    assert r.scalars()["matched"] == 1.0
    with pytest.raises(KeyError):
        r["nope"]


def test_combine_equals_scoring_at_once() -> None:
    rng = np.random.default_rng(3)
    arrays, motifs = _random_case(rng, n=12, one_d=False)
    whole = motif_errors(arrays, motifs, assignment="hungarian")
    parts = [
        motif_errors(arrays[:5], motifs[:5], assignment="hungarian"),
        motif_errors(arrays[5:], motifs[5:], assignment="hungarian"),
    ]
    combined = combine_motif_errors(parts)
    assert combined.to_dict() == whole.to_dict()


def test_confusion_map() -> None:
    assert confusion_map([[0, 5], [3, 1]], assignment="hungarian") == ({0: 1, 1: 0}, 8)
    assert confusion_map([[0, 5], [1, 3]], assignment="majority") == ({0: 1, 1: 1}, 8)
    # More channels than symbols (LaTeX: 32 vs 19): surplus channels stay unmapped.
    assert confusion_map([[4, 0], [3, 0], [0, 2]], assignment="hungarian") == ({0: 0, 2: 1}, 6)
    assert confusion_map(np.zeros((3, 0)), assignment="hungarian") == ({}, 0)


# ------------------------------------------------------------------------------------
# Randomized check against a slow, obviously-correct reference
# ------------------------------------------------------------------------------------


def reference_motif_errors(arrays, motifs, assignment):
    """Section 6 step by step on a copy: max per channel, argmax, zero box, count the rest."""
    pairs = []  # (channel, symbol) of each match
    missed = 0
    fp = 0
    for a, sample in zip(arrays, motifs):
        work = np.array(a, dtype=np.float64, copy=True)
        for symbol, slices in sample:
            region = (slice(None), *slices)
            maxima = [work[c][slices].max() for c in range(work.shape[0])]
            if all(m == 0 for m in maxima):
                missed += 1
            else:
                pairs.append((int(np.argmax(maxima)), symbol))
            work[region] = 0
        fp += sum(1 for v in work.ravel() if v != 0)
    counts = Counter(pairs)
    channels = {c for c, _ in pairs}
    symbols = {s for _, s in pairs}
    if assignment == "majority":
        explained = sum(max(n for (c2, _), n in counts.items() if c2 == c) for c in channels)
    else:  # brute force over every one-to-one map of the channels that matched
        chans, syms = sorted(channels), sorted(symbols)
        best = 0
        if len(chans) <= len(syms):
            for perm in itertools.permutations(syms, len(chans)):
                best = max(best, sum(counts[(c, s)] for c, s in zip(chans, perm)))
        else:
            for perm in itertools.permutations(chans, len(syms)):
                best = max(best, sum(counts[(c, s)] for c, s in zip(perm, syms)))
        explained = best
    matched = len(pairs)
    nan = float("nan")
    return {
        "missed": missed,
        "matched": matched,
        "false_positives": fp,
        "fne": missed / (missed + matched) if missed + matched else nan,
        "fpe": fp / (fp + matched) if fp + matched else nan,
        "ce": (matched - explained) / matched if matched else nan,
        "pairs": counts,
    }


def _random_case(rng: np.random.Generator, n: int, one_d: bool):
    channels = 4
    shape = (30,) if one_d else (12, 12)
    arrays, motifs = [], []
    for _ in range(n):
        a = np.zeros((channels, *shape), dtype=np.float32)
        k = rng.integers(0, 12)
        idx = tuple(rng.integers(0, s, size=k) for s in (channels, *shape))
        a[idx] = rng.choice([0.25, 0.5, 1.0, 2.0], size=k)  # ties on purpose
        arrays.append(a)
        sample = []
        for _ in range(rng.integers(0, 5)):
            slices = []
            for s in shape:
                lo = int(rng.integers(0, s - 1))
                hi = int(rng.integers(lo + 1, min(s, lo + 6) + 1))
                slices.append(slice(lo, hi))
            sample.append((str(rng.integers(0, 3)), tuple(slices)))
        motifs.append(sample)
    return arrays, motifs


@pytest.mark.parametrize("one_d", [False, True])
@pytest.mark.parametrize("assignment", ["hungarian", "majority"])
def test_matches_reference_on_random_maps(assignment: str, one_d: bool) -> None:
    rng = np.random.default_rng(1234 + one_d)
    for _ in range(25):
        arrays, motifs = _random_case(rng, n=int(rng.integers(1, 6)), one_d=one_d)
        got = motif_errors(arrays, motifs, assignment=assignment)
        want = reference_motif_errors(arrays, motifs, assignment)
        for key in ("missed", "matched", "false_positives"):
            assert got[key] == want[key], key
        for key in ("fne", "fpe", "ce"):
            assert got[key] == pytest.approx(want[key], nan_ok=True), key
        pairs = {
            (c, got.symbols[s]): int(got.confusion[c, s])
            for c, s in zip(*np.nonzero(got.confusion))
        }
        assert pairs == dict(want["pairs"])


# ------------------------------------------------------------------------------------
# E2EE and density
# ------------------------------------------------------------------------------------


def test_edit_error_examples() -> None:
    assert edit_error(["1", "2", "3"], ["1", "3"]) == pytest.approx(1 / 3)
    assert edit_error(["1", "3"], ["1", "2", "3"]) == pytest.approx(1 / 3)
    assert edit_error([], []) == 0.0
    assert edit_error([], ["a", "b"]) == 1.0
    assert edit_error(["a", "b"], ["b", "a"]) == 1.0  # two substitutions over 2 tokens
    # Multi-character tokens are one token each, not several characters.
    assert edit_error(["\\frac", "1"], ["\\left(", "1"]) == 0.5
    assert edit_error(["12"], ["1", "2"]) == 1.0


def test_end_to_end_error() -> None:
    pred = [["1", "3"], ["4"], []]
    true = [["1", "2", "3"], ["4"], ["5"]]
    assert end_to_end_error(pred, true) == pytest.approx((1 / 3 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="predicted_seqs and true_seqs"):
        end_to_end_error(pred, true[:2])
    with pytest.raises(ValueError, match="true_seqs"):
        end_to_end_error([], [])


def test_measured_density() -> None:
    a = np.zeros((2, 10, 10), dtype=np.float32)
    a[0, :2, :3] = 1.0  # 6 of 200
    assert measured_density(a) == pytest.approx(6 / 200)
    assert measured_density([a, np.zeros_like(a)]) == pytest.approx(6 / 400)
    t = torch.from_numpy(a)
    assert measured_density(t) == pytest.approx(6 / 200)
    assert measured_density([t, torch.zeros(2, 10, 10)]) == pytest.approx(6 / 400)
    with pytest.raises(ValueError, match="activations"):
        measured_density([])
    a[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        measured_density(a)
    with pytest.raises(ValueError, match="NaN"):
        measured_density(torch.from_numpy(a))


# ------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------


def test_bootstrap_deterministic_and_seed_dependent() -> None:
    values = [0.012, 0.004, 0.03, 0.0, 0.021, 0.015, 0.008, 0.002, 0.011]
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    m, lo, hi = bootstrap_ci(values)
    assert m == pytest.approx(np.mean(values))
    assert min(values) <= lo < m < hi <= max(values)
    _, lo99, hi99 = bootstrap_ci(values, confidence=0.99)
    assert lo99 <= lo and hi99 >= hi


def test_bootstrap_single_value_and_nan_policy() -> None:
    assert bootstrap_ci([0.25]) == (0.25, 0.25, 0.25)
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="values"):
        bootstrap_ci([0.1, float("nan")])
    assert bootstrap_ci([0.25, float("nan")], nan_policy="omit") == (0.25, 0.25, 0.25)


def test_bootstrap_width_and_coverage() -> None:
    rng = np.random.default_rng(0)
    # Large sample: the percentile interval is close to mean +- 1.96 s / sqrt(n).
    # (A 97.5% interval would be 14% wider, a 90% one 16% narrower.)
    x = rng.normal(size=400)
    m, lo, hi = bootstrap_ci(x, n_resamples=10_000)
    half = 1.96 * x.std() / math.sqrt(x.size)
    assert hi - m == pytest.approx(half, rel=0.07)
    assert m - lo == pytest.approx(half, rel=0.07)
    # Coverage of the true mean over repeated experiments is near the nominal 95%.
    covered = 0
    trials = 200
    for t in range(trials):
        sample = rng.normal(loc=1.0, size=30)
        _, lo, hi = bootstrap_ci(sample, n_resamples=500, seed=t)
        covered += lo <= 1.0 <= hi
    assert 0.88 <= covered / trials <= 0.99


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"values": []}, "values"),
        ({"values": [[1.0]]}, "values"),
        ({"values": [1.0, float("inf")]}, "values"),
        ({"values": [1.0], "n_resamples": 0}, "n_resamples"),
        ({"values": [1.0], "confidence": 1.0}, "confidence"),
        ({"values": [1.0], "seed": 1.5}, "seed"),
        ({"values": [1.0], "nan_policy": "drop"}, "nan_policy"),
    ],
)
def test_bootstrap_bad_input(kwargs: dict, match: str) -> None:
    values = kwargs.pop("values")
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(values, **kwargs)


# ------------------------------------------------------------------------------------
# Bad input to motif_errors
# ------------------------------------------------------------------------------------


GOOD_MOTIFS = [[("a", box(0, 2, 0, 2))]]


def _nan_map() -> np.ndarray:
    a = blank()
    a[1, 5, 5] = np.nan
    return a


@pytest.mark.parametrize(
    "activations, motifs, kwargs, match",
    [
        ([np.zeros((2, 3, 4, 4))], GOOD_MOTIFS, {}, r"activations\[0\].*\(C, H, W\)"),
        ([np.zeros(5)], GOOD_MOTIFS, {}, r"activations\[0\]"),
        (np.zeros((3, 10)), GOOD_MOTIFS, {}, "batch"),
        ([blank(3), blank(4)], GOOD_MOTIFS * 2, {}, r"activations\[1\].*C=3"),
        ([blank(), np.zeros((3, 10))], GOOD_MOTIFS * 2, {}, r"activations\[1\]"),
        ([blank()], [[("a", (slice(0, 2),))]], {}, r"motifs\[0\]\[0\].*one slice per spatial axis"),
        ([blank()], [[("a", box(0, 11, 0, 2))]], {}, r"motifs\[0\]\[0\].*inside the map"),
        ([blank()], [[("a", box(-1, 2, 0, 2))]], {}, "inside the map"),
        ([blank()], [[("a", box(3, 3, 0, 2))]], {}, "non-empty"),
        ([blank()], [[("a", (slice(0, 4, 2), slice(0, 2)))]], {}, "step 1"),
        ([blank()], [[("a", slice(0, 2))]], {}, "tuple of Python slices"),
        ([blank()], [[("a", (0, 1))]], {}, "tuple of Python slices"),
        ([blank()], [[(1, box(0, 2, 0, 2))]], {}, "symbol must be a str"),
        ([blank()], [[("a",)]], {}, r"\(symbol, slices\) pair"),
        ([blank(), blank()], GOOD_MOTIFS, {}, "activations and motifs.*2 activation maps and 1"),
        ([], [], {}, "at least one sample"),
        (
            [blank()],
            GOOD_MOTIFS,
            {"assignment": "greedy"},
            r"assignment must be one of \('hungarian', 'majority'\)",
        ),
        ([_nan_map()], GOOD_MOTIFS, {}, r"activations\[0\] contains NaN"),
        ([blank() - 1.0], GOOD_MOTIFS, {}, r"activations\[0\] has negative values"),
        (
            [blank(), -np.ones((3, 10, 10), np.int64)],
            GOOD_MOTIFS * 2,
            {},
            r"activations\[1\] has negative",
        ),
        ([blank().astype(np.complex64)], GOOD_MOTIFS, {}, "real numbers"),
        ([blank()], GOOD_MOTIFS, {"symbols": ["b"]}, "symbols must include"),
        ([blank()], GOOD_MOTIFS, {"symbols": ["a", "a"]}, "distinct"),
        ("abc", GOOD_MOTIFS, {}, "activations must be a sequence"),
        ([blank()], "a", {}, "motifs must be a sequence"),
    ],
)
def test_motif_errors_bad_input(activations, motifs, kwargs, match) -> None:
    kwargs.setdefault("assignment", "hungarian")
    with pytest.raises(ValueError, match=match):
        motif_errors(activations, motifs, **kwargs)


def test_nan_in_torch_batch_rejected() -> None:
    t = torch.from_numpy(_nan_map())[None]
    with pytest.raises(ValueError, match="NaN"):
        motif_errors(t, GOOD_MOTIFS, assignment="majority")


def test_combine_bad_input() -> None:
    a = blank()
    r1 = motif_errors([a], GOOD_MOTIFS, assignment="hungarian")
    r2 = motif_errors([a], GOOD_MOTIFS, assignment="majority")
    with pytest.raises(ValueError, match="parts"):
        combine_motif_errors([r1, r2])
    with pytest.raises(ValueError, match="parts"):
        combine_motif_errors([])
    assert isinstance(combine_motif_errors([r1]), MotifErrors)
