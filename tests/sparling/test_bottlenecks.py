"""Tests of the bottleneck registry (sparling.bottlenecks)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sparling.bottlenecks import (
    BOTTLENECKS,
    Bottleneck,
    KLBottleneck,
    NoiseBottleneck,
    bottleneck_names,
    bottleneck_params,
    make_bottleneck,
    noise_sigma,
    register_bottleneck,
)
from sparling.schedule import AdaptiveSparsitySchedule
from sparling.sparsity import SpatialSparsity

EXPECTED = {
    "sparling",
    "sparling-st",
    "sparling-no-bn",
    "non-sparse",
    "l1",
    "l1-annealed",
    "kl",
    "noise",
    "topk",
}
ADAPTIVE = {"sparling", "sparling-st", "sparling-no-bn", "l1-annealed", "noise", "topk"}
SHAPES = [(4, 3, 50), (4, 3, 9, 11)]


def test_registry_lists_every_bottleneck() -> None:
    assert set(bottleneck_names()) == EXPECTED
    assert bottleneck_names() == sorted(EXPECTED)
    for name in EXPECTED:
        assert BOTTLENECKS[name].name == name
        assert BOTTLENECKS[name].adaptive == (name in ADAPTIVE)
        params = bottleneck_params(name)
        assert params.model_config.get("extra") == "forbid"
        for field, info in params.model_fields.items():  # every field is documented
            assert info.description, (name, field)


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_penalty_density(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    b = make_bottleneck(name, channels=3)
    assert isinstance(b, Bottleneck)
    assert b.measured_density is None
    z = torch.randn(shape, requires_grad=True)
    out = b(z)
    assert out.shape == z.shape
    penalty = b.penalty()
    assert isinstance(penalty, torch.Tensor) and penalty.dim() == 0
    if name in ("l1", "l1-annealed", "kl"):
        assert float(penalty.detach()) > 0 and penalty.requires_grad
    else:
        assert float(penalty) == 0.0
    (out.square().sum() + penalty).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    density = b.measured_density
    assert density is not None and 0.0 <= density <= 1.0
    if name in ("non-sparse", "noise"):
        assert density == 1.0
    elif name == "kl":
        assert density == pytest.approx(float((out > 0.5).float().mean()))
    else:
        assert density == pytest.approx(float((out != 0).float().mean()))
        assert 0.3 < density < 0.7  # ReLU or density 0.5 on centred data


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_tiny_optimisation_lowers_the_loss(name: str) -> None:
    """conv -> bottleneck -> conv learns to reproduce a target from a fixed input."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 12, 12)
    target = torch.relu(x[:, :1] * 2.0 + x[:, 1:2])
    b = make_bottleneck(name, channels=4)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), b, nn.Conv2d(4, 1, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - target).square().mean() + b.penalty()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("density", [0.01, 0.1, 0.37, 0.9, 1.0])
@pytest.mark.parametrize("batch_norm", ["affine", None])
def test_topk_keeps_exactly_the_right_count(
    shape: tuple[int, ...], density: float, batch_norm: str | None
) -> None:
    torch.manual_seed(2)
    b = make_bottleneck("topk", channels=3, density=density, batch_norm=batch_norm)
    count = shape[0] * math.prod(shape[2:])
    keep = min(max(1, round(density * count)), count - 1)
    for training in (True, False):
        b.train(training)
        z = torch.randn(shape) * torch.tensor([1.0, 100.0, 0.01]).view(
            1, 3, *[1] * (len(shape) - 2)
        )
        out = b(z)
        kept = (out > 0).transpose(0, 1).reshape(3, -1).sum(dim=1)
        assert kept.tolist() == [keep] * 3
        # the kept ones are the largest of each channel
        flat_z = z.transpose(0, 1).reshape(3, -1)
        flat_o = out.transpose(0, 1).reshape(3, -1)
        top = flat_z.topk(keep, dim=1).indices
        assert torch.all(flat_o.gather(1, top) > 0)


def test_set_density_drives_each_method() -> None:
    schedule = AdaptiveSparsitySchedule(target_density=1e-3, initial_threshold=0.0)
    built = {name: make_bottleneck(name, channels=3) for name in EXPECTED}
    for samples in (1, 2, 3):
        density = schedule.observe(samples, 0.5)
        for b in built.values():
            b.set_density(density)
    assert density == 0.5 * 0.75**3
    for name in ("sparling", "sparling-st", "sparling-no-bn"):
        layer = built[name].layer  # type: ignore[attr-defined]
        assert isinstance(layer, SpatialSparsity) and layer.density == density
        assert built[name].density == density
    assert built["topk"].density == density
    annealed = built["l1-annealed"]
    assert annealed.coefficient == pytest.approx(schedule.l1_coefficient(1.0))  # type: ignore[attr-defined]
    assert annealed.coefficient == pytest.approx(1.0 / 0.75**3)  # type: ignore[attr-defined]
    noise = built["noise"]
    assert isinstance(noise, NoiseBottleneck)
    assert noise.sigma == pytest.approx(noise_sigma(density)) and noise.sigma > noise_sigma(0.5)
    # non-adaptive ones ignore it
    assert built["l1"].coefficient == 1.0  # type: ignore[attr-defined]
    assert built["kl"].density is None and built["non-sparse"].density is None
    for b in built.values():
        with pytest.raises(ValueError, match="density must be in"):
            b.set_density(0.0)


def test_l1_annealed_penalty_scales_with_coefficient() -> None:
    b = make_bottleneck("l1-annealed", channels=2, coefficient=0.5, initial_density=0.5)
    z = torch.randn(3, 2, 20)
    b(z)
    p0 = float(b.penalty())
    assert p0 == pytest.approx(0.5 * float(torch.relu(z).mean()), rel=1e-6)
    b.set_density(0.125)
    b(z)
    assert float(b.penalty()) == pytest.approx(4 * p0, rel=1e-6)


def test_kl_penalty_formula() -> None:
    b = make_bottleneck("kl", channels=2, coefficient=3.0, target_density=0.2)
    assert isinstance(b, KLBottleneck)
    z = torch.randn(4, 2, 5, 5)
    out = b(z)
    assert torch.allclose(out, torch.sigmoid(z))
    p_hat = out.mean(dim=(0, 2, 3))
    kl = 0.2 * torch.log(0.2 / p_hat) + 0.8 * torch.log(0.8 / (1 - p_hat))
    assert float(b.penalty()) == pytest.approx(3.0 * float(kl.mean()), rel=1e-5)
    # zero when every channel sits at the target
    b(torch.full((2, 2, 4), math.log(0.2 / 0.8)))
    assert float(b.penalty()) == pytest.approx(0.0, abs=1e-6)


def test_noise_sigma_matches_information() -> None:
    for d in (0.5, 0.1, 1e-3, 5e-5):
        entropy = -(d * math.log(d) + (1 - d) * math.log(1 - d))
        sigma = noise_sigma(d)
        assert 0.5 * math.log(1 + 1 / sigma**2) == pytest.approx(entropy, rel=1e-9)
    assert noise_sigma(0.9) == noise_sigma(0.5)  # information capped at density 0.5
    b = make_bottleneck("noise", channels=2, density=0.5, noise_in_eval=False)
    b.eval()
    z = torch.randn(4, 2, 30)
    assert torch.equal(b(z), b(z))  # no noise in eval when asked
    b.train()
    assert not torch.equal(b(z), b(z))


def test_state_dict_round_trip_with_weights_only_load() -> None:
    for name in sorted(EXPECTED):
        b = make_bottleneck(name, channels=3)
        b(torch.randn(4, 3, 20))
        b.set_density(0.01)
        buffer = io.BytesIO()
        torch.save(b.state_dict(), buffer)
        buffer.seek(0)
        clone = make_bottleneck(name, channels=3)
        clone.load_state_dict(torch.load(buffer, weights_only=True))
        assert clone.density == b.density, name
        for key, value in b.state_dict().items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(clone.state_dict()[key], value), (name, key)
    annealed = make_bottleneck("l1-annealed", channels=3)
    annealed.set_density(0.05)
    clone = make_bottleneck("l1-annealed", channels=3)
    clone.load_state_dict(annealed.state_dict())
    assert clone.coefficient == pytest.approx(10.0)  # type: ignore[attr-defined]


def test_unknown_name_lists_accepted_names() -> None:
    with pytest.raises(ValueError, match="unknown bottleneck 'sparse'.*kl, l1, l1-annealed"):
        make_bottleneck("sparse", channels=3)


def test_invalid_params_are_reported_with_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"densty.*Accepted parameters: density \(default 0.5\)"):
        make_bottleneck("sparling", channels=3, densty=0.1)
    with pytest.raises(ValueError, match="density: Input should be less than or equal to 1"):
        make_bottleneck("topk", channels=3, density=1.5)
    with pytest.raises(ValueError, match="batch_norm"):
        make_bottleneck("sparling", channels=3, batch_norm="yes")
    with pytest.raises(ValueError, match="batch_norm: unknown key; accepted here"):
        make_bottleneck("sparling-no-bn", channels=3, batch_norm="affine")
    with pytest.raises(ValueError, match="coefficient"):
        make_bottleneck("l1", channels=3, coefficient=-1)
    with pytest.raises(ValueError, match="Accepted parameters: none"):
        make_bottleneck("non-sparse", channels=3, density=0.5)
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        make_bottleneck("l1", channels=0)


def test_register_refuses_duplicates_and_registers_new_names() -> None:
    class EmptyParams(BaseModel):
        model_config = ConfigDict(extra="forbid")

    with pytest.raises(ValueError, match="'sparling' is already registered"):

        @register_bottleneck("sparling", EmptyParams)
        class Again(Bottleneck):
            pass

    assert BOTTLENECKS["sparling"].__name__ == "SparlingBottleneck"
    try:

        @register_bottleneck("test-double", EmptyParams)
        class Double(Bottleneck):
            def _forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
                return 2 * z, None

        assert "test-double" in bottleneck_names()
        assert torch.equal(
            make_bottleneck("test-double", channels=1)(torch.ones(1, 1, 2)), 2 * torch.ones(1, 1, 2)
        )
        with pytest.raises(ValueError, match="already registered"):
            register_bottleneck("test-double", EmptyParams)(Double)
    finally:
        BOTTLENECKS.pop("test-double", None)
    with pytest.raises(TypeError, match="subclass of Bottleneck"):
        register_bottleneck("not-a-module", EmptyParams)(int)  # type: ignore[type-var]
    assert "not-a-module" not in BOTTLENECKS


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_input_errors(name: str) -> None:
    b = make_bottleneck(name, channels=3)
    with pytest.raises(ValueError, match="rank 3 or 4"):
        b(torch.randn(3, 5))
    with pytest.raises(ValueError, match="channels"):
        b(torch.randn(2, 4, 5))
