"""Domains: DigitCircle, LaTeX-OCR and AudioMNISTSequence, each with ground-truth motifs.

>>> from sparling import domains
>>> d = domains.make("digit-circle")
>>> s = d.sample(seed=0, index=0)
>>> s.x.shape, s.tokens[:1], s.motifs[0].symbol  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .base import SPLITS, Domain, DomainParams, Motif, Sample, canonical_hash, stream_seed

_REGISTRY: dict[str, type[Domain]] = {}


def register(cls: type[Domain]) -> type[Domain]:
    """Class decorator adding a domain to the registry; refuses duplicate names."""
    if cls.name in _REGISTRY:
        raise ValueError(f"domain {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # Imported lazily so that a missing optional piece of one domain never breaks another.
    import importlib

    for module in ("digit_circle", "latex_ocr", "audio_digits"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:  # the module itself not written yet
            if e.name != f"{__name__}.{module}":
                raise


def names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def make(name: str, *, split: str = "train", **params: Any) -> Domain:
    """Build a domain by name with validated parameters.

    ``split`` selects the sample stream ("train", "val" or "test"); for audio it also
    selects the speaker set (test speakers are never heard in training).
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown domain {name!r}; accepted names: {', '.join(sorted(_REGISTRY))}")
    from pydantic import ValidationError

    try:
        return _REGISTRY[name](split=split, **params)  # type: ignore[arg-type]
    except ValidationError as e:
        raise ValueError(f"bad parameters for domain {name!r}: {e}") from None


__all__ = [
    "SPLITS",
    "Domain",
    "DomainParams",
    "Motif",
    "Sample",
    "canonical_hash",
    "make",
    "names",
    "register",
    "stream_seed",
]
