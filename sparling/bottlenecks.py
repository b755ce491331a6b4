"""Registry of bottlenecks placed between the motif model ``g`` and the downstream ``h``.

Every bottleneck is an ``nn.Module`` taking (N, C, L) or (N, C, H, W) and returning the same
shape, selectable by name from a config::

    >>> b = make_bottleneck("sparling", channels=4, density=0.1)
    >>> out = b(torch.randn(2, 4, 16, 16))
    >>> loss = out.mean() + b.penalty()
    >>> sorted(bottleneck_names())[:3]
    ['kl', 'l1', 'l1-annealed']

Each entry has a small pydantic parameter model (``extra="forbid"``), so a misspelt or
invalid parameter fails at construction with a message that lists what is accepted.

One training loop drives every method from an :class:`~sparling.schedule.AdaptiveSparsitySchedule`
through :meth:`Bottleneck.set_density`: sparling variants and ``topk`` take the density as
is, ``l1-annealed`` turns it into its L1 coefficient, ``noise`` into its noise level. The
other bottlenecks (``adaptive = False``) ignore it, so the loop need not special-case them;
read ``adaptive`` to know whether the call had an effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor, nn

from sparling.errors import format_validation_errors, suggestion
from sparling.sparsity import (
    ChannelBatchNorm,
    SpatialSparsity,
    check_channels_input,
    kth_largest,
    validate_density,
)

__all__ = [
    "BOTTLENECKS",
    "Bottleneck",
    "bottleneck_names",
    "bottleneck_params",
    "make_bottleneck",
    "register_bottleneck",
]


# --------------------------------------------------------------------------- registry


class Bottleneck(nn.Module):
    """Base class: ``forward(z)``, ``penalty()``, ``measured_density``, ``set_density``.

    Subclasses implement ``_forward`` and, if they have a penalty, return it from there.
    """

    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]]
    adaptive: ClassVar[bool] = False
    """Whether :meth:`set_density` changes the bottleneck (AST can drive it)."""
    density_epsilon: ClassVar[float] = 0.0
    """``measured_density`` counts outputs whose absolute value exceeds this."""
    zero_output_is_final: ClassVar[bool] = False
    """Whether an output that is zero everywhere stays so: no gradient reaches g through
    it and nothing else moves it (a ReLU of g's output, as L1's). A run whose validation
    density has been 0 long enough then stops (``collapsed``)."""

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__()
        self.channels = channels
        self.params = params
        self._last_out: Tensor | None = None
        self._penalty: Tensor | None = None

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def forward(self, z: Tensor) -> Tensor:
        """Apply the bottleneck to ``z`` of shape (N, C, L) or (N, C, H, W)."""
        check_channels_input(z, self.channels)
        out, penalty = self._forward(z)
        self._penalty = penalty
        self._last_out = out.detach()
        return out

    def penalty(self) -> Tensor:
        """Penalty term of the last forward (differentiable); a zero scalar where none."""
        if self._penalty is not None:
            return self._penalty
        device = self._last_out.device if self._last_out is not None else None
        return torch.zeros((), device=device)

    @property
    def measured_density(self) -> float | None:
        """Fraction of outputs of the last forward with ``|value| > density_epsilon``.

        None before the first forward. Computed on demand (it costs a pass over the output).
        """
        if self._last_out is None:
            return None
        out = self._last_out
        if self.density_epsilon == 0.0:
            kept = int(torch.count_nonzero(out))
        else:
            kept = int((out.abs() > self.density_epsilon).sum())
        return kept / out.numel()

    @property
    def density(self) -> float | None:
        """The density currently set (adaptive bottlenecks), else None."""
        return None

    def set_density(self, density: float) -> None:
        """Set the target density (validated). A no-op unless ``adaptive``."""
        density = validate_density(density)
        if self.adaptive:
            self._set_density(density)

    def _set_density(self, density: float) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.params.model_dump().items())
        return f"name={self.name!r}, channels={self.channels}" + (f", {fields}" if fields else "")


BOTTLENECKS: dict[str, type[Bottleneck]] = {}
"""Registered bottleneck classes by name."""

_B = TypeVar("_B", bound=type[Bottleneck])


def register_bottleneck(name: str, params: type[BaseModel]) -> Callable[[_B], _B]:
    """Class decorator adding a bottleneck to :data:`BOTTLENECKS` under ``name``.

    ``params`` is its pydantic parameter model. Registering a name twice raises ValueError.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"bottleneck name must be a non-empty string, got {name!r}")

    def decorate(cls: _B) -> _B:
        if name in BOTTLENECKS:
            raise ValueError(
                f"bottleneck {name!r} is already registered (by {BOTTLENECKS[name].__qualname__})"
            )
        if not (isinstance(cls, type) and issubclass(cls, Bottleneck)):
            raise TypeError(f"{cls!r} must be a subclass of Bottleneck")
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise TypeError(f"params for {name!r} must be a pydantic model class, got {params!r}")
        cls.name = name
        cls.Params = params
        BOTTLENECKS[name] = cls
        return cls

    return decorate


def bottleneck_names() -> list[str]:
    """Names accepted by :func:`make_bottleneck`, sorted."""
    return sorted(BOTTLENECKS)


def bottleneck_params(name: str) -> type[BaseModel]:
    """The pydantic parameter model of bottleneck ``name``."""
    return _lookup(name).Params


def _lookup(name: str) -> type[Bottleneck]:
    if name not in BOTTLENECKS:
        raise ValueError(
            f"unknown bottleneck {name!r}{suggestion(str(name), bottleneck_names())}; accepted "
            f"names: {', '.join(bottleneck_names())}"
        )
    return BOTTLENECKS[name]


def _describe(params: type[BaseModel]) -> str:
    parts = []
    for field, info in params.model_fields.items():
        default = "required" if info.is_required() else f"default {info.default!r}"
        doc = f": {info.description.rstrip('.')}" if info.description else ""
        parts.append(f"{field} ({default}){doc}")
    return "; ".join(parts) if parts else "none"


def make_bottleneck(name: str, *, channels: int, **params: Any) -> Bottleneck:
    """Build bottleneck ``name`` for ``channels`` channels with the given parameters.

    Raises ValueError for an unknown name (listing the accepted ones) and for unknown or
    invalid parameters (listing the accepted parameters).
    """
    cls = _lookup(name)
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    try:
        parsed = cls.Params(**params)
    except ValidationError as err:
        problems = "; ".join(format_validation_errors(err, root="(params)", model=cls.Params))
        raise ValueError(
            f"invalid parameters for bottleneck {name!r}: {problems}. "
            f"Accepted parameters: {_describe(cls.Params)}"
        ) from None
    return cls(channels, parsed)


# --------------------------------------------------------------------------- parameter models

_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class SparlingParams(BaseModel):
    """Parameters of ``sparling`` (one threshold per channel, MT)."""

    model_config = _CONFIG

    density: float = Field(0.5, gt=0.0, le=1.0)
    """Initial fraction of values kept, in (0, 1] (AST lowers it through set_density)."""
    momentum: float = Field(0.1, ge=0.0, le=1.0)
    """Momentum of the threshold update: t <- (1 - M) t + M quantile."""
    batch_norm: Literal["affine", "plain"] | None = "affine"
    """Per-channel batch norm before thresholding: affine, plain (non-affine) or null."""
    accumulate_motifs: float | None = Field(None, gt=0.0)
    """Pool batches until about this many values per channel are expected to survive."""


class SparlingSTParams(SparlingParams):
    """Parameters of ``sparling-st`` (a single threshold over all channels)."""


class SparlingNoBNParams(BaseModel):
    """Parameters of ``sparling-no-bn`` (MT without batch norm)."""

    model_config = _CONFIG

    density: float = Field(0.5, gt=0.0, le=1.0)
    """Initial fraction of values kept, in (0, 1] (AST lowers it through set_density)."""
    momentum: float = Field(0.1, ge=0.0, le=1.0)
    """Momentum of the threshold update: t <- (1 - M) t + M quantile."""
    accumulate_motifs: float | None = Field(None, gt=0.0)
    """Pool batches until about this many values per channel are expected to survive."""


class NonSparseParams(BaseModel):
    """``non-sparse`` takes no parameters."""

    model_config = _CONFIG


class L1Params(BaseModel):
    """Parameters of ``l1``."""

    model_config = _CONFIG

    coefficient: float = Field(1.0, ge=0.0)
    """L1 coefficient lambda: penalty = lambda * mean(|relu(z)|)."""


class L1AnnealedParams(BaseModel):
    """Parameters of ``l1-annealed``."""

    model_config = _CONFIG

    coefficient: float = Field(1.0, ge=0.0)
    """Base L1 coefficient, used at the initial density."""
    initial_density: float = Field(0.5, gt=0.0, le=1.0)
    """Density at which the coefficient equals the base (the schedule's initial density)."""


class KLParams(BaseModel):
    """Parameters of ``kl``."""

    model_config = _CONFIG

    coefficient: float = Field(1.0, ge=0.0)
    """KL coefficient lambda."""
    target_density: float = Field(0.01, gt=0.0, lt=1.0)
    """Target mean activation p of each channel."""


class NoiseParams(BaseModel):
    """Parameters of ``noise``."""

    model_config = _CONFIG

    density: float = Field(0.5, gt=0.0, le=1.0)
    """Density whose information content the noise level matches (AST lowers it)."""
    noise_in_eval: bool = True
    """Also add noise in eval mode (as the authors did), keeping the bottleneck at test time."""


class TopKParams(BaseModel):
    """Parameters of ``topk``."""

    model_config = _CONFIG

    density: float = Field(0.5, gt=0.0, le=1.0)
    """Fraction of each channel's values kept per batch."""
    batch_norm: Literal["affine", "plain"] | None = "affine"
    """Per-channel batch norm before selection: affine, plain (non-affine) or null."""


# --------------------------------------------------------------------------- sparling


class _SparlingBase(Bottleneck):
    adaptive = True
    _per_channel: ClassVar[bool] = True

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__(channels, params)
        p: Any = params
        self.layer = SpatialSparsity(
            channels=channels,
            density=p.density,
            momentum=p.momentum,
            per_channel=self._per_channel,
            batch_norm=getattr(p, "batch_norm", None),
            accumulate_motifs=p.accumulate_motifs,
        )

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        return self.layer(z), None

    @property
    def measured_density(self) -> float | None:
        return self.layer.last_density

    @property
    def density(self) -> float | None:
        return self.layer.density

    def _set_density(self, density: float) -> None:
        self.layer.density = density


@register_bottleneck("sparling", SparlingParams)
class SparlingBottleneck(_SparlingBase):
    """Sparling MT: :class:`SpatialSparsity` with one threshold per channel."""


@register_bottleneck("sparling-st", SparlingSTParams)
class SparlingSTBottleneck(_SparlingBase):
    """Sparling ST ablation: a single threshold shared by all channels."""

    _per_channel = False


@register_bottleneck("sparling-no-bn", SparlingNoBNParams)
class SparlingNoBNBottleneck(_SparlingBase):
    """Sparling MT without the batch norm (ablation)."""


# --------------------------------------------------------------------------- baselines


@register_bottleneck("non-sparse", NonSparseParams)
class NonSparseBottleneck(Bottleneck):
    """Identity (no bottleneck). ``measured_density`` is the fraction of nonzero values."""

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        return z, None


@register_bottleneck("l1", L1Params)
class L1Bottleneck(Bottleneck):
    """ReLU with an L1 penalty ``coefficient * mean(relu(z))`` on the activations."""

    zero_output_is_final = True

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__(channels, params)
        p: Any = params
        self.coefficient = float(p.coefficient)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        out = F.relu(z)
        return out, self.coefficient * out.mean()


@register_bottleneck("l1-annealed", L1AnnealedParams)
class L1AnnealedBottleneck(L1Bottleneck):
    """ReLU + L1 whose coefficient follows AST: ``base * initial_density / density``.

    The coefficient grows by ``1 / delta_update`` each time the schedule lowers the density
    (the same rule as :meth:`AdaptiveSparsitySchedule.l1_coefficient`).
    """

    adaptive = True

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__(channels, params)
        p: Any = params
        self.base_coefficient = float(p.coefficient)
        self.initial_density = float(p.initial_density)
        self._density = self.initial_density

    @property
    def density(self) -> float | None:
        return self._density

    def _set_density(self, density: float) -> None:
        self._density = density
        self.coefficient = self.base_coefficient * self.initial_density / density

    def get_extra_state(self) -> dict[str, float]:
        return {"density": self._density}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "density" not in state:
            raise ValueError(f"l1-annealed extra state must be {{'density': float}}, got {state!r}")
        self._set_density(validate_density(state["density"]))


@register_bottleneck("kl", KLParams)
class KLBottleneck(Bottleneck):
    """Sigmoid with a KL penalty pulling each channel's mean activation to ``target_density``.

    Penalty: ``coefficient * mean_c KL(p || p_c)`` with ``p_c`` the mean sigmoid output of
    channel c over the batch and positions (the authors' baseline used one mean over all
    channels; per channel matches the stated goal of a per-channel density).
    ``measured_density`` is the fraction of outputs above 0.5, as the authors measured it.
    """

    density_epsilon = 0.5
    _CLAMP = 1e-6  # keeps the logs finite when a channel saturates

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__(channels, params)
        p: Any = params
        self.coefficient = float(p.coefficient)
        self.target_density = float(p.target_density)

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        out = torch.sigmoid(z)
        dims = [0, *range(2, z.dim())]
        p_hat = out.mean(dim=dims).clamp(self._CLAMP, 1.0 - self._CLAMP)
        p = self.target_density
        kl = p * torch.log(p / p_hat) + (1.0 - p) * torch.log((1.0 - p) / (1.0 - p_hat))
        return out, self.coefficient * kl.mean()


def noise_sigma(density: float) -> float:
    """Noise scale whose Gaussian-channel capacity matches a binary code of this density.

    Information per value of a density-d binary pattern: ``H(d)`` nats (binary entropy,
    taken at ``min(d, 0.5)`` so it never falls as the density grows). A unit-variance
    signal plus N(0, sigma^2) noise carries ``0.5 * log(1 + 1 / sigma^2)`` nats, hence
    ``sigma^2 = 1 / (exp(2 H(d)) - 1)`` (the authors' rough calibration).
    """
    d = min(validate_density(density), 0.5)
    entropy = -(d * math.log(d) + (1.0 - d) * math.log1p(-d))
    return math.sqrt(1.0 / math.expm1(2.0 * entropy))


@register_bottleneck("noise", NoiseParams)
class NoiseBottleneck(Bottleneck):
    """Gaussian-noise information bottleneck (the authors' ``NoiseRatherThanSparsity``).

    Non-affine per-channel batch norm, then additive N(0, sigma^2) noise with sigma from
    :func:`noise_sigma` (density 0.5: 0.58; 5e-5: 32). Differences from the authors'
    code: the batch norm is per channel (theirs pooled all channels into one), so every
    channel has the unit variance the capacity formula assumes. Noise is added in eval mode
    too unless ``noise_in_eval=False``. The output is dense: ``measured_density`` (fraction
    of nonzero outputs) is ~1; the bottleneck is informational, not sparse.
    """

    adaptive = True

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__(channels, params)
        p: Any = params
        self.bn = ChannelBatchNorm(channels, affine=False)
        self.noise_in_eval = bool(p.noise_in_eval)
        self._density = float(p.density)

    @property
    def density(self) -> float | None:
        return self._density

    @property
    def sigma(self) -> float:
        """Current noise standard deviation."""
        return noise_sigma(self._density)

    def _set_density(self, density: float) -> None:
        self._density = density

    def get_extra_state(self) -> dict[str, float]:
        return {"density": self._density}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "density" not in state:
            raise ValueError(f"noise extra state must be {{'density': float}}, got {state!r}")
        self._density = validate_density(state["density"])

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        y = self.bn(z)
        if self.training or self.noise_in_eval:
            y = y + torch.randn_like(y) * self.sigma
        return y, None


@register_bottleneck("topk", TopKParams)
class TopKBottleneck(Bottleneck):
    """Keeps exactly the ``round(density * count)`` largest values of each channel per batch.

    ``count`` is N * L (or N * H * W); the kept number is clipped to [1, count - 1]. Output
    ``relu(y - t)`` with ``t`` the next value down (the first dropped one), so exactly that
    many outputs are positive (barring ties) and, like Sparling, they are shifted down to
    start at 0. Same rule in training and eval (the TopK of today's sparse autoencoders,
    applied per channel over the batch); optional batch norm first.
    """

    adaptive = True

    def __init__(self, channels: int, params: BaseModel) -> None:
        super().__init__(channels, params)
        p: Any = params
        self._density = float(p.density)
        self.bn = (
            None
            if p.batch_norm is None
            else ChannelBatchNorm(channels, affine=p.batch_norm == "affine")
        )

    @property
    def density(self) -> float | None:
        return self._density

    def _set_density(self, density: float) -> None:
        self._density = density

    def kept_per_channel(self, count: int) -> int:
        """How many of a channel's ``count`` values are kept."""
        return min(max(1, round(self._density * count)), count - 1)

    def get_extra_state(self) -> dict[str, float]:
        return {"density": self._density}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "density" not in state:
            raise ValueError(f"topk extra state must be {{'density': float}}, got {state!r}")
        self._density = validate_density(state["density"])

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor | None]:
        y = z if self.bn is None else self.bn(z)
        y3 = y.reshape(y.shape[0], self.channels, -1)
        count = y3.shape[0] * y3.shape[2]
        if count < 2:
            raise ValueError(
                f"topk needs at least 2 values per channel, got input of shape {tuple(z.shape)}"
            )
        if not bool(torch.isfinite(y3.detach().sum())):
            raise ValueError(
                "input contains NaN or infinite values; only finite values are accepted"
            )
        with torch.no_grad():
            threshold = kth_largest(y3.detach(), self.kept_per_channel(count) + 1)
        out = (y3 - threshold.view(1, -1, 1)).relu_()
        return out.view(z.shape), None
