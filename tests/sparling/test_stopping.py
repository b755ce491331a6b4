"""Stopping a run early: a stop request or a real SIGTERM makes the loop write its
checkpoint at the step it is on, and the run resumes from that step to the result of a run
never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, subprocess_env, tiny_config

from sparling import domains
from sparling.checkpoint import load_checkpoint, read_meta
from sparling.config import load_config
from sparling.domains import Sample
from sparling.stopping import (
    StopRequest,
    TrainingStopped,
    is_stopped_exit_code,
    stop_on_signals,
    stopped_exit_code,
)
from sparling.train import Callbacks, Trainer, make_trainer


def _samples(split: str, n: int) -> list[Sample]:
    d = domains.make("digit-circle", split=split)
    return [d.sample(0, i) for i in range(n)]


@pytest.fixture(scope="module")
def data() -> tuple[list[Sample], list[Sample]]:
    return _samples("train", 32), _samples("val", 8)


def _timeless(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "wall_seconds"} for r in history]


def _assert_same_tensors(a: Any, b: Any, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def test_a_stop_mid_interval_checkpoints_there_and_resumes_bitwise(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A perfect accuracy (after really decoding) makes the schedule step, so its state
    # is part of what must resume exactly; dropout makes the RNG state part of it too.
    real_validate = Trainer.validate
    monkeypatch.setattr(
        Trainer, "validate", lambda self: {**real_validate(self), "val_accuracy": 1.0}
    )
    cfg = load_config(
        tiny_config(**{"budget_samples": 128, "val_interval": 32, "model.overrides.dropout": 0.1})
    )
    ref = make_trainer(cfg, data[0], data[1], tmp_path / "ref", progress=False)
    ref_result = ref.fit()
    assert len(ref_result.density_checkpoints) >= 2, "the schedule should have stepped"

    holder: dict[str, Trainer] = {}

    def stop_at_40(info: dict[str, Any]) -> None:
        if info["samples"] == 40:  # one step past the validation at 32; next one at 64
            holder["t"].stop.set("a test's stop request")

    run = tmp_path / "run"
    stopped = make_trainer(
        cfg, data[0], data[1], run, callbacks=Callbacks(on_progress=stop_at_40), progress=False
    )
    holder["t"] = stopped
    with pytest.raises(TrainingStopped) as info:
        stopped.fit()
    assert info.value.samples == 40 and info.value.reason == "a test's stop request"
    assert info.value.checkpoint == run / "checkpoints" / "last"
    state, meta = load_checkpoint(run / "checkpoints" / "last")
    assert meta["samples"] == state["samples"] == 40
    assert [r["samples"] for r in state["history"]] == [32]  # the validations before it

    steps: list[int] = []
    resumed = make_trainer(
        cfg,
        data[0],
        data[1],
        run,
        callbacks=Callbacks(on_progress=lambda i: steps.append(i["samples"])),
        progress=False,
    )
    result = resumed.fit()
    assert steps[0] == 48  # the step after the checkpoint's
    assert result.samples == ref_result.samples
    assert _timeless(result.history) == _timeless(ref_result.history)
    assert result.density_checkpoints == ref_result.density_checkpoints
    # every part of the final checkpoints (model, optimiser, schedule, RNG, records) is
    # the same but the wall time
    _assert_same_checkpoints(
        run / "checkpoints" / "last", tmp_path / "ref" / "checkpoints" / "last"
    )
    for name in result.density_checkpoints.values():
        _assert_same_checkpoints(
            run / "checkpoints" / name, tmp_path / "ref" / "checkpoints" / name
        )


def _assert_same_checkpoints(a: Path, b: Path) -> None:
    (sa, ma), (sb, mb) = load_checkpoint(a), load_checkpoint(b)
    assert {k: v for k, v in ma.items() if k != "sha256"} == {
        k: v for k, v in mb.items() if k != "sha256"
    }
    for state in (sa, sb):
        state.pop("elapsed")
        state["history"] = _timeless(state["history"])
    _assert_same_tensors(sa, sb, a.name)


def test_a_stop_at_a_validation_writes_no_second_checkpoint(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(tiny_config(budget_samples=96))
    saves: list[tuple[str, int]] = []
    real_save = Trainer.save

    def save(self: Trainer, name: str, density: float | None = None) -> Path | None:
        saves.append((name, self.samples))
        return real_save(self, name, density)

    monkeypatch.setattr(Trainer, "save", save)
    holder: dict[str, Trainer] = {}

    def on_validation(record: dict[str, Any], checkpoint: Any) -> None:
        if record["samples"] == 32:
            holder["t"].stop.set("asked at a validation")

    trainer = make_trainer(
        cfg,
        data[0],
        data[1],
        tmp_path,
        callbacks=Callbacks(on_validation=on_validation),
        progress=False,
    )
    holder["t"] = trainer
    with pytest.raises(TrainingStopped, match=r"stopped at sample 32 \(asked at a validation\)"):
        trainer.fit()
    # the validation's checkpoint is the stop's: not written a second time
    assert saves == [("last", 16), ("last", 32)]
    assert read_meta(tmp_path / "checkpoints" / "last")["samples"] == 32


def test_should_stop_is_asked_before_every_step_and_its_reason_kept(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path
) -> None:
    cfg = load_config(tiny_config(budget_samples=48))
    asked: list[int] = []
    holder: dict[str, Trainer] = {}

    def should_stop() -> str | None:
        asked.append(holder["t"].samples)
        return "a preemption notice" if holder["t"].samples == 24 else None

    trainer = make_trainer(
        cfg,
        data[0],
        data[1],
        tmp_path,
        callbacks=Callbacks(should_stop=should_stop),
        progress=False,
    )
    holder["t"] = trainer
    with pytest.raises(TrainingStopped) as info:
        trainer.fit()
    assert asked == [0, 8, 16, 24]
    assert info.value.reason == "a preemption notice" and info.value.samples == 24
    assert info.value.exit_code == 143  # no signal: what a SIGTERM'd process returns
    assert read_meta(tmp_path / "checkpoints" / "last")["samples"] == 24


def test_signal_handlers_set_the_request_and_are_restored() -> None:
    before = signal.getsignal(signal.SIGTERM)
    request = StopRequest()
    with stop_on_signals(request):
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not request and time.monotonic() < deadline:
            time.sleep(0.01)
        assert request and request.reason == "SIGTERM" and request.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a second, different signal: the first reason
        time.sleep(0.05)
        assert request.reason == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # Ctrl-C twice: stop now
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before
    assert stopped_exit_code(signal.SIGINT) == 130 and stopped_exit_code(None) == 143
    assert is_stopped_exit_code(143) and is_stopped_exit_code(-signal.SIGTERM)
    assert not is_stopped_exit_code(1) and not is_stopped_exit_code(0)
    assert not is_stopped_exit_code(-signal.SIGKILL)


#: a training process: a tiny run that writes each step's sample count to ``steps.txt``
_TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from sparling import domains
from sparling.config import load_config
from sparling.stopping import TrainingStopped
from sparling.train import Callbacks, make_trainer

torch.set_num_threads(1)
run = Path(sys.argv[1])
cfg = load_config(json.loads(Path(sys.argv[2]).read_text()))
train = [domains.make("digit-circle", split="train").sample(0, i) for i in range(32)]
val = [domains.make("digit-circle", split="val").sample(0, i) for i in range(8)]
steps = run.parent / (run.name + ".steps.txt")

def on_progress(info):
    with open(steps, "a") as f:
        f.write(f"{info['samples']}\\n")

trainer = make_trainer(
    cfg, train, val, run, callbacks=Callbacks(on_progress=on_progress), progress=False
)
try:
    trainer.fit()
except TrainingStopped as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
"""


def _steps(run: Path) -> list[int]:
    path = run.parent / (run.name + ".steps.txt")
    try:
        return [int(line) for line in path.read_text().split()]
    except FileNotFoundError:
        return []


def test_sigterm_to_a_training_process_checkpoints_within_a_step_and_it_resumes(
    data: tuple[list[Sample], list[Sample]], tmp_path: Path
) -> None:
    """A real SIGTERM to a real training process, between validations 400 samples apart:
    the checkpoint is at most a step or two past the step it was signalled at (the old
    loop would have lost every step since the last validation), the process exits 143, and
    running it again resumes from that step to the uninterrupted result."""
    cfg_dict = tiny_config(**{"budget_samples": 8 * 70, "val_interval": 8 * 50})
    cfg_file = tmp_path / "config.json"
    cfg_file.write_text(json.dumps(cfg_dict))
    script = tmp_path / "train.py"
    script.write_text(_TRAIN_SCRIPT)
    run = tmp_path / "run"

    def start() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(script), str(run), str(cfg_file)],
            cwd=REPO,
            env=subprocess_env(PYTHONPATH=str(REPO)),
            stderr=subprocess.PIPE,
            text=True,
        )

    proc = start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (not _steps(run) or _steps(run)[-1] < 8 * 20):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            time.sleep(0.005)
        signalled_at = _steps(run)[-1]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "stopped at sample" in err and "(SIGTERM)" in err
    meta = read_meta(run / "checkpoints" / "last")
    print(f"signalled at sample {signalled_at}, checkpoint at {meta['samples']}")
    assert 8 * 20 <= signalled_at <= meta["samples"] <= signalled_at + 2 * 8, (signalled_at, meta)
    assert meta["samples"] == _steps(run)[-1]  # no step trained after the checkpoint's
    assert meta["samples"] < 8 * 50  # before the first validation: mid-interval

    (run.parent / "run.steps.txt").unlink()
    again = start()
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    assert _steps(run)[0] == meta["samples"] + 8  # resumed from the checkpoint's step

    ref = make_trainer(load_config(cfg_dict), data[0], data[1], tmp_path / "ref", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the training process's
    try:
        ref_result = ref.fit()
    finally:
        torch.set_num_threads(threads)
    state, _ = load_checkpoint(run / "checkpoints" / "last")
    assert state["samples"] == ref_result.samples
    assert _timeless(state["history"]) == _timeless(
        [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in ref.history]
    )
    _assert_same_tensors(state["model"], ref.model.state_dict(), "model")
    _assert_same_tensors(state["optimizer"], ref.optimizer.state_dict(), "optim")
