"""Where a model runs: a device name checked against what this machine has, before any work.

>>> resolve_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import re

import torch

from .errors import SparlingError

__all__ = ["DeviceError", "describe_devices", "resolve_device"]

_NAME = re.compile(r"cpu|cuda(:\d+)?")


class DeviceError(SparlingError, ValueError):
    """A device that is not a valid name, or that this machine does not have."""


def describe_devices() -> str:
    """What this machine offers torch, in words: ``cpu only`` or ``cpu, cuda:0 (NVIDIA ...)``."""
    if not torch.cuda.is_available():
        return "cpu only (torch sees no CUDA GPU)"
    names = [
        f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())
    ]
    return ", ".join(["cpu", *names])


def resolve_device(name: str | torch.device, *, what: str = "device") -> torch.device:
    """``name`` as a :class:`torch.device`, once it is known to exist here.

    Accepted: ``cpu``, ``cuda`` (the first GPU) and ``cuda:N``. A GPU on a machine without
    one, or a ``cuda:N`` past the last GPU, raises :class:`DeviceError` saying what the
    machine has (``what`` names the option in the message, e.g. ``--device``).
    """
    text = str(name)
    if not _NAME.fullmatch(text):
        raise DeviceError(f"{what} {text!r}: accepted devices are cpu, cuda and cuda:N")
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{what} {text!r}: this machine has no GPU torch can use; it has "
                f"{describe_devices()}"
            )
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(
                f"{what} {text!r}: there is no GPU {index}; this machine has {describe_devices()}"
            )
    return device
