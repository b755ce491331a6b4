"""Exported models: one safetensors file, loaded back into the same model in eval mode."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_python, tiny_config

import sparling
from sparling import domains
from sparling.checkpoint import CONFIG_FILE
from sparling.config import load_config
from sparling.evaluate import evaluate_model
from sparling.evaluate import load_model as load_checkpoint_model
from sparling.export import ExportError, export_model, read_export_metadata
from sparling.scoring import GeneratedSamples
from sparling.train import make_trainer


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Sparling run with density steps (so its checkpoints differ in density)."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = load_config(tiny_config(**{"budget_samples": 64, "val_interval": 16}))
    train = GeneratedSamples(domains.make("digit-circle", split="train"), 0, 32)
    val = GeneratedSamples(domains.make("digit-circle", split="val"), 0, 8)
    trainer = make_trainer(cfg, train, val, run_dir, progress=False)
    measured = trainer.validate
    # A tiny model never decodes exactly; report it as perfect so that AST cuts density.
    trainer.validate = lambda: {**measured(), "val_accuracy": 1.0}  # type: ignore[method-assign]
    result = trainer.fit()
    (run_dir / CONFIG_FILE).write_text(cfg.to_json())  # as the pipeline's run folders have
    assert result.density_checkpoints, "the tiny run should have stepped its density"
    return run_dir


def test_export_round_trip_matches_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    meta = export_model(trained_run, out, density=0.5)
    assert float(meta["density"]) == 0.5
    reference, config, _ = load_checkpoint_model(trained_run / "checkpoints" / meta["checkpoint"])
    model = sparling.load_model(out)
    assert not model.training  # eval mode, as documented
    assert model.run_config.run_id() == config.run_id()
    assert model.bottleneck.density == pytest.approx(0.5)
    images = np.stack([domains.make("digit-circle", split="test").sample(0, i).x for i in range(4)])
    x = torch.as_tensor(images, dtype=torch.float32)  # a float batch (N, 100, 100)
    with torch.no_grad():
        acts = model.motifs(x)
        expected = reference.motifs(x)
    assert acts.shape == (4, config.model.channels or 10, 100, 100)
    torch.testing.assert_close(acts, expected, rtol=0, atol=0)
    assert model.decode(x) == reference.decode(x)
    # the thresholds travel with the weights: the activations are as sparse as trained
    assert 0 < float((acts > 0).float().mean()) < 0.9


def test_exported_density_is_the_selected_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    lowest = export_model(trained_run, tmp_path / "low.safetensors")
    assert float(lowest["density"]) < 0.5  # no --density: the lowest density it reached
    model = sparling.load_model(tmp_path / "low.safetensors")
    assert model.bottleneck.density == pytest.approx(float(lowest["density"]))


def test_scores_of_export_equal_checkpoint_scores(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    meta = export_model(trained_run, out)
    domain = domains.make("digit-circle", split="test")
    test = GeneratedSamples(domain, 0, 16)
    ref, _, _ = load_checkpoint_model(trained_run / "checkpoints" / meta["checkpoint"])
    a = evaluate_model(sparling.load_model(out), domain, test, max_len=8).metrics
    b = evaluate_model(ref, domain, test, max_len=8).metrics
    assert a == b


def test_not_an_export_is_refused_clearly(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ExportError, match="not a Sparling model export"):
        sparling.load_model(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ExportError, match="not a readable safetensors file"):
        read_export_metadata(junk)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        sparling.load_model(tmp_path / "missing.safetensors")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pipelines.cli", *args)


def test_cli_export_then_evaluate_file(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.safetensors"
    done = _cli("export", str(trained_run), "--density", "0.5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "exported" in done.stdout and out.is_file()
    report = tmp_path / "report"
    done = _cli("evaluate", str(out), "--samples", "8", "--json", "--out", str(report))
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["samples"] == 8 and 0.0 <= result["ce"] <= 1.0
    assert result["checkpoint_density"] == 0.5
    assert (report / "evaluation.json").is_file() and (report / "activations.png").is_file()
    bad = _cli("export", str(trained_run), "--out", str(tmp_path / "x.pt"))
    assert bad.returncode == 2 and ".safetensors" in bad.stderr
    bad = _cli("evaluate", str(out), "--density", "0.1")
    assert bad.returncode == 2 and "a file has one" in bad.stderr


def test_showcase_scores_and_draws(trained_run: Path, tmp_path: Path) -> None:
    import io

    from sparling.showcase import format_table, showcase

    model_file = tmp_path / "sparling-seed0.safetensors"
    export_model(trained_run, model_file)
    text = io.StringIO()
    rows = showcase([model_file], tmp_path / "show", samples=6, stream=text)
    out = text.getvalue()
    assert rows[0]["test_samples"] == 6 and rows[0]["method"] == "sparling"
    assert "true output" in out and "FPE %" in out and "sparling-seed0.safetensors" in out
    assert (tmp_path / "show" / "sparling-seed0-activations.png").is_file()
    assert (tmp_path / "show" / "sparling-seed0-confusion.png").is_file()
    assert json.loads((tmp_path / "show" / "scores.json").read_text()) == rows
    assert format_table(rows).count("\n") == 2  # header, rule, one row


def test_render_text_marks_activations_with_their_symbol() -> None:
    from sparling.domains import Motif, Sample
    from sparling.showcase import render_text

    x = np.zeros((8, 8), dtype=bool)
    x[0:4, 0:2] = True
    acts = np.zeros((3, 8, 8), dtype=np.float32)
    acts[2, 5, 6] = 0.7  # channel 2 fires in the text cell (row 1, column 3)
    text = render_text(Sample(x, ["7"], [Motif("7", (slice(0, 4), slice(0, 2)))]), acts, {2: "7"})
    lines = text.split("\n")
    assert lines[0] == "#" and lines[1][3] == "7"
    acts[2, 5, 6] = 0
    acts[1, 0, 0] = 1.0  # an unassigned channel
    assert render_text(Sample(x, ["7"]), acts, {2: "7"}).split("\n")[0] == "?"


def test_export_builds_its_own_architecture_after_the_preset_changes(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file records every field of g and h: a preset redefined later (here, h's
    Fourier encoding given more bands, and its tokens their strength) still loads the
    exported weights, and they decode the same."""
    from sparling.models import presets

    out = tmp_path / "model.safetensors"
    export_model(trained_run, out)
    before = sparling.load_model(out)
    original = presets._preset

    def wider(domain: str, preset: str) -> Any:
        g, h = original(domain, preset)
        return g, h.model_copy(
            update={"fourier_bands": h.fourier_bands + 2, "token_strength": True}
        )

    monkeypatch.setattr(presets, "_preset", wider)
    after = sparling.load_model(out)
    assert after.run_config.run_id() == before.run_config.run_id()
    x = torch.as_tensor(domains.make("digit-circle", split="test").sample(0, 0).x[None])
    assert after.decode(x.float()) == before.decode(x.float())
    # a file without the record (older exports) builds from the preset, so it no longer fits
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        metadata = dict(f.metadata())
    metadata.pop("architecture")
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=metadata)
    with pytest.raises(ExportError, match="do not fit the model its config builds") as file_error:
        sparling.load_model(old)
    # the same check as a checkpoint's (sparling.runs.load_weights): the same parameters
    # named, the same way, for a checkpoint without the record under the same preset
    import shutil

    from sparling.checkpoint import META_FILE, CheckpointError

    checkpoint = tmp_path / "old-checkpoint"
    shutil.copytree(trained_run / "checkpoints" / "last", checkpoint)
    meta = json.loads((checkpoint / META_FILE).read_text())
    del meta["architecture"]
    (checkpoint / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as checkpoint_error:
        load_checkpoint_model(checkpoint)

    def detail(e: pytest.ExceptionInfo[Exception]) -> str:
        return str(e.value).split("builds (", 1)[1].split("); ", 1)[0]

    assert "other shapes: h.position_proj.weight" in detail(file_error)
    assert detail(file_error) == detail(checkpoint_error)
    assert str(file_error.value).startswith(f"{old}: the weights do not fit")
    assert "load it with the code that exported it" in str(file_error.value)


def test_checkpoints_build_their_own_architecture_after_the_preset_changes(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's meta.json records g and h field by field: it loads (and exports)
    after its preset is redefined. One without the record (written before checkpoints
    had it) is refused with the parameters that do not fit, not a traceback."""
    import shutil

    from sparling.checkpoint import META_FILE, CheckpointError
    from sparling.models import presets

    checkpoint = trained_run / "checkpoints" / "last"
    assert "token_strength" in json.loads((checkpoint / META_FILE).read_text())["architecture"]
    before, _, _ = load_checkpoint_model(checkpoint)
    original = presets._preset

    def redefined(domain: str, preset: str) -> Any:
        g, h = original(domain, preset)
        return g, h.model_copy(update={"fourier_bands": h.fourier_bands + 2})

    monkeypatch.setattr(presets, "_preset", redefined)
    after, _, _ = load_checkpoint_model(checkpoint)
    x = torch.as_tensor(domains.make("digit-circle", split="test").sample(0, 1).x[None]).float()
    assert after.decode(x) == before.decode(x)
    export_model(checkpoint, tmp_path / "m.safetensors")
    assert sparling.load_model(tmp_path / "m.safetensors").decode(x) == before.decode(x)
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    meta = json.loads((old / META_FILE).read_text())
    del meta["architecture"]
    (old / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(
        CheckpointError, match=r"do not fit .*\(other shapes: h\.position_proj\.weight"
    ):
        load_checkpoint_model(old)
