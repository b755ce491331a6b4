"""Adaptive sparsity training (AST), docs/method.md section 3.

The schedule is plain Python (no torch state): the training loop validates every V samples
and calls :meth:`AdaptiveSparsitySchedule.observe`, which returns the density to use next.
The same schedule drives the annealed-L1 baseline through :meth:`l1_coefficient`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["AdaptiveSparsitySchedule"]


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def _in_unit_interval(value: Any, name: str, *, open_low: bool, open_high: bool) -> float:
    value = _real(value, name)
    low_ok = value > 0.0 if open_low else value >= 0.0
    high_ok = value < 1.0 if open_high else value <= 1.0
    if not (low_ok and high_ok):
        interval = f"{'(' if open_low else '['}0, 1{')' if open_high else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def _samples(value: Any, name: str = "samples_seen") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer (cumulative training samples), got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return int(value)


class AdaptiveSparsitySchedule:
    """The AST density schedule: lower the density whenever validation accuracy beats a
    slowly decaying accuracy threshold ``T``.

    At each validation (``samples_seen`` cumulative training samples, ``accuracy`` in [0, 1]):

    1. ``T <- clamp(T - threshold_decay * (samples_seen - previous samples_seen),
       min_threshold, max_threshold)``;
    2. if ``accuracy > T``: ``density <- density * delta_update``;
    3. ``T <- max(T, accuracy)``.

    The density is kept as ``initial_density * delta_update ** reductions`` (no drift from
    repeated multiplication, so it matches the paper's ``0.5 * 0.75^k`` grid exactly).
    ``done`` becomes true once the density is below ``target_density``.

    >>> s = AdaptiveSparsitySchedule(target_density=0.3)
    >>> s.observe(20_000, 0.5)  # T = 0.998, 0.5 is not above it
    0.5
    >>> s.threshold
    0.998
    >>> s.observe(40_000, 0.999)  # T = 0.996 < 0.999: density drops
    0.375
    >>> s.observe(60_000, 0.999), s.done  # T = 0.997 < 0.999 again
    (0.28125, True)
    """

    def __init__(
        self,
        *,
        target_density: float,
        initial_density: float = 0.5,
        delta_update: float = 0.75,
        threshold_decay: float = 1e-7,
        initial_threshold: float = 1.0,
        min_threshold: float = 0.0,
        max_threshold: float = 1.0,
    ) -> None:
        self.target_density = _in_unit_interval(
            target_density, "target_density", open_low=True, open_high=False
        )
        self.initial_density = _in_unit_interval(
            initial_density, "initial_density", open_low=True, open_high=False
        )
        self.delta_update = _in_unit_interval(
            delta_update, "delta_update", open_low=True, open_high=True
        )
        self.threshold_decay = _real(threshold_decay, "threshold_decay")
        if self.threshold_decay < 0:
            raise ValueError(
                f"threshold_decay must be >= 0 (accuracy per training sample), "
                f"got {threshold_decay!r}"
            )
        self.min_threshold = _in_unit_interval(
            min_threshold, "min_threshold", open_low=False, open_high=False
        )
        self.max_threshold = _in_unit_interval(
            max_threshold, "max_threshold", open_low=False, open_high=False
        )
        if self.min_threshold > self.max_threshold:
            raise ValueError(
                f"min_threshold ({min_threshold}) must not exceed max_threshold ({max_threshold})"
            )
        initial_threshold = _real(initial_threshold, "initial_threshold")
        if not (self.min_threshold <= initial_threshold <= self.max_threshold):
            raise ValueError(
                f"initial_threshold must be in [min_threshold, max_threshold] = "
                f"[{self.min_threshold}, {self.max_threshold}], got {initial_threshold!r}"
            )
        self._threshold = initial_threshold
        self._reductions = 0
        self._samples_seen = 0
        self._observations = 0

    # -- read-only state ------------------------------------------------------------------

    @property
    def density(self) -> float:
        """The density to train with now."""
        return self.initial_density * self.delta_update**self._reductions

    @property
    def threshold(self) -> float:
        """The current accuracy threshold ``T``."""
        return self._threshold

    @property
    def reductions(self) -> int:
        """How many times the density has been multiplied by ``delta_update``."""
        return self._reductions

    @property
    def samples_seen(self) -> int:
        """``samples_seen`` of the last observation (0 before any)."""
        return self._samples_seen

    @property
    def observations(self) -> int:
        """Number of validations observed."""
        return self._observations

    @property
    def done(self) -> bool:
        """True once the density has fallen below ``target_density`` (stop training)."""
        return self.density < self.target_density

    def l1_coefficient(self, base: float) -> float:
        """Annealed-L1 coefficient: grows by ``1 / delta_update`` wherever the density shrinks.

        ``base * initial_density / density``, i.e. ``base`` before any reduction.
        """
        base = _real(base, "base")
        if base < 0:
            raise ValueError(f"base L1 coefficient must be >= 0, got {base!r}")
        return base * self.initial_density / self.density

    # -- update -----------------------------------------------------------------------------

    def observe(self, samples_seen: int, accuracy: float) -> float:
        """Record a validation; return the density to use next.

        Args:
            samples_seen: cumulative number of training samples so far (never decreasing).
            accuracy: validation accuracy in [0, 1].
        """
        samples_seen = _samples(samples_seen)
        accuracy = _in_unit_interval(accuracy, "accuracy", open_low=False, open_high=False)
        if samples_seen < self._samples_seen:
            raise ValueError(
                f"samples_seen must not decrease: got {samples_seen} after {self._samples_seen}"
            )
        elapsed = samples_seen - self._samples_seen
        threshold = self._threshold - self.threshold_decay * elapsed
        threshold = min(max(threshold, self.min_threshold), self.max_threshold)
        if accuracy > threshold:
            self._reductions += 1
        self._threshold = max(threshold, accuracy)
        self._samples_seen = samples_seen
        self._observations += 1
        return self.density

    # -- persistence ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The mutable state (plain ints and floats; the hyperparameters are not included)."""
        return {
            "threshold": self._threshold,
            "reductions": self._reductions,
            "samples_seen": self._samples_seen,
            "observations": self._observations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        expected = {"threshold", "reductions", "samples_seen", "observations"}
        if not isinstance(state, dict) or set(state) != expected:
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys {sorted(expected)}, got {got}")
        threshold = _in_unit_interval(
            state["threshold"], "state['threshold']", open_low=False, open_high=False
        )
        reductions = _samples(state["reductions"], "state['reductions']")
        samples_seen = _samples(state["samples_seen"], "state['samples_seen']")
        observations = _samples(state["observations"], "state['observations']")
        self._threshold = threshold
        self._reductions = reductions
        self._samples_seen = samples_seen
        self._observations = observations

    def __repr__(self) -> str:
        return (
            f"AdaptiveSparsitySchedule(density={self.density:.6g}, threshold={self._threshold:.6g}, "
            f"target_density={self.target_density:g}, reductions={self._reductions}, "
            f"samples_seen={self._samples_seen})"
        )
