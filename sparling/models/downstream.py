"""``h``: the downstream model from (sparse) motif maps to the output token sequence.

Re-embed the motif channels with a 1x1 conv, max-pool, encode (images: a bidirectional
LSTM along each row, a row positional encoding and a Transformer encoder; audio: a
positional encoding and a Transformer encoder over frames), then a Transformer decoder
predicts the tokens: teacher-forced for training, greedy with cached states for testing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, cast

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from .motif import Dims
from .tokenizer import BOS_ID, EOS_ID, PAD_ID
from .transformer import DecoderLayer, EncoderLayer, LayerCache, sinusoidal_encoding

#: added to a cell's total pooled activation before the log of the ``salience`` bias
SALIENCE_FLOOR = 1e-3
#: (ids so far (N, t+1), position t) -> logits (N, vocab) for the next id
_NextLogits = Callable[[torch.Tensor, int], torch.Tensor]


class DownstreamConfig(BaseModel):
    """Sizes of ``h``. Defaults are the paper's (the authors' code: PyTorch's default
    Transformer layers at 512 channels, i.e. ff 2048, dropout 0.1, post-norm)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    d_model: int = Field(default=512, ge=2)
    """Channels of the re-embedding, the LSTM output and the Transformers. Even."""
    encoder_layers: int = Field(default=6, ge=0)
    """Transformer encoder layers (0: the encoder is just the LSTM/positional encoding)."""
    decoder_layers: int = Field(default=6, ge=1)
    """Transformer decoder layers."""
    heads: int = Field(default=8, ge=1)
    """Attention heads in every attention block; must divide ``d_model``."""
    ff: int = Field(default=2048, ge=1)
    """Hidden width of the feed-forward blocks."""
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    """Dropout after positional encodings, on attention weights and in residual branches."""
    row_lstm: bool = True
    """Images only: a bidirectional LSTM (hidden ``d_model/2`` per direction) along each
    pooled row, which gives the encoder horizontal position; without it a 2-D sinusoidal
    encoding does. Must be false for audio."""
    position: Literal["sinusoid", "fourier"] = "sinusoid"
    """How the encoder is told where each pooled cell is. ``sinusoid`` (the paper): the
    Transformer's encoding of the integer row index (with the row LSTM) or of the row and
    column indices (without it; audio: of the frame index), added. ``fourier``: Fourier
    features of the cell centre's continuous coordinates (each axis scaled to [0, 1]),
    ``fourier_bands`` octaves per axis, through a learned linear map, added (after the
    row LSTM where there is one)."""
    fourier_bands: int = Field(default=6, ge=1, le=16)
    """Octaves per axis of the ``fourier`` encoding: frequencies pi * 2**k, k < bands."""
    salience: bool = False
    """Weigh every attention over the cells (the encoder's, the decoder's cross-attention)
    by each cell's total activation: ``log(1e-3 + sum of its pooled motif values)`` is
    added to the attention logits. Where the sparsity layer lets few activations through,
    attention starts on the cells that hold them (an empty cell weighs 1/1000 of a cell
    with an activation of 1), instead of spreading over every cell of the grid."""
    pool: int = Field(default=8, ge=1)
    """Pooling kernel (and stride), per spatial axis."""
    pool_reduce: Literal["max", "logsum", "max+logsum"] = "max"
    """How ``pool_first`` pools each channel over a cell: its strongest activation (the
    paper's max-pool); ``log(1 + sum)`` of all its activations, which counts how many the
    cell holds, not only the strongest, and stays in range from the dense start to the
    sparse end; or both side by side (``2 * channels`` values per cell). With ``logsum``
    the ``salience`` mass is the cell's summed activation."""
    pool_first: bool = False
    """Max-pool the motif maps channel by channel, then re-embed the pooled cells (True),
    instead of re-embedding every position and pooling that (False, the paper). Pooling
    first keeps each channel's strongest activation in the cell and costs about
    ``d_model / channels`` times less: the paper's order re-embeds all H*W positions to
    ``d_model`` channels, then keeps one value in ``pool**2`` of each."""
    tokens: int = Field(default=0, ge=0)
    """0 (the paper): the encoder's inputs are the pooled cells, each the re-embedding of
    every channel's value there. K > 0: they are the K strongest activations of the motif
    maps, one per (cell, channel) at most: each one token, the sum of a learned embedding
    of its channel, the ``fourier`` encoding of its exact position (where in the cell the
    cell's maximum is) and a learned direction scaled by ``log(1 + value)``. With
    ``salience`` the attention bias is ``log(1e-3 + value)`` per token. A token carries one
    channel, so activations of different channels that share a cell stay apart. Needs
    ``position="fourier"`` and no row LSTM; ``pool`` sizes the cells, ``pool_first`` does
    not apply (nothing is re-embedded)."""
    token_strength: bool = True
    """With ``tokens``: whether a token carries its strength, the learned direction scaled
    by ``log(1 + value)`` (True), or only its channel and position (False). Without it
    ``h`` cannot read one channel's strong and weak activations as two kinds of thing,
    so ``g`` has to give every motif its own channel; the ``salience`` bias still weighs
    tokens by value. Ignored when ``tokens`` is 0."""
    norm_first: bool = False
    """Pre-norm (True: ``x + f(norm(x))``, with a final LayerNorm after each stack) or
    post-norm (False: ``norm(x + f(x))``, the paper)."""

    @model_validator(mode="after")
    def _check(self) -> DownstreamConfig:
        if self.d_model % 2:
            raise ValueError(
                f"d_model must be even (sin/cos pairs, two LSTM halves), got {self.d_model}"
            )
        if self.d_model % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide d_model ({self.d_model})")
        if self.pool_reduce != "max" and not self.pool_first:
            raise ValueError(
                f"pool_reduce={self.pool_reduce!r} needs pool_first=true (the paper's order "
                f"max-pools the re-embedded positions); accepted with pool_first=false: 'max'"
            )
        if self.tokens and self.pool_reduce != "max":
            raise ValueError(
                f"pool_reduce={self.pool_reduce!r} does not apply with tokens={self.tokens} "
                f"(a token is one cell's maximum in one channel); accepted: 'max'"
            )
        if self.tokens and (self.row_lstm or self.position != "fourier"):
            raise ValueError(
                f"tokens={self.tokens} needs position='fourier' and row_lstm=false (a token's "
                f"position is its own coordinates), got position={self.position!r}, "
                f"row_lstm={self.row_lstm}"
            )
        if not self.row_lstm and self.position == "sinusoid" and self.d_model % 4:
            raise ValueError(
                f"d_model must be a multiple of 4 when row_lstm is false (half the channels "
                f"encode the row, half the column), got {self.d_model}"
            )
        return self


class DownstreamModel(nn.Module):
    """``h``: motifs (N, C, H, W) or (N, C, L) and decoder input ids -> logits over ids.

    Special ids are the tokenizer's: PAD, BOS and EOS (see :mod:`.tokenizer`).
    """

    def __init__(
        self, motif_channels: int, vocab_size: int, config: DownstreamConfig, dims: Dims
    ) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims!r}")
        if dims == 1 and config.row_lstm:
            raise ValueError("row_lstm must be false for 1-D (audio) inputs; accepted: False")
        if vocab_size <= EOS_ID:
            raise ValueError(f"vocab_size must include the 3 special ids, got {vocab_size}")
        d = config.d_model
        self.config = config
        self.dims: Dims = dims
        self.vocab_size = vocab_size
        conv = nn.Conv1d if dims == 1 else nn.Conv2d
        pool = nn.MaxPool1d if dims == 1 else nn.MaxPool2d
        widen = 2 if config.pool_reduce == "max+logsum" else 1
        if config.tokens:
            self.channel_embed = nn.Embedding(motif_channels, d)
            self.value_proj = nn.Linear(1, d) if config.token_strength else None
        else:
            self.reembed = conv(motif_channels * widen, d, kernel_size=1)
        self.pool = pool(config.pool)
        self.mean_pool = (nn.AvgPool1d if dims == 1 else nn.AvgPool2d)(config.pool)
        self.row_lstm = (
            nn.LSTM(d, d // 2, bidirectional=True, batch_first=True) if config.row_lstm else None
        )
        #: the fourier encoding's map from (2 * axes * bands) features to d_model
        self.position_proj = (
            nn.Linear(2 * dims * config.fourier_bands, d) if config.position == "fourier" else None
        )
        self.drop = nn.Dropout(config.dropout)
        args = (d, config.heads, config.ff, config.dropout, config.norm_first)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(config.decoder_layers))
        # A pre-norm stack leaves its residual stream unnormalised; post-norm ends normalised.
        norm = nn.LayerNorm if config.norm_first else nn.Identity
        self.encoder_norm: nn.Module = norm(d) if config.encoder_layers else nn.Identity()
        self.decoder_norm: nn.Module = norm(d)
        self.embed = nn.Embedding(vocab_size, d)
        self.out = nn.Linear(d, vocab_size)

    # -- encoder ------------------------------------------------------------------------
    def encode(self, motifs: torch.Tensor) -> torch.Tensor:
        """Motif maps -> memory (N, S, d_model); S = pooled H*W (row-major) or pooled L."""
        return self.encode_with_bias(motifs)[0]

    def encode_with_bias(self, motifs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The memory, and the attention bias over its cells ((N, 1, 1, S), with
        ``salience``; else None) that the decoder's cross-attention adds."""
        spatial = motifs.shape[2:]
        if len(spatial) != self.dims or min(spatial) < self.config.pool:
            raise ValueError(
                f"expected motifs (N, C, {'H, W' if self.dims == 2 else 'L'}) with every "
                f"spatial size >= pool ({self.config.pool}), got {tuple(motifs.shape)}"
            )
        if self.config.tokens:
            return self._encode(*self._tokens(motifs))
        reduce = self.config.pool_reduce
        pooled = total = None
        if self.config.pool_first or self.config.salience:
            pooled = self.pool(motifs) if reduce != "logsum" else None
            if reduce != "max":  # every activation of the cell, per channel
                total = self.mean_pool(motifs.clamp_min(0)) * self.config.pool**self.dims
        bias = None
        if self.config.salience:
            mass = pooled if total is None else total
            assert mass is not None
            mass = mass.float().clamp_min(0).flatten(2).sum(1)  # (N, S), row-major cells
            bias = torch.log(mass + SALIENCE_FLOOR)[:, None, None, :]
        if self.config.pool_first and total is not None:
            pooled = torch.cat([t for t in (pooled, torch.log1p(total)) if t is not None], dim=1)
        if self.config.pool_first:
            assert pooled is not None
            z = self.reembed(pooled)
        else:
            z = self.pool(self.reembed(motifs))
        d = self.config.d_model
        if self.dims == 1:
            z = z.transpose(1, 2)  # (N, L, d)
            if self.position_proj is None:
                z = z + sinusoidal_encoding(torch.arange(z.shape[1], device=z.device), d, z.dtype)
            else:
                z = z + self._fourier(z.shape[1:2], z.dtype)
        else:
            n, _, rows, cols = z.shape
            z = z.permute(0, 2, 3, 1)  # (N, H, W, d)
            if self.row_lstm is not None:
                # Each row is one LSTM sequence; the LSTM tells the encoder where in the
                # row a feature is, and the added encoding tells it which row.
                z, _ = self.row_lstm(z.reshape(n * rows, cols, d))
                z = z.reshape(n, rows, cols, d)
            if self.position_proj is not None:
                z = z + self._fourier((rows, cols), z.dtype).view(rows, cols, d)
            elif self.row_lstm is not None:
                pe = sinusoidal_encoding(torch.arange(rows, device=z.device), d, z.dtype)
                z = z + pe[None, :, None, :]
            else:
                r = sinusoidal_encoding(torch.arange(rows, device=z.device), d // 2, z.dtype)
                c = sinusoidal_encoding(torch.arange(cols, device=z.device), d // 2, z.dtype)
                pe = torch.cat(
                    [r[:, None, :].expand(rows, cols, -1), c[None, :, :].expand(rows, cols, -1)],
                    dim=-1,
                )
                z = z + pe
            z = z.reshape(n, rows * cols, d)
        return self._encode(z, bias)

    def _encode(
        self, z: torch.Tensor, bias: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.drop(z)
        for layer in self.encoder:
            z = layer(z, bias)
        return self.encoder_norm(z), bias

    def _tokens(self, motifs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The ``tokens`` encoder input: the K strongest (cell, channel) maxima as tokens
        (N, K, d_model), and their salience bias (N, 1, 1, K) or None."""
        assert self.position_proj is not None
        spatial = motifs.shape[2:]
        pool = F.max_pool1d if self.dims == 1 else F.max_pool2d
        values, where = pool(motifs, self.config.pool, return_indices=True)
        n = values.shape[0]
        cells = math.prod(values.shape[2:])
        values, where = values.reshape(n, -1), where.reshape(n, -1)  # (N, C * cells)
        value, pick = values.topk(min(self.config.tokens, values.shape[1]), dim=1)
        flat = where.gather(1, pick)  # index into the flattened input positions
        if self.dims == 1:
            coords = ((flat.float() + 0.5) / spatial[0])[..., None]
        else:
            rows, cols = spatial
            coords = torch.stack(
                [(flat // cols).float().add(0.5) / rows, (flat % cols).float().add(0.5) / cols],
                dim=-1,
            )
        k = value.shape[1]
        features = fourier_features(coords.reshape(n * k, -1), self.config.fourier_bands)
        z = self.channel_embed(pick // cells) + self.position_proj(features).view(n, k, -1)
        if self.value_proj is not None:
            z = z + self.value_proj(torch.log1p(value.clamp_min(0))[..., None])
        bias = None
        if self.config.salience:
            bias = torch.log(value.float().clamp_min(0) + SALIENCE_FLOOR)[:, None, None, :]
        return z, bias

    def _fourier(self, grid: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """The ``fourier`` encoding of every cell of a pooled ``grid``, row-major: (S, d)."""
        assert self.position_proj is not None
        device = self.position_proj.weight.device
        coords = fourier_coordinates(grid, device)
        return self.position_proj(fourier_features(coords, self.config.fourier_bands)).to(dtype)

    # -- decoder: teacher forcing --------------------------------------------------------
    def _embed(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Token embeddings plus the encoding of positions ``start, start+1, ...``."""
        x = self.embed(ids)
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        return self.drop(x + sinusoidal_encoding(pos, self.config.d_model, x.dtype))

    def decode_logits(
        self, memory: torch.Tensor, ids: torch.Tensor, memory_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (N, T, vocab) for decoder inputs ``ids`` (N, T); row t sees ids[:, :t+1].

        PAD only ever follows EOS, so causal masking already keeps real positions from
        attending to padding, and no padding mask is needed.
        """
        x = self._embed(ids, 0)
        for layer in self.decoder:
            x = layer(x, memory, memory_bias)
        return self.out(self.decoder_norm(x))

    def forward(self, motifs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        memory, bias = self.encode_with_bias(motifs)
        return self.decode_logits(memory, ids, bias)

    # -- decoder: greedy ---------------------------------------------------------------------
    @property
    def _decoder_layers(self) -> list[DecoderLayer]:
        # ModuleList items are typed as Module; the decoder only ever holds DecoderLayers.
        return cast(list[DecoderLayer], list(self.decoder))

    def init_cache(
        self,
        memory: torch.Tensor,
        max_len: int | None = None,
        memory_bias: torch.Tensor | None = None,
    ) -> list[LayerCache]:
        """Per-layer caches holding the memory's keys/values, projected once (and room for
        ``max_len`` decoded positions when given)."""
        return [
            layer.precompute_memory(memory, max_len, memory_bias) for layer in self._decoder_layers
        ]

    def step(
        self,
        ids: torch.Tensor,
        position: int,
        cache: list[LayerCache],
        encoding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (N, vocab) for one new input id per row (N,) at ``position``; updates cache.

        ``encoding``: the position's sinusoidal encoding (d_model,), if already computed."""
        if encoding is None:
            x = self._embed(ids[:, None], position)
        else:
            x = self.drop(self.embed(ids[:, None]) + encoding.to(self.embed.weight.dtype))
        for layer, layer_cache in zip(self._decoder_layers, cache, strict=True):
            x = layer.step(x, layer_cache)
        return self.out(self.decoder_norm(x))[:, 0]

    @torch.inference_mode()
    def greedy_decode(
        self, memory: torch.Tensor, max_len: int, memory_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Greedy decoding with cached keys/values: (N, T) ids, T <= ``max_len``.

        Row i holds the generated ids (EOS included when emitted), then PAD. Stops once
        every row has emitted EOS, or after ``max_len`` ids. Call in eval mode.
        """
        cache = self.init_cache(memory, max_len, memory_bias)
        # every position's encoding at once, not one small computation per step
        table = sinusoidal_encoding(
            torch.arange(max_len, device=memory.device), self.config.d_model
        )
        return self._greedy(
            memory, max_len, lambda ids, t: self.step(ids[:, -1], t, cache, table[t])
        )

    @torch.inference_mode()
    def greedy_decode_naive(
        self, memory: torch.Tensor, max_len: int, memory_bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Reference for :meth:`greedy_decode`: re-runs the full decoder on the prefix per id."""
        return self._greedy(
            memory, max_len, lambda ids, t: self.decode_logits(memory, ids, memory_bias)[:, -1]
        )

    def _greedy(self, memory: torch.Tensor, max_len: int, next_logits: _NextLogits) -> torch.Tensor:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        n = memory.shape[0]
        ids = torch.full((n, 1), BOS_ID, dtype=torch.long, device=memory.device)
        finished = torch.zeros(n, dtype=torch.bool, device=memory.device)
        never = torch.tensor([PAD_ID, BOS_ID], device=memory.device)
        for t in range(max_len):
            # PAD and BOS are never targets; excluding them keeps an untrained model's
            # output well-formed (its argmax could otherwise be PAD).
            nxt = next_logits(ids, t).index_fill(1, never, float("-inf")).argmax(-1)
            # Rows that are done keep computing (the batch stays rectangular) but emit PAD.
            nxt = torch.where(finished, PAD_ID, nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            finished |= nxt == EOS_ID
            if bool(finished.all()):
                break
        return ids[:, 1:]


def fourier_coordinates(grid: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """Cell-centre coordinates of a grid, each axis scaled to [0, 1]: (prod(grid), len(grid)),
    row-major (the encoder's cell order)."""
    axes = [(torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n for n in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=-1)


def fourier_features(coords: torch.Tensor, bands: int) -> torch.Tensor:
    """sin/cos of ``coords`` (S, D) at frequencies pi * 2**k, k < bands: (S, 2 * D * bands)."""
    freqs = math.pi * 2.0 ** torch.arange(bands, device=coords.device, dtype=coords.dtype)
    angles = (coords[..., None] * freqs).flatten(-2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over non-PAD targets; ``logits`` (N, T, V), ``targets`` (N, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=PAD_ID)
