"""Device names are checked against the machine before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import run_python, tiny_config

from sparling.config import load_config
from sparling.devices import DeviceError, describe_devices, resolve_device
from sparling.errors import SparlingError
from sparling.train import make_trainer


def test_resolve_device_accepts_cpu_and_refuses_bad_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "CPU", "cuda:0:1", ""):
        with pytest.raises(DeviceError, match="accepted devices are cpu, cuda and cuda:N"):
            resolve_device(bad, what="--device")
    assert issubclass(DeviceError, SparlingError)


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU"
)
def test_a_gpu_on_a_machine_without_one_is_refused_at_once(tmp_path: Path) -> None:
    assert describe_devices() == "cpu only (torch sees no CUDA GPU)"
    with pytest.raises(DeviceError, match=r"--device 'cuda:1': this machine has no GPU.*cpu only"):
        resolve_device("cuda:1", what="--device")
    config = load_config(tiny_config(compute={"gpus_per_worker": 1}))
    with pytest.raises(DeviceError, match="compute.gpus_per_worker > 0 asks for device 'cuda'"):
        make_trainer(config, [], [], tmp_path / "run")
    assert not (tmp_path / "run").exists()
    # the command line: one line naming the device, no traceback, nothing generated
    out = run_python(
        "-m", "pipelines.cli", "evaluate", str(tmp_path / "x" / "last"), "--device", "cuda"
    )
    assert out.returncode != 0
    assert "this machine has no GPU" in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU"
)
def test_sparling_train_asking_for_a_gpu_here_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    import yaml

    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config()))
    work = tmp_path / "work"
    out = run_python(
        "-m", "pipelines.cli", "train", str(cfg), "--work-dir", str(work),
        "--set", "compute.gpus_per_worker=1", timeout=120,
    )  # fmt: skip
    assert out.returncode != 0, out.stdout
    assert "needs 1 GPU(s); the local Ray instance has 0" in out.stderr
    assert "Traceback" not in out.stderr
    assert not work.exists()
