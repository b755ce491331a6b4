"""The domain contract shared by every domain.

A domain turns ``(params, seed, index)`` into one :class:`Sample`: the input ``x``,
the output ``tokens`` and the ground-truth ``motifs`` (where each true motif is).
Everything here is plain numpy; no Ray, no MLflow.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

SPLITS = ("train", "val", "test")
Split = Literal["train", "val", "test"]


class Motif(NamedTuple):
    """One true motif: the token it stands for and where it is (slices over ``x``'s axes).

    A ``Motif`` is a tuple, so ``symbol, slices = motif`` works as the contract says.
    """

    symbol: str
    slices: tuple[slice, ...]


@dataclass
class Sample:
    x: np.ndarray
    tokens: list[str]
    motifs: list[Motif] = field(default_factory=list)


class DomainParams(BaseModel):
    """Base of every domain's validated parameters: unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def stream_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The random stream of one sample: distinct per (seed, split, index), stable across runs."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, SPLITS.index(split), int(index)])


class Domain(ABC):
    """A source of samples with ground-truth motifs.

    Subclasses set the class attributes, define ``Params`` (a :class:`DomainParams`)
    and implement :meth:`sample`.
    """

    name: ClassVar[str]
    Params: ClassVar[type[DomainParams]]
    #: "image" (x is (H, W), binary) or "audio" (x is (frames, mels), float32)
    kind: ClassVar[Literal["image", "audio"]]
    #: how shards store x: "bits" (bit-packed booleans) or "float32"
    storage: ClassVar[Literal["bits", "float32"]]

    def __init__(self, split: Split = "train", **params: Any) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split: Split = split
        self.params = self.Params(**params)

    # -- descriptive properties -------------------------------------------------
    @property
    @abstractmethod
    def vocabulary(self) -> list[str]:
        """Output token strings (no special tokens)."""

    @property
    @abstractmethod
    def motif_symbols(self) -> list[str]:
        """The true motif classes (token strings they stand for)."""

    @property
    def num_motif_classes(self) -> int:
        return len(self.motif_symbols)

    @property
    @abstractmethod
    def paper_channels(self) -> int:
        """Number of motif channels the paper used for this domain."""

    @property
    @abstractmethod
    def expected_motifs(self) -> float:
        """Expected number of true motifs per sample."""

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]:
        """Shape of ``x``."""

    @property
    def positions(self) -> int:
        """Number of spatial positions a motif channel has (H*W for images, frames for audio)."""
        shape = self.input_shape
        return shape[0] * shape[1] if self.kind == "image" else shape[0]

    @property
    def target_density(self) -> float:
        """The paper's minimum density: expected motifs / (positions x channels)."""
        return self.expected_motifs / (self.positions * self.paper_channels)

    @property
    def reported_density(self) -> float:
        """The first density of the form 0.5 * 0.75**k at or above :attr:`target_density`."""
        return reported_density(self.target_density)

    # -- sampling ----------------------------------------------------------------
    @abstractmethod
    def sample(self, seed: int, index: int) -> Sample:
        """A pure function of (params, split, seed, index)."""

    def rng(self, seed: int, index: int) -> np.random.Generator:
        return np.random.default_rng(stream_seed(seed, self.split, index))

    # -- identity ------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """Canonical, JSON-able description of this domain (name, split, resolved params)."""
        return {"name": self.name, "split": self.split, "params": self.params.model_dump(mode="json")}

    def spec_hash(self) -> str:
        return canonical_hash(self.spec())


def reported_density(target: float, start: float = 0.5, step: float = 0.75) -> float:
    k = math.floor(math.log(target / start) / math.log(step))
    d = start * step**k
    while d < target:  # guard against floating-point error at the boundary
        k -= 1
        d = start * step**k
    return d


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()
