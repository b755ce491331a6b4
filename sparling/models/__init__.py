"""The models: ``g`` (:mod:`.motif`), ``h`` (:mod:`.downstream`), their composition
(:mod:`.sparling_model`), the tokenizer and the per-domain presets.

>>> from sparling.models import build_model
>>> model = build_model("digit-circle", "fast", "sparling")  # doctest: +SKIP
>>> logits = model(x, model.tokenizer.encode_batch(tokens))  # doctest: +SKIP
"""

from __future__ import annotations

from .downstream import DownstreamConfig, DownstreamModel, sequence_loss
from .motif import MotifConfig, MotifModel, ResidualUnit
from .presets import (
    PRESET_NAMES,
    ArchitectureConfig,
    DomainInfo,
    build_from_config,
    build_model,
    preset_config,
    resolve_domain,
)
from .sparling_model import SparlingModel
from .tokenizer import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS, Tokenizer

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "PRESET_NAMES",
    "SPECIAL_TOKENS",
    "ArchitectureConfig",
    "DomainInfo",
    "DownstreamConfig",
    "DownstreamModel",
    "MotifConfig",
    "MotifModel",
    "ResidualUnit",
    "SparlingModel",
    "Tokenizer",
    "build_from_config",
    "build_model",
    "preset_config",
    "resolve_domain",
    "sequence_loss",
]
