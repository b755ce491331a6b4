"""The composed model ``h(bottleneck(g(x)))``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .downstream import DownstreamModel, sequence_loss
from .motif import MotifModel
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from ..config import RunConfig

#: ids (N, T) as ``Tokenizer.encode_batch`` makes them, or token-string lists
TokenBatch = torch.Tensor | Sequence[Sequence[str]]


class SparlingModel(nn.Module):
    """``g`` (local motif model), a bottleneck (the sparsity layer or a baseline), ``h``.

    Inputs are batches as the domains produce them: images (N, H, W) of any numeric or
    bool dtype (used as given, e.g. 0/1), audio (N, frames, mels) float; tensors or
    numpy arrays, moved to the model's device. Token batches are token-string lists or
    ``Tokenizer.encode_batch`` ids: ``BOS y_1 ... y_k EOS PAD ...``.

    The bottleneck updates its state (thresholds, batch-norm statistics) in training
    mode, so call ``eval()`` before :meth:`motifs` or :meth:`decode` on held-out data.
    """

    def __init__(
        self,
        g: MotifModel,
        bottleneck: nn.Module,
        h: DownstreamModel,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        super().__init__()
        if g.dims != h.dims:
            raise ValueError(f"g is {g.dims}-D but h is {h.dims}-D")
        if tokenizer is not None and len(tokenizer) != h.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} ids but h predicts {h.vocab_size}")
        self.g = g
        self.bottleneck = bottleneck
        self.h = h
        self.tokenizer = tokenizer
        #: the run config that built this model, when it was loaded from an export
        self.run_config: RunConfig | None = None
        #: an exported model's file metadata (density, samples, run id); else empty
        self.export_metadata: dict[str, str] = {}

    # -- inputs --------------------------------------------------------------------------
    def prepare_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Domain batch -> ``g``'s layout, (N, 1, H, W) or (N, mels, frames), in ``g``'s
        dtype and on its device."""
        x = torch.as_tensor(x)
        in_channels = self.g.conv_in.in_channels
        if x.ndim != 3:
            layout = "(N, H, W)" if self.g.dims == 2 else "(N, frames, mels)"
            raise ValueError(f"expected a batch {layout}, got shape {tuple(x.shape)}")
        weight = self.g.conv_in.weight
        x = x.to(device=weight.device, dtype=weight.dtype)
        if self.g.dims == 2:
            return x.unsqueeze(1)
        if x.shape[2] != in_channels:
            raise ValueError(
                f"expected {in_channels} mel bins in x (N, frames, mels), got {x.shape[2]}"
            )
        # Mel bins are the input channels of the 1-D convolutions, frames the axis.
        return x.transpose(1, 2)

    # -- parts ---------------------------------------------------------------------------
    def motifs(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Post-bottleneck activations (N, C, H, W) or (N, C, frames): what the metrics read."""
        # float32 into the bottleneck even under autocast: its quantiles and penalties
        # need the precision (a no-op without autocast).
        out: torch.Tensor = self.bottleneck(self.g(self.prepare_input(x)).float())
        return out

    @torch.no_grad()
    def recalibrate_batch_norm(self, batches: Iterable[torch.Tensor | np.ndarray]) -> None:
        """Replace the batch-norm running statistics (g's, then the bottleneck's) by their
        average over ``batches`` (domain batches, as :meth:`motifs` takes them) under the
        current weights.

        Training keeps the statistics as exponential averages (momentum 0.1) over batches
        seen under earlier weights. Where the weights move fast and batches differ a lot
        (spoken digits at lr 1e-3: clips differ in level), those averages can sit far from
        what the current g produces, and the eval-mode model is then much worse than the
        one being trained: the sparsity layer, normalising with stale statistics, passes
        several times its density. Re-estimating them over a few hundred samples before
        evaluating removes the gap ("precise BN").

        g's batch norms are averaged by ``torch.optim.swa_utils.update_bn`` (statistics
        reset, cumulative average over the batches in training mode, momenta and mode
        restored). The bottleneck's batch norms (:class:`~sparling.sparsity.ChannelBatchNorm`,
        which normalise g's output) then get the mean of the batches' per-channel means
        and unbiased variances of g's eval-mode output. The sparsity layer's thresholds
        are left as training set them."""
        from ..sparsity import ChannelBatchNorm

        inputs = [self.prepare_input(x) for x in batches]
        if not inputs:
            return
        torch.optim.swa_utils.update_bn(inputs, self.g)
        norms = [m for m in self.bottleneck.modules() if isinstance(m, ChannelBatchNorm)]
        if not norms:
            return
        was_training = self.g.training
        self.g.eval()
        means, variances = [], []
        for x in inputs:
            z = self.g(x).float()
            dims = [0, *range(2, z.dim())]
            means.append(z.mean(dims))
            variances.append(z.var(dims))
        self.g.train(was_training)
        mean, var = torch.stack(means).mean(0), torch.stack(variances).mean(0)
        for bn in norms:
            bn.set_running(mean, var)

    def encode(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The decoder's memory (N, S, d_model)."""
        return self.h.encode(self.motifs(x))

    # -- training ------------------------------------------------------------------------
    def token_ids(self, tokens: TokenBatch) -> torch.Tensor:
        """Token batch -> (N, T) ids on the model's device (strings need the tokenizer)."""
        if not isinstance(tokens, torch.Tensor):
            if self.tokenizer is None:
                raise ValueError(
                    "token strings need a tokenizer; pass ids or build with build_model()"
                )
            tokens = self.tokenizer.encode_batch(tokens)
        if tokens.ndim != 2 or tokens.shape[1] < 2:
            raise ValueError(
                f"expected ids (N, T >= 2) starting with BOS, got {tuple(tokens.shape)}"
            )
        return tokens.to(self.h.out.weight.device)

    def forward(self, x: torch.Tensor | np.ndarray, tokens: TokenBatch) -> torch.Tensor:
        """Teacher-forced logits (N, T-1, vocab): row t predicts ``ids[:, t+1]``.

        ``tokens`` is a (N, T) id tensor ``BOS y_1 ... y_k EOS PAD ...`` or a list of
        token-string lists (encoded with the tokenizer).
        """
        ids = self.token_ids(tokens)
        return self.h(self.motifs(x), ids[:, :-1])

    def loss(self, x: torch.Tensor | np.ndarray, tokens: TokenBatch) -> torch.Tensor:
        """Mean cross-entropy over the non-PAD targets (EOS included).

        The bottleneck's own ``penalty()`` (L1/KL baselines) is not included: the
        trainer adds it, so that it is counted once.
        """
        ids = self.token_ids(tokens)
        logits = self.h(self.motifs(x), ids[:, :-1])
        return sequence_loss(logits, ids[:, 1:])

    # -- testing -------------------------------------------------------------------------
    @torch.no_grad()
    def decode_ids(self, x: torch.Tensor | np.ndarray, max_len: int = 32) -> torch.Tensor:
        """Greedy decoding: (N, T <= max_len) ids, EOS included where emitted, PAD after it."""
        memory, bias = self.h.encode_with_bias(self.motifs(x))
        return self.h.greedy_decode(memory, max_len, bias)

    def decode(self, x: torch.Tensor | np.ndarray, max_len: int = 32) -> list[list[str]]:
        """Greedy decoding to token strings (up to EOS); needs the tokenizer."""
        if self.tokenizer is None:
            raise ValueError("decode needs a tokenizer; use decode_ids or build with build_model()")
        return self.tokenizer.decode_batch(self.decode_ids(x, max_len))
