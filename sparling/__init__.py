"""Sparling: learning extremely sparse intermediate activations, end to end.

A network ``h(sparse(g(x)))`` whose sparsity layer keeps a tiny, scheduled fraction of
``g``'s activations. This package is plain PyTorch: the method (:class:`SpatialSparsity`,
:class:`AdaptiveSparsitySchedule`), its baselines (:func:`make_bottleneck`), the domains
(:mod:`sparling.domains`) and the metrics (:mod:`sparling.metrics`). :func:`fit` trains
one run in this process, in a run folder (:class:`RunFolder`) the command line shares.
Orchestration with Ray and MLflow lives in the separate ``pipelines`` package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bottlenecks import Bottleneck, bottleneck_names, make_bottleneck
    from .export import export_model, load_model
    from .fitting import fit
    from .runs import RunFolder
    from .schedule import AdaptiveSparsitySchedule
    from .seeding import set_seed
    from .sparsity import SpatialSparsity

# Public names, resolved lazily (PEP 562) so that importing a light submodule such as
# ``sparling.domains`` does not pull in every other part of the library.
_EXPORTS = {
    "AdaptiveSparsitySchedule": "schedule",
    "Bottleneck": "bottlenecks",
    "RunFolder": "runs",
    "SpatialSparsity": "sparsity",
    "bottleneck_names": "bottlenecks",
    "export_model": "export",
    "fit": "fitting",
    "load_model": "export",
    "make_bottleneck": "bottlenecks",
    "set_seed": "seeding",
}

__all__ = [
    "AdaptiveSparsitySchedule",
    "Bottleneck",
    "RunFolder",
    "SpatialSparsity",
    "bottleneck_names",
    "export_model",
    "fit",
    "load_model",
    "make_bottleneck",
    "set_seed",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'sparling' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
