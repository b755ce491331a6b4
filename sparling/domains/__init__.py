"""Domains: DigitCircle, LaTeX-OCR and AudioMNISTSequence, each with ground-truth motifs.

>>> from sparling import domains
>>> d = domains.make("digit-circle")
>>> s = d.sample(seed=0, index=0)
>>> s.x.shape, s.tokens[:1], s.motifs[0].symbol  # doctest: +SKIP

Every domain is a :class:`Domain` subclass registered by name with :func:`register`.
The class carries what the rest of the library needs to know of it, so that run-config
validation, the model presets, the motif scoring and the command line's help all read
the registry instead of lists of their own:

- ``name``, ``kind`` ("image" or "audio"), ``storage`` and ``Params``, its parameters;
- ``context_radius``: the context radius of the paper's ``g`` for the domain (both
  model presets use it; a domain without one cannot be trained, only sampled);
- ``assignment``: how CE assigns motif channels to symbols ("hungarian" or "majority").
- ``max_tokens`` (a property, optional): the longest output a sample can have, which
  bounds greedy decoding (``bench/learning_curve.py`` decodes ``max_tokens + 1`` steps).

Adding a domain is one new module in this package: the modules here are imported when
the registry is first read, and the class decorated with ``@register`` registers itself::

    @register
    class Dots(Domain):
        name = "dots"
        kind = "image"
        storage = "bits"
        context_radius = 4
        class Params(DomainParams): ...
        ...

A domain defined elsewhere (a test, a notebook) registers the same way once its module
is imported.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, TypeVar

from pydantic import ValidationError

from ..errors import format_validation_errors, suggestion
from .base import (
    SPLITS,
    Domain,
    DomainError,
    DomainParams,
    Motif,
    Sample,
    canonical_hash,
    stream_seed,
)

_REGISTRY: dict[str, type[Domain]] = {}
_loaded = False

_D = TypeVar("_D", bound=type[Domain])


def register(cls: _D) -> _D:
    """Class decorator adding a domain to the registry under ``cls.name``.

    Checks what the registry's readers rely on; refuses duplicate names.
    """
    if not (isinstance(cls, type) and issubclass(cls, Domain)):
        raise TypeError(f"{cls!r} must be a subclass of Domain")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__}.name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(
            f"domain {name!r} is already registered (by {_REGISTRY[name].__qualname__})"
        )
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, DomainParams)):
        raise TypeError(f"{cls.__qualname__}.Params must be a DomainParams subclass")
    if getattr(cls, "kind", None) not in ("image", "audio"):
        raise ValueError(f"{cls.__qualname__}.kind must be 'image' or 'audio'")
    if getattr(cls, "storage", None) not in ("bits", "float32"):
        raise ValueError(f"{cls.__qualname__}.storage must be 'bits' or 'float32'")
    cr = cls.context_radius
    if cr is not None and (isinstance(cr, bool) or not isinstance(cr, int) or cr < 0):
        raise ValueError(f"{cls.__qualname__}.context_radius must be an integer >= 0 or None")
    _REGISTRY[name] = cls
    return cls


def _load_builtin() -> None:
    """Import every module of this package once, so that its domains register."""
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base" and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def names() -> list[str]:
    """The registered domain names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def get(name: str) -> type[Domain]:
    """The domain class registered as ``name``; :class:`DomainError` listing the
    registered names if there is none."""
    _load_builtin()
    if name not in _REGISTRY:
        raise DomainError(
            f"unknown domain {name!r}{suggestion(str(name), names())}; accepted names: "
            + ", ".join(names())
        )
    return _REGISTRY[name]


def make(name: str, *, split: str = "train", **params: Any) -> Domain:
    """Build a domain by name with validated parameters.

    ``split`` selects the sample stream ("train", "val" or "test"); for audio it also
    selects the speaker set (test speakers are never heard in training).
    """
    cls = get(name)
    try:
        return cls(split=split, **params)  # type: ignore[arg-type]
    except ValidationError as e:
        problems = "; ".join(format_validation_errors(e, root="(params)", model=cls.Params))
        raise DomainError(f"bad parameters for domain {name!r}: {problems}") from None


__all__ = [
    "SPLITS",
    "Domain",
    "DomainError",
    "DomainParams",
    "Motif",
    "Sample",
    "canonical_hash",
    "get",
    "make",
    "names",
    "register",
    "stream_seed",
]
