"""``g``: the local motif model, a residual convolutional stack with a small receptive field.

Sparling only works if ``g`` is *local*: each motif activation may depend on a small
patch of the input (``cr`` pixels or frames each side), so that the few activations
that survive the sparsity layer can be read as "motif c is here".
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

Dims = Literal[1, 2]


class MotifConfig(BaseModel):
    """Sizes of ``g``. Defaults are the paper's, except ``cr`` which depends on the domain."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    width: int = Field(default=64, ge=1)
    """Channels inside the residual stack (the paper: 64)."""
    cr: int = Field(default=8, ge=0)
    """Context radius in input pixels/frames: ``cr/2`` residual units of two 3-wide convs
    each. Must be even. The paper: 8 DigitCircle, 32 LaTeX-OCR, 16 audio."""

    @model_validator(mode="after")
    def _check(self) -> MotifConfig:
        if self.cr % 2:
            raise ValueError(
                f"cr must be even (each residual unit adds 2 to the context radius), got {self.cr}"
            )
        return self


def _conv(dims: Dims) -> type[nn.Conv1d] | type[nn.Conv2d]:
    return nn.Conv1d if dims == 1 else nn.Conv2d


def _batch_norm(dims: Dims) -> type[nn.BatchNorm1d] | type[nn.BatchNorm2d]:
    return nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d


class ResidualUnit(nn.Module):
    """Pre-activation residual unit (He et al. 2016): BN, ReLU, conv, BN, ReLU, conv, + skip.

    Kernel 3 with padding 1 keeps the spatial size, so the skip needs no projection.
    """

    def __init__(self, channels: int, dims: Dims) -> None:
        super().__init__()
        conv, bn = _conv(dims), _batch_norm(dims)
        self.body = nn.Sequential(
            bn(channels),
            nn.ReLU(),
            conv(channels, channels, kernel_size=3, padding=1),
            bn(channels),
            nn.ReLU(),
            conv(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MotifModel(nn.Module):
    """``g``: (N, in_channels, *spatial) -> (N, motif_channels, *spatial), same spatial size.

    1x1 conv to ``width`` channels, ``cr/2`` residual units, 1x1 conv to the motif
    channels. ``dims`` is 2 for images (3x3 convs) and 1 for audio (3-wide convs over
    frames, mel bins as input channels).
    """

    def __init__(
        self, in_channels: int, motif_channels: int, config: MotifConfig, dims: Dims
    ) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        if in_channels < 1 or motif_channels < 1:
            raise ValueError(
                f"in_channels and motif_channels must be >= 1, got {in_channels}, {motif_channels}"
            )
        conv = _conv(dims)
        self.dims: Dims = dims
        self.config = config
        self.conv_in = conv(in_channels, config.width, kernel_size=1)
        self.units = nn.Sequential(
            *(ResidualUnit(config.width, dims) for _ in range(config.cr // 2))
        )
        self.conv_out = conv(config.width, motif_channels, kernel_size=1)

    @property
    def context_radius(self) -> int:
        """How many pixels/frames each side of a position can change its motif output."""
        return self.config.cr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv_in(x)
        if self.dims == 2:
            # The 3x3 convolutions run 1.3-1.5x faster channels-last on CPU (oneDNN), and
            # they are most of a DigitCircle step. Converted after conv_in because a
            # 1-channel input's layout is ambiguous; handed on contiguous so that later
            # code may view() it.
            z = z.contiguous(memory_format=torch.channels_last)
        return self.conv_out(self.units(z)).contiguous()
