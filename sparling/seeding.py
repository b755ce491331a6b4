"""One place that seeds every random number generator a run touches."""

from __future__ import annotations

import random

import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python, numpy's legacy global RNG and torch (CPU and CUDA).

    Library code draws from explicit generators wherever it can; this covers the rest
    (weight initialisation, dropout).
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
