"""The exported models under ``results/models/``: each loads through ``sparling.load_model``,
is the checkpoint its run evaluated (``results/<domain>/runs/<run id>/evaluation.json``),
and still scores like it on the first test samples of that run's split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import REPO, SHARED

import sparling
from sparling.export import evaluate_export

MODELS = sorted((REPO / "results" / "models").glob("*/*.safetensors"))
SAMPLES = 48


def _evaluation(domain: str, run_id: str) -> dict[str, float]:
    path = REPO / "results" / domain / "runs" / run_id / "evaluation.json"
    assert path.is_file(), f"no evaluation record of the run the model came from: {path}"
    return json.loads(path.read_text())


def test_every_domain_trained_here_has_exported_models() -> None:
    assert {p.parent.name for p in MODELS} >= {"digit-circle", "audio-digits"}


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_an_exported_model_is_its_runs_evaluated_checkpoint_and_scores_like_it(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path.parent.name == "audio-digits":
        root = SHARED / "data" / "fsdd"
        if not root.is_dir():
            pytest.skip(f"needs FSDD at {root}")
        monkeypatch.setenv("SPARLING_AUDIO_ROOT", str(root))
    model = sparling.load_model(path)
    meta = model.export_metadata
    assert model.run_config is not None and model.run_config.domain.name == path.parent.name
    recorded = _evaluation(path.parent.name, meta["run_id"])
    assert float(meta["density"]) == pytest.approx(recorded["test_checkpoint_density"])
    assert float(meta["samples"]) == recorded["test_checkpoint_samples"]
    # the first test samples of the run's own split: a model that lost its weights or its
    # density would be far off (errors near 100%, or activations everywhere)
    _, _, result = evaluate_export(path, samples=SAMPLES)
    m = result.metrics
    for name in ("fpe", "fne", "e2ee"):
        margin = 3 * math.sqrt(max(recorded[f"test_{name}"], 0.02) / SAMPLES) + 0.05
        assert abs(m[name] - recorded[f"test_{name}"]) <= margin, (name, m[name], recorded)
    assert m["density"] <= 4 * max(recorded["test_density"], float(meta["density"]))
