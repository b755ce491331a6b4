"""Tests of the spatial sparsity layer (sparling.sparsity)."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sparling.sparsity import ChannelBatchNorm, SpatialSparsity, kth_largest, top_values

# Channels with very different means and scales (the layer must not care).
MEANS = torch.tensor([0.0, 1000.0, -3.0, 7.0])
SCALES = torch.tensor([1.0, 50.0, 0.01, 3.0])


def _data(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype = torch.float32):
    view = (1, 4) + (1,) * (len(shape) - 2)
    z = torch.randn(shape, generator=gen, dtype=torch.float64)
    return (z * SCALES.double().view(view) + MEANS.double().view(view)).to(dtype)


def _per_group(y: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """(N, C, ...) -> (groups, values)."""
    y = y.reshape(y.shape[0], y.shape[1], -1).transpose(0, 1).reshape(y.shape[1], -1)
    return y if per_channel else y.reshape(1, -1)


def _quantile(y: torch.Tensor, density: float, per_channel: bool = True) -> torch.Tensor:
    """docs/method.md section 2: k-th smallest, k = max(1, floor(count * (1 - density)))."""
    g = _per_group(y, per_channel)
    k = max(1, math.floor(g.shape[1] * (1 - density)))
    return g.kthvalue(k, dim=1).values


def _fraction_kept(out: torch.Tensor) -> torch.Tensor:
    return (_per_group(out) > 0).double().mean(dim=1)


# --------------------------------------------------------------------------- selection helpers


@pytest.mark.parametrize("shape", [(10, 3, 1000), (3, 2, 64), (2, 2, 997), (1, 1, 50000)])
@pytest.mark.parametrize("r", [1, 2, 7, 40, 300])
def test_top_values_and_kth_largest_are_exact(shape: tuple[int, int, int], r: int) -> None:
    gen = torch.Generator().manual_seed(sum(shape) + r)
    # integer-valued data: many ties, which the block shortcut must still get right
    y = torch.randint(-50, 50, shape, generator=gen).float()
    flat = y.transpose(0, 1).reshape(shape[1], -1)
    r = min(r, flat.shape[1])
    expected = flat.topk(r, dim=1).values
    assert torch.equal(top_values(y, r).sort(dim=1, descending=True).values, expected)
    assert torch.equal(kth_largest(y, r), expected[:, -1])


def test_kth_largest_high_rank_uses_exact_selection() -> None:
    y = torch.randn(4, 3, 500, generator=torch.Generator().manual_seed(0))
    flat = y.transpose(0, 1).reshape(3, -1)
    for m in (1000, 1999, 2000):
        assert torch.equal(kth_largest(y, m), flat.topk(m, dim=1).values[:, -1])
    with pytest.raises(ValueError, match="m must be in"):
        kth_largest(y, 2001)


@pytest.mark.parametrize("data", ["normal", "ties", "sample-misleading"])
def test_bracketed_selection_is_exact(data: str) -> None:
    # 20,000 values per group: kth_largest brackets the answer with a fixed sample
    from sparling.sparsity import _BRACKET_MIN_COUNT, _fixed_sample, _kth_largest_bracketed

    n, g, s = 4, 3, 5000
    assert n * s >= _BRACKET_MIN_COUNT
    gen = torch.Generator().manual_seed(1)
    if data == "ties":
        y = torch.randint(-3, 3, (n, g, s), generator=gen).float()
    else:
        y = torch.randn(n, g, s, generator=gen)
    if data == "sample-misleading":
        # the sampled columns hold the largest values: every bracket misses, and the
        # fallback must still give the exact answer
        cols = _fixed_sample(s, 2048 // n, y.device)
        y[:, :, cols] += 100.0
    flat = y.transpose(0, 1).reshape(g, -1)
    for m in (1, 700, 2500, 10000, 19999, 20000):
        expected = flat.topk(m, dim=1).values[:, -1]
        assert torch.equal(_kth_largest_bracketed(y, m), expected), m
        assert torch.equal(kth_largest(y, m), expected), m


# --------------------------------------------------------------------------- exact behaviour


@pytest.mark.parametrize("shape", [(4, 4, 60), (3, 4, 9, 11)])
@pytest.mark.parametrize(
    ("batch_norm", "per_channel", "weight"),
    [
        ("affine", True, [1.5, 0.7, 0.3, 2.0]),
        ("affine", True, [1.5, -0.7, 0.3, 2.0]),  # negative scale: the slower path
        ("plain", True, None),
        ("affine", False, [1.5, -0.7, 0.3, 2.0]),
        ("plain", False, None),
        (None, True, None),
        (None, False, None),
    ],
)
def test_training_matches_reference(
    shape: tuple[int, ...], batch_norm: str | None, per_channel: bool, weight: list[float] | None
) -> None:
    """Forward, thresholds, gradients and running stats equal F.batch_norm + kthvalue."""
    gen = torch.Generator().manual_seed(1)
    density, momentum = 0.2, 0.1
    layer = SpatialSparsity(
        channels=4,
        density=density,
        momentum=momentum,
        per_channel=per_channel,
        batch_norm=batch_norm,  # type: ignore[arg-type]
    ).double()
    w = b = None
    if weight is not None:
        assert layer.bn is not None and layer.bn.weight is not None and layer.bn.bias is not None
        with torch.no_grad():
            layer.bn.weight.copy_(torch.tensor(weight))
            layer.bn.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.0]))
        w = layer.bn.weight.detach().clone().requires_grad_()
        b = layer.bn.bias.detach().clone().requires_grad_()
    view = (1, -1) + (1,) * (len(shape) - 2)

    def normalise(z: torch.Tensor) -> torch.Tensor:
        return z if batch_norm is None else F.batch_norm(z, None, None, w, b, True, 0.0, 1e-5)

    # batch 1 sets the thresholds to its quantile (first update, no blending)
    z1 = _data(shape, gen, torch.float64)
    layer(z1)
    t1 = _quantile(normalise(z1).detach(), density, per_channel)
    assert torch.allclose(layer.thresholds, t1, rtol=1e-10, atol=1e-10)

    # batch 2 blends; compare output and gradients (thresholds are not sample values now)
    z2 = _data(shape, gen, torch.float64).requires_grad_()
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    out = layer(z2)
    (out * grad).sum().backward()
    t2 = (1 - momentum) * t1 + momentum * _quantile(normalise(z2).detach(), density, per_channel)
    assert torch.allclose(layer.thresholds, t2, rtol=1e-10, atol=1e-10)

    z_ref = z2.detach().clone().requires_grad_()
    if w is not None:
        w.grad = None
        b.grad = None  # type: ignore[union-attr]
    ref = F.relu(normalise(z_ref) - t2.view(view))
    (ref * grad).sum().backward()
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9)
    assert z2.grad is not None and z_ref.grad is not None
    assert torch.allclose(z2.grad, z_ref.grad, rtol=1e-7, atol=1e-9)
    if w is not None:
        assert layer.bn is not None and layer.bn.weight is not None
        assert torch.allclose(layer.bn.weight.grad, w.grad, rtol=1e-7, atol=1e-9)  # type: ignore[arg-type]
        assert torch.allclose(layer.bn.bias.grad, b.grad, rtol=1e-7, atol=1e-9)  # type: ignore[union-attr, arg-type]
    if batch_norm is not None:
        # running stats: batch 1 replaces the defaults, batch 2 blends with momentum 0.1
        assert layer.bn is not None
        dims = [0, *range(2, len(shape))]
        m1, m2 = z1.mean(dim=dims), z2.detach().mean(dim=dims)
        v1, v2 = z1.var(dim=dims), z2.detach().var(dim=dims)
        assert torch.allclose(layer.bn.running_mean, 0.9 * m1 + 0.1 * m2, rtol=1e-9)
        assert torch.allclose(layer.bn.running_var, 0.9 * v1 + 0.1 * v2, rtol=1e-7)
        assert int(layer.bn.num_batches_tracked) == 2


def test_gradients_flow_through_kept_values_only() -> None:
    gen = torch.Generator().manual_seed(2)
    layer = SpatialSparsity(channels=4, density=0.1, batch_norm=None)
    z = _data((8, 4, 30), gen).requires_grad_()
    out = layer(z)
    out.sum().backward()
    assert z.grad is not None
    kept = out > 0
    assert 0 < int(kept.sum()) < out.numel()
    assert torch.equal(z.grad, kept.float())

    # with batch norm: the gradient reaching the normalised values is masked the same way
    layer = SpatialSparsity(channels=4, density=0.1, batch_norm="plain")
    z = _data((8, 4, 30), gen).requires_grad_()
    out = layer(z)
    w = torch.randn(out.shape, generator=gen)
    # perturbing the upstream gradient only where the output is zero changes nothing
    g1 = torch.autograd.grad((out * w).sum(), z, retain_graph=True)[0]
    w2 = torch.where(out > 0, w, torch.randn(out.shape, generator=gen) * 100)
    g2 = torch.autograd.grad((out * w2).sum(), z)[0]
    assert torch.equal(g1, g2)


def test_eval_freezes_thresholds_and_uses_running_stats() -> None:
    gen = torch.Generator().manual_seed(3)
    layer = SpatialSparsity(channels=4, density=0.3).double()
    for _ in range(5):
        layer(_data((6, 4, 8, 8), gen, torch.float64))
    layer.eval()
    state = {k: v.clone() for k, v in layer.state_dict().items() if isinstance(v, torch.Tensor)}
    z = _data((6, 4, 8, 8), gen, torch.float64)
    out = layer(z)
    for k, v in layer.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, state[k]), k
    bn = layer.bn
    assert bn is not None
    y = F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert torch.allclose(out, F.relu(y - layer.thresholds.view(1, -1, 1, 1)), atol=1e-10)
    assert layer.last_density == pytest.approx(float((out > 0).double().mean()))


def test_momentum_zero_keeps_first_batch_thresholds() -> None:
    gen = torch.Generator().manual_seed(4)
    layer = SpatialSparsity(channels=4, density=0.5, momentum=0.0, batch_norm=None)
    layer(_data((4, 4, 50), gen))
    first = layer.thresholds.clone()
    layer(_data((4, 4, 50), gen))
    assert torch.equal(layer.thresholds, first)
    assert int(layer.num_threshold_updates) == 2


def test_last_density_and_density_property() -> None:
    layer = SpatialSparsity(channels=4, density=0.25)
    assert layer.last_density is None
    out = layer(_data((5, 4, 40), torch.Generator().manual_seed(5)))
    assert layer.last_density == pytest.approx(float((out > 0).float().mean()))
    assert layer.last_density == pytest.approx(0.25, abs=0.01)  # first batch: exact quantile
    layer.density = 0.01
    assert layer.density == 0.01
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="density must be in"):
            layer.density = bad
    with pytest.raises(TypeError, match="density must be a real number"):
        layer.density = "0.1"  # type: ignore[assignment]
    assert layer.density == 0.01


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("batch_norm", ["affine", None])
@pytest.mark.parametrize("density", [0.05, 0.2, 0.5, 0.7])
@pytest.mark.parametrize("rank", [3, 4])
def test_keeps_the_set_density_per_channel(
    batch_norm: str | None, density: float, rank: int
) -> None:
    gen = torch.Generator().manual_seed(int(density * 100) + rank)
    shape = (8, 4, 1000) if rank == 3 else (8, 4, 25, 40)
    layer = SpatialSparsity(channels=4, density=density, batch_norm=batch_norm)  # type: ignore[arg-type]
    for _ in range(20):
        layer(_data(shape, gen))
    layer.eval()
    kept = _fraction_kept(layer(_data((32,) + shape[1:], gen)))
    assert torch.all((kept - density).abs() <= 0.03), kept


def test_single_threshold_keeps_the_density_overall() -> None:
    gen = torch.Generator().manual_seed(6)
    layer = SpatialSparsity(channels=4, density=0.1, per_channel=False)
    assert layer.thresholds.shape == (1,)
    for _ in range(20):
        layer(_data((8, 4, 500), gen))
    layer.eval()
    out = layer(_data((32, 4, 500), gen))
    assert float((out > 0).float().mean()) == pytest.approx(0.1, abs=0.03)


def test_single_threshold_without_batch_norm_ignores_channels() -> None:
    """ST without BN: one threshold, so the channel with the largest values keeps most."""
    gen = torch.Generator().manual_seed(7)
    layer = SpatialSparsity(channels=4, density=0.25, per_channel=False, batch_norm=None)
    out = layer(_data((8, 4, 500), gen))
    kept = _fraction_kept(out)
    assert float(kept[1]) == pytest.approx(1.0)  # mean 1000: all of it survives
    assert float(kept.mean()) == pytest.approx(0.25, abs=1e-3)


@pytest.mark.parametrize("batch_norm", ["affine", None])
@pytest.mark.parametrize("density", [1e-3, 1e-4])
def test_low_density_with_accumulation(batch_norm: str | None, density: float) -> None:
    gen = torch.Generator().manual_seed(8)
    layer = SpatialSparsity(
        channels=4,
        density=density,
        batch_norm=batch_norm,  # type: ignore[arg-type]
        accumulate_motifs=10,
    )
    count = 8 * 2500
    r = math.ceil(10 + count * density) + 2
    per_update = max(1, math.ceil(10 / (count * density)))  # batches pooled per update
    for _ in range(40 * per_update):
        layer(_data((8, 4, 2500), gen))
        assert layer._pool is None or layer._pool.shape[1] <= r  # the pool stays tiny
    assert int(layer.num_threshold_updates) == 40
    layer.eval()
    z = _data((400, 4, 2500), gen)  # 1e6 values per channel: 100 expected at 1e-4
    kept = _fraction_kept(layer(z))
    assert torch.all(kept >= density / 2) and torch.all(kept <= density * 2), kept


def test_accumulated_quantile_is_exact_over_the_pool() -> None:
    gen = torch.Generator().manual_seed(9)
    density = 1e-3
    layer = SpatialSparsity(
        channels=2, density=density, momentum=1.0, batch_norm=None, accumulate_motifs=10
    )
    batches = [torch.randn(2, 2, 1000, generator=gen) for _ in range(5)]  # 2 expected each
    for i, batch in enumerate(batches):
        layer(batch)
        assert int(layer.num_threshold_updates) == (1 if i == 4 else 0)
        assert layer.pooled_count == (0 if i == 4 else 2000 * (i + 1))
    assert torch.equal(layer.thresholds, _quantile(torch.cat(batches), density))


@pytest.mark.parametrize("density", [0.5, 0.05, 5e-3])
def test_accumulation_at_high_density_updates_from_each_batch(density: float) -> None:
    # 20,000 values per channel: at these densities one batch holds >= 10 expected
    # survivors, so every batch closes the pool: the quantile is that batch's own.
    gen = torch.Generator().manual_seed(11)
    layer = SpatialSparsity(
        channels=4, density=density, momentum=1.0, batch_norm=None, accumulate_motifs=10
    )
    for i in range(3):
        batch = _data((4, 4, 5000), gen)
        layer(batch)
        assert int(layer.num_threshold_updates) == i + 1 and layer.pooled_count == 0
        assert torch.equal(layer.thresholds, _quantile(batch, density))


# --------------------------------------------------------------------------- state


def test_state_dict_round_trip_with_weights_only_load() -> None:
    gen = torch.Generator().manual_seed(10)
    kwargs = dict(channels=4, density=1e-3, accumulate_motifs=10.0)
    layer = SpatialSparsity(**kwargs)  # type: ignore[arg-type]
    for _ in range(3):  # 60 expected survivors needed per close: the pool is mid-way
        layer(_data((4, 4, 1000), gen))
    layer.density = 2e-3  # empties the pool
    assert layer.pooled_count == 0
    layer(_data((4, 4, 1000), gen))
    assert layer.pooled_count == 4000 and layer._pool is not None

    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    clone = SpatialSparsity(**kwargs)  # type: ignore[arg-type]
    clone.load_state_dict(state)
    assert clone.density == 2e-3
    assert clone.pooled_count == 4000
    assert torch.equal(clone.thresholds, layer.thresholds)

    # both continue identically, through a pool closure
    for _ in range(3):
        z = _data((4, 4, 1000), gen)
        assert torch.equal(clone(z), layer(z))
    assert int(clone.num_threshold_updates) == int(layer.num_threshold_updates) >= 1
    assert torch.equal(clone.thresholds, layer.thresholds)
    assert clone.bn is not None and layer.bn is not None
    assert torch.equal(clone.bn.running_var, layer.bn.running_var)


def test_loading_restores_first_batch_state() -> None:
    """A fresh layer loading a trained state blends (not replaces) on its next batch."""
    gen = torch.Generator().manual_seed(11)
    layer = SpatialSparsity(channels=4, density=0.3, batch_norm=None)
    layer(_data((4, 4, 100), gen))
    clone = SpatialSparsity(channels=4, density=0.3, batch_norm=None)
    clone.load_state_dict(layer.state_dict())
    z = _data((4, 4, 100), gen)
    layer(z)
    clone(z)
    assert torch.equal(clone.thresholds, layer.thresholds)


def test_bad_extra_state_is_rejected() -> None:
    layer = SpatialSparsity(channels=4, density=0.3)
    with pytest.raises(ValueError, match="extra state"):
        layer.set_extra_state({"density": 0.3})
    with pytest.raises(ValueError, match="density must be in"):
        layer.set_extra_state({"density": 2.0, "pool": torch.zeros(0), "pooled_count": 0})
    with pytest.raises(ValueError, match="pool"):
        layer.set_extra_state({"density": 0.3, "pool": torch.zeros(3, 5), "pooled_count": 0})


# --------------------------------------------------------------------------- errors


def test_constructor_errors() -> None:
    ok: dict[str, Any] = dict(channels=4, density=0.5)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        (dict(channels=0), ValueError, "channels"),
        (dict(channels=2.5), ValueError, "channels"),
        (dict(density=0.0), ValueError, "density must be in"),
        (dict(density=1.01), ValueError, "density must be in"),
        (dict(density=None), TypeError, "density"),
        (dict(momentum=-0.1), ValueError, "momentum must be in"),
        (dict(momentum=1.5), ValueError, "momentum must be in"),
        (dict(momentum="0.1"), TypeError, "momentum"),
        (dict(batch_norm="yes"), ValueError, "batch_norm must be one of"),
        (dict(batch_norm=True), ValueError, "batch_norm must be one of"),
        (dict(per_channel=1), TypeError, "per_channel"),
        (dict(accumulate_motifs=0), ValueError, "accumulate_motifs"),
        (dict(accumulate_motifs=-5), ValueError, "accumulate_motifs"),
        (dict(accumulate_motifs=float("inf")), ValueError, "accumulate_motifs"),
        (dict(accumulate_motifs="10"), TypeError, "accumulate_motifs"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            SpatialSparsity(**{**ok, **change})


@pytest.mark.parametrize("batch_norm", ["affine", None])
@pytest.mark.parametrize("training", [True, False])
def test_input_errors(batch_norm: str | None, training: bool) -> None:
    layer = SpatialSparsity(channels=4, density=0.5, batch_norm=batch_norm)  # type: ignore[arg-type]
    layer.train(training)
    with pytest.raises(ValueError, match=r"rank 3 or 4"):
        layer(torch.randn(4, 10))
    with pytest.raises(ValueError, match=r"rank 3 or 4"):
        layer(torch.randn(2, 4, 3, 3, 3))
    with pytest.raises(ValueError, match="has 3 channels.*channels=4"):
        layer(torch.randn(2, 3, 10))
    with pytest.raises(TypeError, match="floating-point"):
        layer(torch.ones(2, 4, 10, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[1.0]])  # type: ignore[arg-type]
    for bad in (float("nan"), float("inf"), -float("inf")):
        z = torch.randn(2, 4, 10)
        z[1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            layer(z)
    if training and batch_norm is not None:
        with pytest.raises(ValueError, match="more than one value per channel"):
            layer(torch.randn(1, 4, 1))


def test_failed_forward_leaves_state_untouched() -> None:
    layer = SpatialSparsity(channels=4, density=0.5)
    z = torch.randn(2, 4, 10)
    z[0, 0, 0] = float("nan")
    with pytest.raises(ValueError):
        layer(z)
    assert int(layer.num_threshold_updates) == 0
    assert layer.bn is not None and int(layer.bn.num_batches_tracked) == 0


def test_channel_batch_norm_matches_torch_after_first_batch() -> None:
    gen = torch.Generator().manual_seed(12)
    ours, theirs = ChannelBatchNorm(4), torch.nn.BatchNorm2d(4)
    first = _data((4, 4, 5, 5), gen)
    ours(first)
    theirs(first)
    # ours replaced the (0, 1) defaults with the batch's statistics
    assert torch.allclose(ours.running_mean, first.mean(dim=(0, 2, 3)), rtol=1e-5)
    assert theirs.running_mean is not None and theirs.running_var is not None
    theirs.running_mean.copy_(ours.running_mean)
    theirs.running_var.copy_(ours.running_var)
    for _ in range(2):
        z = _data((4, 4, 5, 5), gen)
        assert torch.allclose(ours(z), theirs(z), atol=1e-5)
    ours.eval()
    theirs.eval()
    z = _data((4, 4, 5, 5), gen)
    assert torch.allclose(ours(z), theirs(z), atol=1e-4)
    assert torch.allclose(ours.running_var, theirs.running_var, rtol=1e-5)
    with pytest.raises(ValueError, match="momentum"):
        ChannelBatchNorm(4, momentum=2.0)
