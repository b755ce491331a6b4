"""What training-time validation and evaluation share: batching samples and scoring motifs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from . import domains
from .domains import Domain, Sample
from .metrics import Assignment, MotifErrors, motif_errors


class SampleSource(Protocol):
    """Anything indexable that yields samples (a sharded dataset, an in-memory list)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Sample: ...


class GeneratedSamples:
    """``size`` samples of a domain split, generated when first asked for (and kept): a
    :class:`SampleSource` that needs no dataset on disk. The samples are the same pure
    function of (seed, index) that the sharded generator writes."""

    def __init__(self, domain: Domain, seed: int, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.domain, self.seed, self.size = domain, seed, size
        self._cache: dict[int, Sample] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} samples")
        if index not in self._cache:
            self._cache[index] = self.domain.sample(self.seed, index)
        return self._cache[index]


class MotifModel(Protocol):
    def motifs(self, x: torch.Tensor) -> torch.Tensor: ...


def collate_inputs(samples: Sequence[Sample]) -> torch.Tensor:
    """Stack the inputs of ``samples`` into one batch tensor (booleans become 0/1 bytes)."""
    x = np.stack([np.asarray(s.x) for s in samples])
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    return torch.from_numpy(x)


def assignment_for(domain_name: str) -> Assignment:
    """The channel-to-symbol assignment CE uses for a registered domain (its
    ``assignment``; the paper's: Hungarian for DigitCircle, majority for the others)."""
    return domains.get(domain_name).assignment


@torch.no_grad()
def batch_motif_errors(
    model: MotifModel, domain: Domain, batch: Sequence[Sample]
) -> tuple[MotifErrors, torch.Tensor]:
    """Motif errors of one batch, and the activations they were computed from.

    Only the non-negative part of the activations counts as "firing": for Sparling and
    the sparse baselines that is all of it; ``non-sparse``/``noise`` outputs can be negative.
    """
    acts = model.motifs(collate_inputs(batch)).clamp_min(0).float().cpu()
    errors = motif_errors(
        acts.numpy(),
        [s.motifs for s in batch],
        assignment=domain.assignment,
        symbols=domain.motif_symbols,
    )
    return errors, acts
