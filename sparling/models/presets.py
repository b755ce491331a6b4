"""Model sizes per domain (``paper`` and ``fast``) and :func:`build_model`.

``paper`` is the published setting, number for number from the authors' code
(kavigupta/sparling-repro): ``g`` of width 64 and context radius 8/32/16 (each
domain's ``context_radius``, read from the domain registry); ``h`` with a 1x1
re-embedding to 512 channels, max-pool 8, a one-layer bidirectional LSTM of 256 per
direction along each row (images), sinusoidal positional encodings with dropout 0.1,
and PyTorch's default ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer``
at 512 channels (8 heads, ff 2048, dropout 0.1, ReLU, post-norm), 6 layers each, no
final LayerNorm.

``fast`` is DigitCircle's CPU preset (and the same shrink for the other domains), chosen
with ``bench/learning_curve.py`` (records in ``docs/learning-curve/``, figure
``docs/img/learning-curve.png``). Measured choices, one thread on the 2-core AMD EPYC,
the full model at density 0.5, batch 16, AdamW 1e-3:

- **Pre-norm**, 2 encoder and 2 decoder layers at 128 channels: a shrunken post-norm copy
  of the paper's ``h`` did not learn in 20k samples, a pre-norm one did.
- **Fourier coordinates instead of the row LSTM** (``position="fourier"``,
  ``row_lstm=False``): each pooled cell's continuous (row, column) centre, 6 octaves per
  axis, through a learned linear map. At 16k samples the validation loss was 1.28 against
  1.60 with the row LSTM (and Fourier rows); the paper's row LSTM with sinusoidal rows
  stayed at the digit-frequency loss (~1.7) for 75-150k samples at 1e-3 and above (the
  H100 probes in ``docs/results.md``). Where the digits are
  relative to each other (their order around the circle) is what ``h`` learns slowest.
- **Salience** (``salience=True``): every attention over the cells adds the log of the
  cell's total activation to its logits, so attention starts where the sparsity layer let
  activations through. ``h`` alone on ideal motif maps reached 95% exact match at 18k
  samples with it; without it, it was still at loss 1.25 and 1% after 32k (its attention
  spread over 144 cells, 139 of them empty). The full model at density 0.5: loss 0.96 and
  6.4% at 16k samples, against 1.41 and 1.0%.
- **Tokens, not cells** (``tokens=64``): the encoder reads the 64 strongest activations
  (at most one per channel and 8-pixel cell), each a token of its own channel at its
  exact position, instead of the 144 pooled cells. What keeps the full model on its
  plateau (the right digits in the wrong order) is ``h`` ordering maps cluttered like a
  real ``g``'s; ``h`` alone on such maps (``--ideal-inside 4 --ideal-outside 25``) sat at
  6.4% and loss 0.93 after 80k samples with cells; with tokens it left the plateau
  after 50k (28% at 80k; 41% at AdamW 3e-4), and ran 3.7x faster. The full model at
  density 5.0e-4 runs 1.7x faster (44 samples/s against 26) and left the plateau too.
- **Tokens without strength** (``token_strength=False``): a token is its channel and its
  position; only the salience bias sees its value. With the strength as a token feature,
  two of three DigitCircle seeds let one channel stand for two digits, told apart by
  magnitude: one seed's channel 4 fired on 2s at a median of 84 and on 3s at 13 (and
  channel 1 on 4s at 59 and on 3s at 9), so no channel was the 3s' and CE was 8.9% at
  5.0e-5 with 85% exact match; the other's channel 6 fired on 8s at 4.5 and on 9s at 1.0,
  and it stayed on the plateau at 5.0e-4 for 180k samples. Without it, seeds 0 and 1 each
  gave every digit its own channel and reached 5.0e-5 at 102k and 110k samples, with test
  CE 0.06% and 0.15%, FPE 0.85% and 0.76% (docs/results.md).
- **Pool before re-embedding** (``pool_first=True``): 60 samples/s against 26 (2.3x), with
  the loss per sample close (1.30 against 1.08 at 20k). The paper's order re-embeds all
  10,000 positions to 128 channels and keeps one value in 64.
- ``g`` of width 16 (a sixteenth of the paper's ``g`` FLOPs), context radius 8 as in the
  paper: at width 32 it learned no faster per sample, and ran 1.5x slower.
- No dropout: training samples are generated fresh, so there is little to overfit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import format_validation_errors, nearest
from .downstream import DownstreamConfig, DownstreamModel
from .motif import Dims, MotifConfig, MotifModel
from .sparling_model import SparlingModel
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from torch import nn

    from ..domains.base import Domain

PresetName = Literal["paper", "fast"]
PRESET_NAMES: tuple[str, ...] = ("paper", "fast")


class ArchitectureConfig(BaseModel):
    """Everything that sizes a :class:`SparlingModel` for one domain."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    channels: int = Field(ge=1)
    """Motif channels (``g``'s output, the bottleneck's width); the paper: 10/32/10."""
    motif: MotifConfig
    """Sizes of ``g``."""
    downstream: DownstreamConfig
    """Sizes of ``h``."""


@dataclass(frozen=True)
class DomainInfo:
    """What building a model needs to know of a domain (a :class:`Domain` has all of it)."""

    name: str
    kind: Literal["image", "audio"]
    input_shape: tuple[int, ...]
    vocabulary: tuple[str, ...]
    paper_channels: int

    @classmethod
    def of(cls, domain: Domain) -> DomainInfo:
        return cls(
            name=domain.name,
            kind=domain.kind,
            input_shape=tuple(domain.input_shape),
            vocabulary=tuple(domain.vocabulary),
            paper_channels=domain.paper_channels,
        )

    @property
    def dims(self) -> Dims:
        return 2 if self.kind == "image" else 1

    @property
    def in_channels(self) -> int:
        """``g``'s input channels: 1 for images, the mel bins for audio (N, frames, mels)."""
        return 1 if self.kind == "image" else self.input_shape[1]


# -- the presets ------------------------------------------------------------------------------
_PAPER_H = DownstreamConfig()  # the defaults are the paper's

# The fast h (see the module docstring for the measurements behind each choice).
_FAST_H = DownstreamConfig(
    d_model=128,
    encoder_layers=2,
    decoder_layers=2,
    heads=4,
    ff=256,
    dropout=0.0,
    norm_first=True,
    row_lstm=False,
    position="fourier",
    pool_first=True,
    salience=True,
    tokens=64,
    token_strength=False,
)
# g's convolutions are most of the compute at 100x100. Width 16 (a sixteenth of the
# paper's g FLOPs): on an H100, DigitCircle probes at AdamW 3e-4 learned per sample as
# well with 16 as with 32 (val exact match 18% vs 19% after ~80k samples, see
# docs/results.md), and 16 runs about 1.5x faster on a CPU.
_FAST_G_WIDTH = 16


def _preset(domain: str, preset: str) -> tuple[MotifConfig, DownstreamConfig]:
    from .. import domains

    cls = domains.get(domain)  # raises naming the registered domains
    cr = cls.context_radius  # the domain's own (g's context radius in the paper)
    if cr is None:
        raise ValueError(
            f"no model presets for domain {domain!r}: {cls.__qualname__} sets no context_radius"
        )
    if preset not in PRESET_NAMES:
        raise ValueError(f"unknown preset {preset!r}; accepted: {PRESET_NAMES}")
    audio = cls.kind == "audio"
    if preset == "paper":
        g, h = MotifConfig(width=64, cr=cr), _PAPER_H
    else:
        g, h = MotifConfig(width=_FAST_G_WIDTH, cr=cr), _FAST_H
    if audio:  # no rows to run an LSTM along: the paper's audio h is a plain 1-D Transformer
        h = h.model_copy(update={"row_lstm": False})
    return g, h


def preset_config(
    domain: str, preset: str, *, channels: int, **overrides: Any
) -> ArchitectureConfig:
    """The named preset for ``domain`` with ``channels`` motif channels and flat overrides.

    Overrides name fields of :class:`MotifConfig` (``width``, ``cr``) or
    :class:`DownstreamConfig` (``d_model``, ``heads``, ...); unknown names and invalid
    values raise ``ValueError`` naming the field.
    """
    g, h = _preset(domain, preset)
    if "channels" in overrides:
        raise ValueError(
            "channels is not a model override: the motif channels are model.channels "
            "(e.g. model: {channels: 10}), not model.overrides.channels"
        )
    g_fields, h_fields = set(MotifConfig.model_fields), set(DownstreamConfig.model_fields)
    unknown = sorted(set(overrides) - g_fields - h_fields)
    if unknown:
        accepted = sorted(g_fields | h_fields)
        near = {k: nearest(k, accepted) for k in unknown}
        hints = "".join(f" ({k}: did you mean {m!r}?)" for k, m in near.items() if m)
        raise ValueError(
            f"unknown model override(s) {unknown}{hints}; accepted: {', '.join(accepted)}"
        )
    g_over = {k: v for k, v in overrides.items() if k in g_fields}
    h_over = {k: v for k, v in overrides.items() if k in h_fields}
    try:
        # Validate as one nested object (model_copy would not validate) so that errors
        # carry the section: "downstream.heads", "motif.cr", "channels".
        return ArchitectureConfig.model_validate(
            {
                "channels": channels,
                "motif": {**g.model_dump(), **g_over},
                "downstream": {**h.model_dump(), **h_over},
            }
        )
    except ValidationError as e:
        lines = [
            f"  {problem}" for problem in format_validation_errors(e, model=ArchitectureConfig)
        ]
        raise ValueError(
            f"invalid model config for {domain}/{preset} with overrides {overrides}, "
            f"channels={channels}:\n" + "\n".join(lines)
        ) from None


def resolve_domain(domain: str | Domain | DomainInfo) -> DomainInfo:
    """A :class:`DomainInfo` from a registered domain name, a domain, or itself."""
    if isinstance(domain, DomainInfo):
        return domain
    if isinstance(domain, str):
        from .. import domains

        return DomainInfo.of(domains.make(domain))
    return DomainInfo.of(domain)


def build_from_config(
    config: ArchitectureConfig, domain: DomainInfo, bottleneck: nn.Module
) -> SparlingModel:
    """Assemble ``g``, ``bottleneck`` and ``h`` for ``domain``."""
    tokenizer = Tokenizer(domain.vocabulary)
    g = MotifModel(domain.in_channels, config.channels, config.motif, domain.dims)
    h = DownstreamModel(config.channels, len(tokenizer), config.downstream, domain.dims)
    spatial = domain.input_shape if domain.dims == 2 else domain.input_shape[:1]
    if min(spatial) < config.downstream.pool:
        raise ValueError(f"pool ({config.downstream.pool}) exceeds the input size {spatial}")
    return SparlingModel(g, bottleneck, h, tokenizer)


def build_model(
    domain: str | Domain | DomainInfo,
    preset: str = "fast",
    bottleneck_name: str = "sparling",
    bottleneck_params: dict[str, Any] | None = None,
    **overrides: Any,
) -> SparlingModel:
    """A :class:`SparlingModel` sized by ``preset`` ("paper" or "fast") for ``domain``.

    ``channels`` (default: the domain's paper count) and any :class:`MotifConfig` /
    :class:`DownstreamConfig` field may be overridden; the bottleneck comes from
    ``sparling.make_bottleneck(bottleneck_name, channels=..., **bottleneck_params)``.
    """
    from ..bottlenecks import make_bottleneck

    info = resolve_domain(domain)
    channels = overrides.pop("channels", None)
    if channels is None:
        channels = info.paper_channels
    config = preset_config(info.name, preset, channels=channels, **overrides)
    bottleneck = make_bottleneck(
        bottleneck_name, channels=config.channels, **(bottleneck_params or {})
    )
    return build_from_config(config, info, bottleneck)
