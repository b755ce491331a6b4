"""The spatial sparsity layer of Sparling (docs/method.md section 2).

``SpatialSparsity`` batch-normalises each channel, keeps a per-channel threshold that tracks
the ``1 - density`` quantile of the normalised values seen in training, and outputs
``relu(z - threshold)``. The helpers here (``ChannelBatchNorm``, ``top_values``,
``kth_largest``) are reused by the baselines in :mod:`sparling.bottlenecks`.

Efficiency notes (the layer should cost a small multiple of a ReLU of the same size):

* In training with batch norm, statistics, normalisation, thresholding and the ReLU run in
  one custom autograd function with a hand-written backward. The statistics take two
  reads of the input; with a positive batch-norm scale the quantile is selected on the
  raw input and mapped through the per-channel affine map, so the output is written by a
  single inference-form ``F.batch_norm`` call (threshold folded into its bias) plus an
  in-place ReLU. ``F.batch_norm`` in training form, a subtraction and a ReLU cost several
  times more on CPU.
* The quantile needs only the largest ``count * density + 1`` values of a channel. At low
  density these are found from per-block maxima (see :func:`top_values`): one cheap pass
  over the data plus a ``topk`` over a few thousand block maxima, instead of a ``topk`` or
  ``kthvalue`` over every value. At high density (roughly above 1/8) the quantile is
  bracketed between two values of a fixed sample, one counting pass checks the bracket,
  and only the few percent of values inside it go to an exact ``kthvalue``
  (:func:`_kth_largest_bracketed`; measured 2.5x cheaper than ``kthvalue`` over each
  channel).
* The measured density (fraction of nonzero outputs) is computed lazily, only when asked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = [
    "BatchNormMode",
    "ChannelBatchNorm",
    "SpatialSparsity",
    "check_channels_input",
    "kth_largest",
    "top_values",
    "validate_density",
]

BatchNormMode = Literal["affine", "plain"] | None
_BATCH_NORM_MODES = ("affine", "plain", None)


# --------------------------------------------------------------------------- validation


def validate_density(density: Any, name: str = "density") -> float:
    """Return ``density`` as a float, raising if it is not a real number in (0, 1]."""
    if isinstance(density, bool) or not isinstance(density, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1], got {density!r}")
    density = float(density)
    if not (0.0 < density <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in (0, 1] (fraction of values kept), got {density!r}")
    return density


def check_channels_input(z: Any, channels: int, what: str = "input") -> None:
    """Check that ``z`` is a floating tensor of shape (N, C, L) or (N, C, H, W) with C == channels."""
    if not isinstance(z, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() not in (3, 4):
        raise ValueError(
            f"{what} must have shape (N, C, L) or (N, C, H, W) (rank 3 or 4), "
            f"got rank {z.dim()} with shape {tuple(z.shape)}"
        )
    if z.shape[1] != channels:
        raise ValueError(
            f"{what} has {z.shape[1]} channels (dim 1 of shape {tuple(z.shape)}), "
            f"but the layer was built with channels={channels}"
        )
    if not z.is_floating_point():
        raise TypeError(f"{what} must be a floating-point tensor, got dtype {z.dtype}")
    if z.numel() == 0:
        raise ValueError(f"{what} must not be empty, got shape {tuple(z.shape)}")


def _check_finite(total: Tensor, what: str = "input") -> None:
    # A sum over all values is non-finite iff some value is NaN/inf (barring overflow of
    # values near float max), and the sum is needed anyway for the batch-norm mean: this
    # is far cheaper than torch.isfinite(z).all(), which allocates a mask.
    if not bool(torch.isfinite(total).all()):
        raise ValueError(f"{what} contains NaN or infinite values; only finite values are accepted")


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------- selection


def _block_size(row: int, r: int, count: int) -> int:
    """Largest divisor of ``row`` not above sqrt(count / r) (which balances the two passes)."""
    target = max(2, int(math.sqrt(count / max(r, 1))))
    for b in range(min(row, target), 1, -1):
        if row % b == 0:
            return b
    return 1


def top_values(y: Tensor, r: int) -> Tensor:
    """The ``r`` largest values of each group, unsorted.

    ``y`` has shape (N, G, S): group g holds the N * S values ``y[:, g, :]``. Returns (G, r).

    Fast path: split every row into blocks of B values and take block maxima. The r largest
    values of a group all lie in the r blocks with the largest maxima (a value outside them
    is exceeded by at least r block maxima, so it is not among the r largest), so only
    r * B values need a final ``topk``. Exact, including ties.
    """
    n, g, s = y.shape
    count = n * s
    if not 1 <= r <= count:
        raise ValueError(f"r must be in [1, {count}], got {r}")
    b = _block_size(s, r, count)
    nb = s // b
    if b > 1 and 4 * r * b <= count:
        y = y.contiguous()
        block_max = y.view(n, g, nb, b).amax(dim=3)  # (N, G, nb)
        per_group = block_max.transpose(0, 1).reshape(g, n * nb)  # small copy
        idx = per_group.topk(r, dim=1, sorted=False).indices  # (G, r): n_i * nb + block
        groups = torch.arange(g, device=y.device).unsqueeze(1)
        flat = (idx // nb * g + groups) * nb + idx % nb  # block index in y.view(-1, b)
        candidates = y.view(-1, b)[flat.reshape(-1)].view(g, r * b)
        return candidates.topk(r, dim=1, sorted=False).values
    flat_values = y.transpose(0, 1).reshape(g, count)
    return flat_values.topk(r, dim=1, sorted=False).values


def kth_largest(y: Tensor, m: int) -> Tensor:
    """The ``m``-th largest value of each group of ``y`` (shape (N, G, S)); returns (G,)."""
    n, g, s = y.shape
    count = n * s
    if not 1 <= m <= count:
        raise ValueError(f"m must be in [1, {count}], got {m}")
    if 4 * m * _block_size(s, m, count) <= count:
        # small m: top-m by the block path, then its minimum
        return top_values(y, m).amin(dim=1)
    if count >= _BRACKET_MIN_COUNT:
        return _kth_largest_bracketed(y, m)
    if 8 * m <= count:
        return top_values(y, m).amin(dim=1)
    # large m (high density), small input: linear-time selection beats topk here
    flat_values = y.transpose(0, 1).reshape(g, count)
    return flat_values.kthvalue(count - m + 1, dim=1).values


# Bracketed selection (Floyd-Rivest style) pays off from about this many values per group.
_BRACKET_MIN_COUNT = 16384
_BRACKET_SAMPLE = 2048
_sample_columns: dict[tuple[int, int, str], Tensor] = {}


def _fixed_sample(s: int, size: int, device: torch.device) -> Tensor:
    """A fixed pseudo-random subset of ``range(s)`` (sorted), the same on every call."""
    key = (s, size, str(device))
    cols = _sample_columns.get(key)
    if cols is None:
        gen = torch.Generator().manual_seed(s * 1_000_003 + size)
        cols = torch.randperm(s, generator=gen)[:size].sort().values.to(device)
        _sample_columns[key] = cols
    return cols


def _kth_largest_bracketed(y: Tensor, m: int) -> Tensor:
    """Exact ``m``-th largest of each group of ``y`` (N, G, S) without a full ``kthvalue``.

    A fixed sample of the values brackets the answer between two sample values ``lo <= hi``
    (a few standard deviations of the sample rank either side of the target rank); one
    counting pass checks the bracket (``#(y > hi) < m <= #(y >= lo)``) and only the values
    inside it, a few percent of the group, go to ``kthvalue``. A group whose bracket misses
    (unlikely; adversarial data) falls back to ``kthvalue`` over all its values, so the
    result is always exact and does not depend on the sample.
    """
    n, g, s = y.shape
    count = n * s
    per_row = min(s, max(1, _BRACKET_SAMPLE // n))
    cols = _fixed_sample(s, per_row, y.device)
    sample = y.index_select(2, cols).transpose(0, 1).reshape(g, -1)  # (G, k)
    k = sample.shape[1]
    q = m / count
    spread = 3.0 * math.sqrt(k * q * (1.0 - q)) + 2.0
    # sample ranks from the top (1 = largest) of hi and lo
    hi_rank = math.floor(q * k - spread)
    lo_rank = math.ceil(q * k + spread)
    inf = torch.full((g,), math.inf, dtype=y.dtype, device=y.device)
    hi = sample.kthvalue(k - hi_rank + 1, dim=1).values if hi_rank >= 1 else inf
    lo = sample.kthvalue(k - lo_rank + 1, dim=1).values if lo_rank <= k else -inf
    above_mask = y > hi.view(1, g, 1)
    band_mask = y >= lo.view(1, g, 1)
    # lo <= hi, so above_mask implies band_mask: the xor keeps lo <= y <= hi
    band_mask.logical_xor_(above_mask)
    # (bool -> uint8 is a free view; an int32 sum along the rows, then over the batch, is
    # several times cheaper than count_nonzero or a sum over both dimensions at once)
    above = above_mask.view(torch.uint8).sum(dim=2, dtype=torch.int32).sum(dim=0)
    in_band = band_mask.view(torch.uint8).sum(dim=2, dtype=torch.int32).sum(dim=0)
    out = torch.empty(g, dtype=y.dtype, device=y.device)
    for gi, (a, b) in enumerate(zip(above.tolist(), in_band.tolist(), strict=True)):
        if a < m <= a + b:
            band = y[:, gi, :].masked_select(band_mask[:, gi, :])
            # the answer is the (m - a)-th largest value of the band
            out[gi] = band.kthvalue(b - (m - a) + 1).values
        else:
            out[gi] = y[:, gi, :].reshape(-1).kthvalue(count - m + 1).values
    return out


def _quantile_rank(count: int, density: float) -> int:
    """How many of ``count`` values are >= the (1 - density) quantile (docs/method.md sec. 2).

    The quantile is the k-th smallest value, k = max(1, floor(count * (1 - density))),
    which is the (count - k + 1)-th largest.
    """
    k = max(1, math.floor(count * (1.0 - density)))
    return count - k + 1


# --------------------------------------------------------------------------- batch norm


class ChannelBatchNorm(nn.Module):
    """Per-channel batch norm for (N, C, L) and (N, C, H, W) inputs alike.

    Same maths and state names as ``nn.BatchNorm1d/2d`` (weight, bias, running_mean,
    running_var, num_batches_tracked), with one difference: the first training batch sets
    the running statistics instead of blending them into the (0, 1) defaults, so that eval
    mode is usable after a handful of batches whatever the scale of the input.

    >>> bn = ChannelBatchNorm(4, affine=False)
    >>> bn(torch.randn(8, 4, 30)).shape
    torch.Size([8, 4, 30])
    """

    def __init__(
        self, channels: int, *, affine: bool = True, eps: float = 1e-5, momentum: float = 0.1
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a positive finite number, got {eps!r}")
        if not (0.0 <= momentum <= 1.0):
            raise ValueError(f"batch-norm momentum must be in [0, 1], got {momentum!r}")
        self.affine = affine
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.weight: nn.Parameter | None
        self.bias: nn.Parameter | None
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        # Python-side mirror of num_batches_tracked > 0, so that training does not need a
        # device sync per batch; None means "unknown, read the buffer" (e.g. after loading).
        self._seen_batch: bool | None = False

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._seen_batch = None

    def _first_batch(self) -> bool:
        if self._seen_batch is None:
            self._seen_batch = bool(self.num_batches_tracked.item() > 0)
        return not self._seen_batch

    @torch.no_grad()
    def set_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """Replace the running statistics (a re-estimate, e.g. by
        :meth:`~sparling.models.SparlingModel.recalibrate_batch_norm`); a later first
        training batch no longer overwrites them."""
        self.running_mean.copy_(mean.to(self.running_mean))
        self.running_var.copy_(unbiased_var.to(self.running_var))
        if self._first_batch():
            self.num_batches_tracked.add_(1)
        self._seen_batch = True

    @torch.no_grad()
    def update_running(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """Blend batch statistics into the running ones (the first batch replaces them)."""
        m = 1.0 if self._first_batch() else self.momentum
        self.running_mean.mul_(1.0 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1.0 - m).add_(unbiased_var.to(self.running_var.dtype), alpha=m)
        self.num_batches_tracked.add_(1)
        self._seen_batch = True

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` of shape (N, C, ...) per channel."""
        check_channels_input(x, self.channels)
        momentum = 1.0 if self.training and self._first_batch() else self.momentum
        out = F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            momentum,
            self.eps,
        )
        if self.training:
            self.num_batches_tracked.add_(1)
            self._seen_batch = True
        return out


# --------------------------------------------------------------------------- fused training path


_DOT_CHUNK = 1 << 18  # elements per temporary in _channel_dot (1 MiB in float32)


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-channel sum of ``a * b`` over dims 0 and 2 of (N, C, S) tensors.

    ``vecdot`` materialises the full product; doing it in slices along N keeps that
    temporary small (cache-resident, reused by the allocator) instead of a fresh
    input-sized buffer per call, which on CPU costs page faults and memory traffic.
    """
    n, c, s = a.shape
    step = max(1, _DOT_CHUNK // max(1, c * s))
    if step >= n:
        return torch.linalg.vecdot(a, b, dim=2).sum(dim=0)
    total = torch.linalg.vecdot(a[:step], b[:step], dim=2).sum(dim=0)
    for i in range(step, n, step):
        total += torch.linalg.vecdot(a[i : i + step], b[i : i + step], dim=2).sum(dim=0)
    return total


def _batch_stats(x: Tensor) -> tuple[Tensor, Tensor, bool, bool]:
    """Per-channel mean and biased variance of ``x`` (N, C, S), whether the input is finite,
    and whether the statistics needed the precise (centred) computation.

    The variance comes from the raw sum of squares (two reads, no allocation), unless some
    channel's mean is large against its spread (mean^2 > 100 var), where float32
    cancellation would cost digits: then it is recomputed from centred values.
    """
    n, c, s = x.shape
    count = n * s
    total = x.sum(dim=(0, 2))
    mean = total / count
    var = (_channel_dot(x, x) / count - mean * mean).clamp_min_(0.0)
    # one host sync for both checks
    finite, precise = torch.stack(
        [torch.isfinite(total).all(), (mean * mean > 100.0 * var).any()]
    ).tolist()
    if precise and finite:
        centred = x - mean.view(1, c, 1)
        var = _channel_dot(centred, centred) / count
    return mean, var, bool(finite), bool(precise)


class _NormSparsify(torch.autograd.Function):
    """Training-mode ``relu(batch_norm(x) - t)`` with the threshold update in the middle.

    The statistics take two reads of ``x``. With one threshold per channel and a positive
    batch-norm scale (the usual case), the quantiles are selected on ``x`` itself and mapped
    through the per-channel affine map, so the output is produced by a single fused
    normalise-and-shift pass (``F.batch_norm`` in inference form, with the threshold folded
    into its bias) plus an in-place ReLU. Otherwise the normalised values are materialised
    first. Backward is the batch-norm backward with the ReLU mask folded in; the thresholds
    are constants for autograd (they are statistics, not parameters).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        layer: SpatialSparsity,
    ) -> Tensor:
        n, c, s = x.shape
        count = n * s
        bn = layer.bn
        assert bn is not None
        mean, var, finite, precise = _batch_stats(x)
        if not finite:
            raise ValueError(
                "input contains NaN or infinite values; only finite values are accepted"
            )
        invstd = torch.rsqrt(var + bn.eps)
        bn.update_running(mean, var * (count / (count - 1)))
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        b = torch.zeros_like(mean) if bias is None else bias
        if layer.per_channel and (weight is None or bool((scale > 0).all())):
            # normalised = scale * x + shift is increasing in x: select on x, map the result
            threshold = layer._update_threshold(x, scale, shift)
            out = F.batch_norm(x, mean, var, weight, b - threshold, False, 0.0, bn.eps)
        else:
            out = F.batch_norm(x, mean, var, weight, bias, False, 0.0, bn.eps)
            threshold = layer._update_threshold(out)
            out.sub_(threshold.to(out.dtype).view(1, -1, 1))
        out.relu_()
        ctx.save_for_backward(x, mean, invstd, weight, out)
        ctx.precise = precise  # same cancellation concern in the backward sums
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grad_outputs: Tensor) -> tuple[Tensor | None, ...]:
        (grad_out,) = grad_outputs
        x, mean, invstd, weight, out = ctx.saved_tensors
        n, c, s = x.shape
        count = n * s
        # g: gradient w.r.t. the batch-norm output; only kept (positive) values pass
        g = torch.ops.aten.threshold_backward(grad_out, out, 0)
        sum_g = g.sum(dim=(0, 2))
        centred: Tensor | None = None
        if ctx.precise:
            centred = x - mean.view(1, c, 1)
            sum_g_centred = _channel_dot(g, centred)
        else:
            sum_g_centred = _channel_dot(g, x) - mean * sum_g
        sum_g_xhat = sum_g_centred * invstd
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # dx = a (g - mean(g) - xhat mean(g xhat)),  a = weight / sigma,
            #    = a g - k (x - mean) - a mean(g),        k = a / sigma * mean(g xhat)
            a = invstd if weight is None else invstd * weight
            k = a * invstd * sum_g_xhat / count
            const = -a * sum_g / count
            if centred is None:
                grad_x = g.mul_(a.view(1, c, 1)).addcmul_(x, -k.view(1, c, 1))
                grad_x.add_((const + k * mean).view(1, c, 1))
            else:
                grad_x = centred.mul_(-k.view(1, c, 1)).addcmul_(g, a.view(1, c, 1))
                grad_x.add_(const.view(1, c, 1))
        if weight is not None and ctx.needs_input_grad[1]:
            grad_w = sum_g_xhat
        if ctx.needs_input_grad[2]:
            grad_b = sum_g
        return grad_x, grad_w, grad_b, None


# --------------------------------------------------------------------------- the layer


class SpatialSparsity(nn.Module):
    """Sparling's spatial sparsity layer: per-channel batch norm, then ``relu(z - t)``.

    The threshold ``t`` (one per channel, or one in all with ``per_channel=False``) tracks
    the ``1 - density`` quantile of the normalised training values with momentum ``M``:
    ``t <- (1 - M) t + M q``. The very first update sets ``t = q`` (rather than blending
    from 0) so that a fixed low density is reached in a few batches. Eval mode freezes
    ``t`` and uses the batch norm's running statistics.

    Args:
        channels: number of channels C of the (N, C, L) or (N, C, H, W) input.
        density: fraction of values kept, in (0, 1]; settable at any time.
        momentum: momentum ``M`` of the threshold update, in [0, 1].
        per_channel: one threshold per channel (MT, the method) or a single one (ST).
        batch_norm: ``"affine"`` (learned scale and shift), ``"plain"`` (non-affine) or None.
        accumulate_motifs: None, or n > 0: pool batches until ``pooled_count * density >= n``
            (about n expected survivors per channel), then update from the pooled quantile.
            The pool keeps only each batch's top ``ceil(n + count * density) + 2`` values
            per channel, which is enough for the exact pooled quantile when batches have
            equal size (and a close approximation when they do not). Changing the density
            empties the pool.
        bn_momentum: momentum of the batch norm's running statistics.
        eps: batch-norm epsilon.

    >>> layer = SpatialSparsity(channels=3, density=0.1)
    >>> out = layer(torch.randn(4, 3, 20, 20))
    >>> out.shape, round(layer.last_density, 1)
    (torch.Size([4, 3, 20, 20]), 0.1)
    """

    thresholds: Tensor
    num_threshold_updates: Tensor
    # declared here so that type checkers know them before __init__ is analysed
    momentum: float
    per_channel: bool
    batch_norm: BatchNormMode
    accumulate_motifs: float | None
    _density: float
    _pooled_count: int

    def __init__(
        self,
        *,
        channels: int,
        density: float,
        momentum: float = 0.1,
        per_channel: bool = True,
        batch_norm: BatchNormMode = "affine",
        accumulate_motifs: float | None = None,
        bn_momentum: float = 0.1,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.channels = _positive_int(channels, "channels")
        if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
            raise TypeError(f"momentum must be a number in [0, 1], got {momentum!r}")
        if not (0.0 <= momentum <= 1.0):
            raise ValueError(f"momentum must be in [0, 1], got {momentum!r}")
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel must be True or False, got {per_channel!r}")
        if batch_norm not in _BATCH_NORM_MODES:
            raise ValueError(
                f"batch_norm must be one of 'affine', 'plain' or None, got {batch_norm!r}"
            )
        if accumulate_motifs is not None:
            if isinstance(accumulate_motifs, bool) or not isinstance(
                accumulate_motifs, numbers.Real
            ):
                raise TypeError(
                    f"accumulate_motifs must be None or a positive number, got {accumulate_motifs!r}"
                )
            if not (accumulate_motifs > 0 and math.isfinite(accumulate_motifs)):
                raise ValueError(
                    f"accumulate_motifs must be None or a positive finite number, "
                    f"got {accumulate_motifs!r}"
                )
        self.momentum = float(momentum)
        self.per_channel = per_channel
        self.batch_norm = batch_norm
        self.accumulate_motifs = None if accumulate_motifs is None else float(accumulate_motifs)
        self.bn: ChannelBatchNorm | None = (
            None
            if batch_norm is None
            else ChannelBatchNorm(
                channels, affine=batch_norm == "affine", eps=eps, momentum=bn_momentum
            )
        )
        groups = channels if per_channel else 1
        self.register_buffer("thresholds", torch.zeros(groups))
        self.register_buffer("num_threshold_updates", torch.tensor(0, dtype=torch.long))
        self._updated: bool | None = False  # mirror of num_threshold_updates > 0 (no sync)
        self._density = validate_density(density)
        self._pool: Tensor | None = None  # (groups, width): largest values seen since last update
        self._pooled_count = 0  # values per group pooled since the last update
        self._last_out: Tensor | None = None

    # -- density ------------------------------------------------------------------------

    @property
    def density(self) -> float:
        """Fraction of values kept, in (0, 1]."""
        return self._density

    @density.setter
    def density(self, value: float) -> None:
        value = validate_density(value)
        if value != self._density:
            self._clear_pool()  # the pooled tops were sized for the old density
        self._density = value

    @property
    def last_density(self) -> float | None:
        """Fraction of nonzero outputs in the last forward (None before any forward)."""
        if self._last_out is None:
            return None
        # computed on demand: counting costs about as much as a ReLU, so not every batch
        return float(torch.count_nonzero(self._last_out)) / self._last_out.numel()

    @property
    def pooled_count(self) -> int:
        """Values per threshold group pooled since the last threshold update."""
        return self._pooled_count

    def _clear_pool(self) -> None:
        self._pool = None
        self._pooled_count = 0

    # -- state ----------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        # plain tensors / floats / ints only, so torch.load(weights_only=True) accepts it
        pool = self._pool if self._pool is not None else self.thresholds.new_zeros(0)
        return {
            "density": self._density,
            "pool": pool.detach().clone(),
            "pooled_count": int(self._pooled_count),
        }

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or not {"density", "pool", "pooled_count"} <= set(state):
            raise ValueError(
                "SpatialSparsity extra state must be a dict with keys "
                f"'density', 'pool', 'pooled_count', got {state!r}"
            )
        self._density = validate_density(state["density"])
        pool = state["pool"]
        if not isinstance(pool, Tensor):
            raise ValueError(f"extra state 'pool' must be a tensor, got {type(pool).__name__}")
        if pool.numel() == 0:
            self._pool = None
        elif pool.dim() != 2 or pool.shape[0] != self.thresholds.shape[0]:
            raise ValueError(
                f"extra state 'pool' must have shape ({self.thresholds.shape[0]}, width), "
                f"got {tuple(pool.shape)}"
            )
        else:
            self._pool = pool.to(self.thresholds.device)
        pooled = state["pooled_count"]
        if isinstance(pooled, bool) or not isinstance(pooled, int) or pooled < 0:
            raise ValueError(f"extra state 'pooled_count' must be an int >= 0, got {pooled!r}")
        self._pooled_count = pooled

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._updated = None

    # -- threshold update -----------------------------------------------------------------

    @torch.no_grad()
    def _update_threshold(
        self, values: Tensor, scale: Tensor | None = None, shift: Tensor | None = None
    ) -> Tensor:
        """Update the thresholds from training values (N, C, S); return the thresholds.

        With ``scale``/``shift`` (per channel, scale > 0) the thresholds live in the space of
        ``scale * values + shift``: selection runs on ``values`` and its results are mapped.
        """
        groups = values if self.per_channel else values.reshape(1, 1, -1)
        n, _, s = groups.shape
        count = n * s
        d = self._density

        def to_space(v: Tensor) -> Tensor:
            v = v.to(self.thresholds.dtype)
            if scale is None or shift is None:
                return v
            return v * scale.view(-1, *([1] * (v.dim() - 1))) + shift.view(
                -1, *([1] * (v.dim() - 1))
            )

        if self.accumulate_motifs is None:
            quantile: Tensor | None = to_space(kth_largest(groups, _quantile_rank(count, d)))
        else:
            quantile = self._accumulate(groups, count, d, self.accumulate_motifs, to_space)
        if quantile is not None:
            if self._updated is None:
                self._updated = bool(self.num_threshold_updates.item() > 0)
            if self._updated:
                self.thresholds.lerp_(quantile, self.momentum)
            else:
                self.thresholds.copy_(quantile)
            self.num_threshold_updates.add_(1)
            self._updated = True
        return self.thresholds

    def _accumulate(
        self,
        groups: Tensor,
        count: int,
        d: float,
        motifs: float,
        to_space: Callable[[Tensor], Tensor],
    ) -> Tensor | None:
        # The pool closes at the first batch where pooled * d >= motifs, so when it closes
        # pooled * d < motifs + count * d and the quantile is among the top
        # pooled * d + 2 <= ceil(motifs + count * d) + 2 pooled values.
        if self._pool is None and count * d >= motifs:
            # The pool would close at this batch with this batch alone in it: its quantile
            # is this batch's, which kth_largest selects without collecting the top values
            # (the same value; much cheaper at high density).
            self._clear_pool()
            return to_space(kth_largest(groups, _quantile_rank(count, d)))
        r = min(count, math.ceil(motifs + count * d) + 2)
        top = to_space(top_values(groups, r))
        if self._pool is not None:
            pool = torch.cat([self._pool.to(top), top], dim=1)
            if pool.shape[1] > r:
                pool = pool.topk(r, dim=1, sorted=False).values
        else:
            pool = top
        self._pool = pool
        self._pooled_count += count
        if self._pooled_count * d < motifs:
            return None
        m = min(_quantile_rank(self._pooled_count, d), pool.shape[1])
        quantile = pool.topk(m, dim=1, sorted=False).values.amin(dim=1)
        self._clear_pool()
        return quantile

    # -- forward ----------------------------------------------------------------------------

    def forward(self, z: Tensor) -> Tensor:
        """Sparsify ``z`` of shape (N, C, L) or (N, C, H, W); same shape out."""
        check_channels_input(z, self.channels)
        x = z.reshape(z.shape[0], self.channels, -1)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics and quantiles in float32, as batch norm does under autocast
        bn = self.bn
        if self.training:
            if bn is not None:
                if x.shape[0] * x.shape[2] < 2:
                    raise ValueError(
                        "training-mode batch norm needs more than one value per channel, "
                        f"got input of shape {tuple(z.shape)}"
                    )
                out = _NormSparsify.apply(x, bn.weight, bn.bias, self)
            else:
                _check_finite(x.detach().sum())
                threshold = self._update_threshold(x.detach())
                # relu_ in place is safe: the subtraction does not save its output
                out = (x - threshold.view(1, -1, 1)).relu_()
        else:
            if bn is not None:
                # one fused pass: inference-form batch norm with the threshold folded into
                # the bias (relu_ in place is safe: batch norm does not save its output)
                bias = -self.thresholds if bn.bias is None else bn.bias - self.thresholds
                bias = bias.expand(self.channels)
                out = F.batch_norm(
                    x, bn.running_mean, bn.running_var, bn.weight, bias, False, 0.0, bn.eps
                ).relu_()
            else:
                out = (x - self.thresholds.view(-1, 1)).relu_()
            _check_finite(x.detach().sum())
        self._last_out = out.detach()
        return out.view(z.shape)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, density={self._density:g}, momentum={self.momentum}, "
            f"per_channel={self.per_channel}, batch_norm={self.batch_norm!r}, "
            f"accumulate_motifs={self.accumulate_motifs}"
        )
