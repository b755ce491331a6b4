"""The domain registry: a domain registered anywhere is accepted by run-config validation,
the model presets, motif scoring and the command line's help, with no other edit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest import TINY_MODEL, tiny_config

from pipelines import cli
from sparling import domains
from sparling.config import load_config
from sparling.domains import Domain, DomainError, DomainParams, Motif, Sample
from sparling.errors import SparlingError
from sparling.models import build_model, preset_config
from sparling.scoring import assignment_for, batch_motif_errors

TOY = "test-registry-dots"
BUILTIN = ("audio-digits", "digit-circle", "latex-ocr")


@pytest.fixture
def toy() -> Iterator[type[Domain]]:
    """A domain defined and registered here, and removed from the registry afterwards."""
    domains.names()  # the built-in domains register first

    class _Params(DomainParams):
        size: int = 12

    @domains.register
    class Dots(Domain):
        """One 2x2 dot per image, at a random place; the output is its letter."""

        name = TOY
        kind = "image"
        storage = "bits"
        context_radius = 4
        assignment = "hungarian"
        Params = _Params

        vocabulary = property(lambda self: ["a", "b"])
        motif_symbols = property(lambda self: ["a", "b"])
        paper_channels = property(lambda self: 2)
        expected_motifs = property(lambda self: 1.0)

        @property
        def input_shape(self) -> tuple[int, ...]:
            p: Any = self.params
            return (p.size, p.size)

        def sample(self, seed: int, index: int) -> Sample:
            rng = self.rng(seed, index)
            p: Any = self.params
            r, c = (int(v) for v in rng.integers(0, p.size - 2, size=2))
            x = np.zeros(self.input_shape, dtype=bool)
            x[r : r + 2, c : c + 2] = True
            symbol = str(rng.choice(["a", "b"]))
            return Sample(
                x=x, tokens=[symbol], motifs=[Motif(symbol, (slice(r, r + 2), slice(c, c + 2)))]
            )

    try:
        yield Dots
    finally:
        domains._REGISTRY.pop(TOY, None)


def test_a_registered_domain_is_accepted_everywhere(
    toy: type[Domain], capsys: pytest.CaptureFixture[str]
) -> None:
    assert TOY in domains.names() and domains.get(TOY) is toy

    # run-config validation and the architecture the presets give it (its context radius)
    config = load_config(tiny_config(**{"domain.name": TOY, "model.overrides": {}}))
    assert config.domain.name == TOY and len(config.run_id()) == 16
    assert config.architecture().motif.cr == 4
    for preset in ("paper", "fast"):
        assert preset_config(TOY, preset, channels=2).motif.cr == 4

    # a model built for it, and CE scored with the domain's own assignment
    domain = domains.make(TOY, size=16)
    overrides = {k: v for k, v in TINY_MODEL.items() if k != "cr"}
    model = build_model(domain, "fast", "non-sparse", **overrides)
    assert model.g.context_radius == 4
    assert assignment_for(TOY) == "hungarian"
    batch = [domain.sample(0, i) for i in range(4)]
    errors, acts = batch_motif_errors(model, domain, batch)
    assert acts.shape == (4, 2, 16, 16)
    assert errors.assignment == "hungarian" and errors.true_motifs == 4

    # the command line's help lists it
    with pytest.raises(SystemExit):
        cli.main(["data", "generate", "--help"])
    assert TOY in " ".join(capsys.readouterr().out.split())


def test_an_unknown_domain_name_lists_the_registered_ones(toy: type[Domain]) -> None:
    # every registered name, in order (other test modules may have registered more)
    listed = ", ".join(domains.names())
    assert set(BUILTIN) | {TOY} <= set(domains.names())
    with pytest.raises(ValueError, match="unknown domain 'nope'") as info:
        load_config(tiny_config(**{"domain.name": "nope"}))
    assert "domain.name" in str(info.value) and listed in str(info.value)
    for call in (
        lambda: domains.make("nope"),
        lambda: domains.get("nope"),
        lambda: preset_config("nope", "fast", channels=2),
        lambda: assignment_for("nope"),
    ):
        with pytest.raises(DomainError, match="unknown domain 'nope'") as info:
            call()
        assert listed in str(info.value)
        assert isinstance(info.value, SparlingError) and isinstance(info.value, ValueError)


def test_the_builtin_domains_carry_the_papers_constants() -> None:
    assert {n: domains.get(n).context_radius for n in BUILTIN} == {
        "digit-circle": 8,
        "latex-ocr": 32,
        "audio-digits": 16,
    }
    assert {n: assignment_for(n) for n in BUILTIN} == {
        "digit-circle": "hungarian",
        "latex-ocr": "majority",
        "audio-digits": "majority",
    }


def test_a_domain_without_a_context_radius_has_no_model_preset(toy: type[Domain]) -> None:
    class NoRadius(toy):  # type: ignore[valid-type, misc]
        name = "test-registry-no-radius"
        context_radius = None

    domains.register(NoRadius)
    try:
        assert domains.make(NoRadius.name).sample(0, 0).tokens  # it can still be sampled
        with pytest.raises(ValueError, match="sets no context_radius"):
            preset_config(NoRadius.name, "fast", channels=2)
    finally:
        domains._REGISTRY.pop(NoRadius.name, None)


def test_register_checks_what_the_registry_relies_on(toy: type[Domain]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        domains.register(toy)
    with pytest.raises(TypeError, match="subclass of Domain"):
        domains.register(int)  # type: ignore[type-var]

    class BadRadius(toy):  # type: ignore[valid-type, misc]
        name = "test-registry-bad-radius"
        context_radius = -1

    class BadKind(toy):  # type: ignore[valid-type, misc]
        name = "test-registry-bad-kind"
        kind = "video"

    for cls, problem in ((BadRadius, "context_radius"), (BadKind, "kind")):
        with pytest.raises(ValueError, match=problem):
            domains.register(cls)
        assert cls.name not in domains.names()
