"""The training loop: every bottleneck trains, resumption is exact, NaN stops cleanly."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from sparling import bottleneck_names, domains
from sparling.checkpoint import CheckpointError, load_checkpoint
from sparling.config import load_config
from sparling.domains import Sample
from sparling.errors import SparlingError
from sparling.train import Callbacks, Trainer, TrainingFailed, batch_positions, make_trainer


def _samples(split: str, n: int) -> list[Sample]:
    d = domains.make("digit-circle", split=split)
    return [d.sample(0, i) for i in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[list[Sample], list[Sample]]:
    return _samples("train", 32), _samples("val", 8)


def test_batch_positions_are_epoch_permutations() -> None:
    first = batch_positions(3, 10, 0, 10)
    assert sorted(first.tolist()) == list(range(10))
    assert batch_positions(3, 10, 0, 25).tolist()[:10] == first.tolist()
    # any window is known without replaying the stream
    assert batch_positions(3, 10, 7, 9).tolist() == batch_positions(3, 10, 0, 16).tolist()[7:]
    assert batch_positions(4, 10, 0, 10).tolist() != first.tolist()


@pytest.mark.parametrize("name", bottleneck_names())
def test_every_bottleneck_trains_and_loss_falls(
    name: str, data: tuple[list[Sample], list[Sample]], tmp_path: Path
) -> None:
    trainer, result, losses = _overfit_eight(data, tmp_path, steps=40, **{"bottleneck.name": name})
    assert result.status == "budget-exhausted" and result.samples == 320
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"{name}: loss {first:.3f} -> {last:.3f}"
    assert 0.0 <= float(trainer.bottleneck.measured_density) <= 1.0


def _overfit_eight(
    data: tuple[list[Sample], list[Sample]], run_dir: Path, steps: int, **updates: Any
) -> tuple[Trainer, Any, list[float]]:
    """Train a tiny config on the first 8 training samples for ``steps`` batches of 8
    (validated once, at the end); returns the trainer, its result and every step's loss."""
    cfg = load_config(
        tiny_config(
            **{
                "data.train_size": 8,
                "budget_samples": 8 * steps,
                "val_interval": 8 * steps,
                **updates,
            }
        )
    )
    losses: list[float] = []
    trainer = make_trainer(
        cfg,
        data[0][:8],
        data[1],
        run_dir,
        callbacks=Callbacks(on_progress=lambda info: losses.append(info["loss"])),
        progress=False,
    )
    return trainer, trainer.fit(), losses


def _fit(cfg: Any, data: Any, run_dir: Path, callbacks: Callbacks | None = None) -> Any:
    trainer = make_trainer(cfg, data[0], data[1], run_dir, callbacks=callbacks, progress=False)
    return trainer, trainer.fit()


class _Kill(Exception):
    pass


def _report_validations(monkeypatch: pytest.MonkeyPatch, **values: float) -> None:
    """Every validation decodes for real, then reports ``values`` in place of its own."""
    real_validate = Trainer.validate

    def validate(self: Trainer) -> dict[str, Any]:
        return {**real_validate(self), **values}

    monkeypatch.setattr(Trainer, "validate", validate)


def test_resume_after_a_kill_is_bitwise_identical(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A tiny model never decodes a whole sequence right, so the schedule would never
    # step; report a perfect accuracy (after really decoding) so that the density changes
    # during the run and the schedule's state is part of what must resume exactly.
    _report_validations(monkeypatch, val_accuracy=1.0)
    cfg = load_config(tiny_config(**{"budget_samples": 96, "model.overrides.dropout": 0.1}))
    ref, ref_result = _fit(cfg, data, tmp_path / "ref")
    assert len(ref_result.density_checkpoints) >= 2, "the schedule should have stepped"

    steps = 0

    def kill_mid_interval(info: dict[str, Any]) -> None:
        nonlocal steps
        steps += 1
        if steps == 7:  # between validations (every 2 steps): after 'last' was written
            raise _Kill

    with pytest.raises(_Kill):
        _fit(cfg, data, tmp_path / "run", Callbacks(on_progress=kill_mid_interval))
    resumed, result = _fit(cfg, data, tmp_path / "run")

    def timeless(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in history]

    assert result.samples == ref_result.samples
    assert timeless(result.history) == timeless(ref_result.history)
    for (k, a), (_, b) in zip(
        ref.model.state_dict().items(), resumed.model.state_dict().items(), strict=True
    ):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), k
    assert ref.schedule.state_dict() == resumed.schedule.state_dict()
    # the density checkpoints exist and load safely
    for name in result.density_checkpoints.values():
        state, meta = load_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert meta["density"] > 0 and "model" in state
        torch.load(tmp_path / "run" / "checkpoints" / name / "state.pt", weights_only=True)


def test_finished_run_returns_at_once(data: Any, tmp_path: Path) -> None:
    cfg = load_config(tiny_config())
    _, first = _fit(cfg, data, tmp_path)
    steps: list[int] = []
    _, again = _fit(cfg, data, tmp_path, Callbacks(on_progress=lambda i: steps.append(1)))
    assert steps == [] and again.samples == first.samples


def test_nan_loss_stops_with_reason_and_keeps_last_good_checkpoint(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path
) -> None:
    cfg = load_config(tiny_config(budget_samples=96))
    holder: dict[str, Any] = {}
    steps = 0

    def poison(info: dict[str, Any]) -> None:
        nonlocal steps
        steps += 1
        if steps == 5:  # after the validation at 32 samples
            with torch.no_grad():
                next(holder["t"].model.h.parameters()).fill_(float("nan"))

    trainer = make_trainer(
        cfg, data[0], data[1], tmp_path, callbacks=Callbacks(on_progress=poison), progress=False
    )
    holder["t"] = trainer
    with pytest.raises(TrainingFailed, match="non-finite loss at sample 40"):
        trainer.fit()
    state, meta = load_checkpoint(tmp_path / "checkpoints" / "last")
    assert meta["samples"] == 32
    weights = [v for v in state["model"].values() if isinstance(v, torch.Tensor)]
    assert all(torch.isfinite(v).all() for v in weights if v.is_floating_point())


def test_corrupted_checkpoint_is_refused_with_its_path(data: Any, tmp_path: Path) -> None:
    cfg = load_config(tiny_config())
    _fit(cfg, data, tmp_path)
    state_file = tmp_path / "checkpoints" / "last" / "state.pt"
    blob = bytearray(state_file.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    state_file.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=str(state_file)):
        _fit(cfg, data, tmp_path)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b'{"density": 0.5, "samp', "not valid JSON (Unterminated string"),
        (b"\xff\xfe\x00garbage", "not UTF-8 text"),
        (b"[1, 2]", "a JSON object is expected, got list"),
    ],
)
def test_a_corrupt_meta_json_is_refused_with_its_path(
    tmp_path: Path, content: bytes, words: str
) -> None:
    from sparling.checkpoint import read_meta, save_checkpoint

    folder = save_checkpoint(tmp_path / "last", {"w": torch.zeros(1)}, {"density": 0.5}, "{}")
    (folder / "meta.json").write_bytes(content)
    for read in (read_meta, load_checkpoint):
        with pytest.raises(CheckpointError) as info:
            read(folder)
        message = str(info.value)
        assert message.startswith(f"{folder / 'meta.json'}: corrupt checkpoint metadata, ")
        assert words in message


def test_checkpoint_of_another_run_is_refused(data: Any, tmp_path: Path) -> None:
    _fit(load_config(tiny_config()), data, tmp_path)
    with pytest.raises(CheckpointError, match="belongs to run"):
        _fit(load_config(tiny_config(seed=1)), data, tmp_path)


@pytest.mark.parametrize("ref", ["path", "run"])
def test_retrained_starts_from_frozen_g(
    data: Any, tmp_path: Path, ref: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = load_config(tiny_config())
    # "run": the sweep's form, a run id resolved beside the new run's folder
    src_dir = tmp_path / (base.run_id() if ref == "run" else "src")
    with monkeypatch.context() as m:
        # a perfect accuracy: the density steps, keeping checkpoints to choose from
        real_validate = Trainer.validate
        m.setattr(Trainer, "validate", lambda self: {**real_validate(self), "val_accuracy": 1.0})
        _fit(base, data, src_dir)
    src = src_dir / "checkpoints" / "last"
    kept = sorted(src_dir.glob("checkpoints/density-*"))
    if ref == "run":
        assert kept, "the tiny run should have kept a checkpoint at a density step"
        src = kept[0]  # the only one: run:<id>@density=<its density> must pick it
        density = float(json.loads((src / "meta.json").read_text())["density"])
        init_from = f"run:{base.run_id()}@density={density!r}"
    else:
        init_from = str(src)
    cfg = load_config(
        tiny_config(
            **{
                "bottleneck.name": "non-sparse",
                "init_from": init_from,
                "freeze_motif_model": True,
            }
        )
    )
    trainer, _ = _fit(cfg, data, tmp_path / "retrained")
    src_state, _ = load_checkpoint(src)
    for k, v in trainer.model.g.state_dict().items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and "running" not in k:
            assert torch.equal(v, src_state["model"][f"g.{k}"]), k


def test_run_reference_errors(data: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a run reference"):
        load_config(tiny_config(init_from="run:nothex@density=2"))
    cfg = load_config(
        tiny_config(**{"init_from": "run:0123456789abcdef", "freeze_motif_model": True})
    )
    with pytest.raises(TrainingFailed, match="run 0123456789abcdef has no checkpoints"):
        _fit(cfg, data, tmp_path / "retrained")


def test_epoch_order_visits_each_shard_whole() -> None:
    blocks = [(0, 5), (5, 10), (10, 12)]
    order = batch_positions(7, 12, 0, 12, blocks)
    assert sorted(order.tolist()) == list(range(12))
    # consecutive runs stay inside one block: exactly len(blocks) - 1 block changes
    which = [next(b for b, (lo, hi) in enumerate(blocks) if lo <= i < hi) for i in order]
    assert sum(a != b for a, b in zip(which, which[1:])) == len(blocks) - 1
    assert batch_positions(7, 12, 12, 12, blocks).tolist() != order.tolist()  # next epoch differs
    assert (
        batch_positions(7, 12, 5, 9, blocks).tolist()
        == order.tolist()[5:] + batch_positions(7, 12, 12, 2, blocks).tolist()
    )


def test_a_second_trainer_of_the_same_run_waits_for_the_first(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path
) -> None:
    import fcntl

    cfg = load_config(tiny_config())
    trainer = make_trainer(cfg, data[0], data[1], tmp_path, progress=False)
    with open(tmp_path / "train.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process is training this run
        with pytest.raises(TrainingFailed, match="being trained by another process"):
            with trainer._exclusive(wait_seconds=1.5):
                pass
    assert trainer.fit().samples == 48  # once released, training goes ahead


def test_bf16_autocast_trains_and_keeps_float32_state(data: Any, tmp_path: Path) -> None:
    """``compute.precision=bf16`` runs the forward under autocast (on the CPU here, as on a
    GPU); weights and the sparsity layer's state stay float32 and the loss falls."""
    trainer, result, losses = _overfit_eight(
        data, tmp_path, steps=30, **{"compute.precision": "bf16"}
    )
    assert result.status == "budget-exhausted"
    assert sum(losses[-3:]) < 0.8 * sum(losses[:3])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert all(b.dtype in (torch.float32, torch.int64) for b in trainer.model.buffers())
    assert 0.0 < result.history[-1]["val_density"] <= 1.0


def test_a_gpu_config_without_a_gpu_is_refused_clearly(data: Any, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = load_config(tiny_config(**{"compute.gpus_per_worker": 1}))
    with pytest.raises(SparlingError, match="gpus_per_worker > 0 asks for device 'cuda'"):
        make_trainer(cfg, data[0], data[1], tmp_path, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_resumes_exactly(data: Any, tmp_path: Path) -> None:
    cfg = load_config(tiny_config(**{"compute.gpus_per_worker": 1}))
    trainer, result = _fit(cfg, data, tmp_path / "a")
    assert trainer.device.type == "cuda" and result.status in ("budget-exhausted", "target-reached")
    state, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "last")
    assert "cuda_rng" in state


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Any:
    """A 64 MiB tmpfs (a real filesystem that can fill up); skipped where mounting is not
    permitted (CI runs as root on a machine that allows it)."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until its filesystem is full."""
    filler = folder / "filler"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


def test_disk_full_stops_with_a_clear_error_and_resumes_exactly(
    data: Any, tmp_path: Path, small_filesystem: Path
) -> None:
    """The disk fills up mid-run (a real ENOSPC on a small tmpfs): the run stops with an
    error naming the checkpoint it could not write, the last complete checkpoint is
    intact, and once space is freed the run resumes to the uninterrupted result."""
    cfg = load_config(tiny_config(budget_samples=96))
    _, clean = _fit(cfg, data, tmp_path / "clean")

    run_dir = small_filesystem / "run"
    filled: list[Path] = []

    def on_validation(record: dict[str, Any], checkpoint: Any) -> None:
        if record["samples"] == 32 and not filled:  # after the second checkpoint
            filled.append(_fill(small_filesystem))

    with pytest.raises(TrainingFailed) as err:
        _fit(cfg, data, run_dir, Callbacks(on_validation=on_validation))
    message = str(err.value)
    assert "No space left on device" in message
    assert str(run_dir / "checkpoints") in message and "is intact" in message
    state, meta = load_checkpoint(run_dir / "checkpoints" / "last")  # checksum verified
    assert meta["samples"] == 32
    assert not list((run_dir / "checkpoints").glob(".*"))  # no half-written temp folder

    filled[0].unlink()
    _, resumed = _fit(cfg, data, run_dir)
    assert resumed.samples == clean.samples
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in clean.history]


def _bn_inputs_mean(model: Any, batches: list[Any]) -> torch.Tensor:
    """The per-channel mean of g's first batch norm's input, averaged over ``batches``,
    as g computes it in training mode (batch statistics in every batch norm before it)."""
    model = copy.deepcopy(model).train()
    first = next(m for m in model.g.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen: list[torch.Tensor] = []
    hook = first.register_forward_hook(lambda _m, args, _out: seen.append(args[0].mean((0, 2, 3))))
    with torch.no_grad():
        for x in batches:
            model.g(model.prepare_input(x))
    hook.remove()
    return torch.stack(seen).mean(0)


def test_recalibrated_batch_norm_is_the_average_over_the_batches(
    data: tuple[list[Sample], list[Sample]],
) -> None:
    from sparling.runs import build_run_model
    from sparling.scoring import collate_inputs

    cfg = load_config(tiny_config())
    model = build_run_model(cfg, domains.make("digit-circle", split="train"))
    model.eval()
    bns = [m for m in model.g.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:  # statistics far from anything g produces
        bn.running_mean.fill_(50.0)
        bn.running_var.fill_(1e4)
    sparse_state = copy.deepcopy(model.bottleneck.state_dict())
    batches = [collate_inputs(data[0][i : i + 8]) for i in range(0, 32, 8)]
    model.recalibrate_batch_norm(batches)

    assert not model.training and all(bn.momentum == 0.1 for bn in bns)
    expected = _bn_inputs_mean(model, batches)
    assert torch.allclose(bns[0].running_mean, expected, atol=1e-3)  # float32 sums of 80k
    assert bool((bns[0].running_var < 1e3).all())
    # the sparsity layer's batch norm: the batches' statistics of g's eval-mode output
    # (with g's statistics re-estimated); its thresholds as training left them
    layer = model.bottleneck.layer
    with torch.no_grad():
        outs = [model.g(model.prepare_input(x)) for x in batches]
    mean = torch.stack([z.mean((0, 2, 3)) for z in outs]).mean(0)
    var = torch.stack([z.var((0, 2, 3)) for z in outs]).mean(0)
    assert layer.bn is not None
    assert torch.allclose(layer.bn.running_mean, mean, atol=1e-4)
    assert torch.allclose(layer.bn.running_var, var, rtol=1e-3)
    assert not torch.allclose(sparse_state["layer.bn.running_var"], var, rtol=0.1)
    assert torch.equal(layer.thresholds, sparse_state["layer.thresholds"])


def test_a_run_evaluates_and_checkpoints_with_recalibrated_batch_norm(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path
) -> None:
    from sparling.scoring import collate_inputs

    cfg = load_config(tiny_config(budget_samples=16, bn_recalibration_samples=24))
    trainer, _ = _fit(cfg, data, tmp_path / "run")
    state, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    stored = next(v for k, v in state["model"].items() if k.endswith("running_mean"))
    # the same weights, re-estimated by hand over the first 24 training samples
    model = trainer.model
    expected = _bn_inputs_mean(model, [collate_inputs(data[0][i : i + 8]) for i in (0, 8, 16)])
    assert torch.allclose(stored, expected, atol=1e-3)
    # without the option the stored statistics are training's running averages
    plain, _ = _fit(load_config(tiny_config(budget_samples=16)), data, tmp_path / "plain")
    plain_state, _ = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last")
    running = next(v for k, v in plain_state["model"].items() if k.endswith("running_mean"))
    assert not torch.allclose(running, stored, atol=1e-2)


def test_batch_norm_recalibration_is_in_the_run_id_only_when_used() -> None:
    base = load_config(tiny_config())
    assert "bn_recalibration_samples" not in base.identity()
    assert load_config(tiny_config(bn_recalibration_samples=0)).run_id() == base.run_id()
    used = load_config(tiny_config(bn_recalibration_samples=512))
    assert used.identity()["bn_recalibration_samples"] == 512
    assert used.run_id() != base.run_id()


def test_a_run_whose_l1_output_stays_zero_stops_as_collapsed(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every validation sees a bottleneck output that is zero everywhere
    _report_validations(monkeypatch, val_density=0.0)
    l1 = {"bottleneck.name": "l1", "budget_samples": 96, "collapse_validations": 3}
    _, result = _fit(load_config(tiny_config(**l1)), data, tmp_path / "l1")
    # validations every 16 samples: the third zero one ends it, long before the budget
    assert result.status == "collapsed" and result.samples == 48
    # resumed, it is done at once
    _, again = _fit(load_config(tiny_config(**l1)), data, tmp_path / "l1")
    assert again.status == "collapsed" and again.samples == 48
    # 0 trains to the budget; a bottleneck whose zero output can change (Sparling's
    # thresholds adapt) is never stopped for it
    for name, updates in [
        ("off", {**l1, "collapse_validations": 0}),
        ("sparling", {**l1, "bottleneck.name": "sparling"}),
    ]:
        _, full = _fit(load_config(tiny_config(**updates)), data, tmp_path / name)
        assert full.status != "collapsed" and full.samples == 96, name


def test_collapse_validations_is_in_the_run_id_only_when_changed() -> None:
    base = load_config(tiny_config())
    assert "collapse_validations" not in base.identity()
    assert load_config(tiny_config(collapse_validations=5)).run_id() == base.run_id()
    assert load_config(tiny_config(collapse_validations=0)).run_id() != base.run_id()
