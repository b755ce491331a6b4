"""Tests of sparling.models: shapes, gradients, cached decoding, overfitting, presets.

Everything runs at tiny sizes on the CPU; the paper preset is built (parameter count
checked) and run forward once at batch 1.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from sparling.bottlenecks import make_bottleneck
from sparling.models import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    DomainInfo,
    DownstreamConfig,
    DownstreamModel,
    MotifConfig,
    MotifModel,
    SparlingModel,
    Tokenizer,
    build_from_config,
    build_model,
    preset_config,
)
from sparling.models.transformer import sinusoidal_encoding

DIGITS = tuple("0123456789")
# The domains' published shapes; used instead of the real domains so that these tests
# depend on nothing but the models (the audio domain needs recordings to construct).
DOMAINS = {
    "digit-circle": DomainInfo("digit-circle", "image", (100, 100), DIGITS, 10),
    "latex-ocr": DomainInfo(
        "latex-ocr",
        "image",
        (120, 360),
        (*DIGITS, *"xyzabc+", "^{", "_{", "}", "\\left(", "\\right)", "\\frac{", "}{"),
        32,
    ),
    "audio-digits": DomainInfo("audio-digits", "audio", (642, 64), DIGITS, 10),
}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def non_sparse(channels: int) -> nn.Module:
    return make_bottleneck("non-sparse", channels=channels)


def tiny_h_config(dims: int, norm_first: bool = True, dropout: float = 0.0) -> DownstreamConfig:
    return DownstreamConfig(
        d_model=16,
        encoder_layers=1,
        decoder_layers=2,
        heads=2,
        ff=32,
        dropout=dropout,
        row_lstm=dims == 2,
        pool=2,
        norm_first=norm_first,
    )


def tiny_model(kind: str = "image", channels: int = 4, **h_overrides: object) -> SparlingModel:
    shape = (16, 16) if kind == "image" else (24, 6)
    info = DomainInfo("tiny", kind, shape, DIGITS, channels)  # type: ignore[arg-type]
    h = tiny_h_config(info.dims).model_copy(update=h_overrides)
    g = MotifModel(info.in_channels, channels, MotifConfig(width=8, cr=2), info.dims)
    tok = Tokenizer(DIGITS)
    return SparlingModel(
        g, non_sparse(channels), DownstreamModel(channels, len(tok), h, info.dims), tok
    )


# -- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_round_trip() -> None:
    tok = Tokenizer(DOMAINS["latex-ocr"].vocabulary)
    seqs = [
        ["x", "^{", "2", "}"],
        ["\\frac{", "a", "}{", "b", "}", "+", "\\left(", "1", "\\right)"],
        [],
    ]
    ids = tok.encode_batch(seqs)
    assert ids.shape == (3, 11)
    assert (ids[:, 0] == BOS_ID).all()
    assert ids[2].tolist()[:3] == [BOS_ID, EOS_ID, PAD_ID]
    assert tok.decode_batch(ids) == seqs
    assert len(tok) == len(DOMAINS["latex-ocr"].vocabulary) + 3


def test_tokenizer_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match=r"unknown token 'q'.*accepted tokens"):
        Tokenizer(DIGITS).encode(["1", "q"])
    with pytest.raises(ValueError, match="special tokens"):
        Tokenizer(["1", "</s>"])
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(["1", "1"])


# -- shapes and gradients --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["image", "audio"])
@pytest.mark.parametrize("norm_first", [True, False])
def test_shapes(kind: str, norm_first: bool) -> None:
    model = tiny_model(kind, norm_first=norm_first)
    x = torch.rand(3, 16, 16) < 0.3 if kind == "image" else torch.randn(3, 24, 6)
    tokens = [["1", "2"], ["3"], ["4", "5", "6", "7"]]
    motifs = model.motifs(x)
    assert motifs.shape == ((3, 4, 16, 16) if kind == "image" else (3, 4, 24))
    memory = model.encode(x)
    assert memory.shape == ((3, 64, 16) if kind == "image" else (3, 12, 16))
    logits = model(x, tokens)
    assert logits.shape == (3, 5, len(model.tokenizer or []))  # BOS + 4 + EOS, shifted by one
    assert model.loss(x.numpy(), tokens).ndim == 0  # numpy inputs are accepted too
    model.eval()
    decoded = model.decode(x, max_len=5)
    assert len(decoded) == 3 and all(len(d) <= 5 for d in decoded)


def test_image_without_row_lstm_uses_2d_positions() -> None:
    model = tiny_model("image", row_lstm=False)
    assert model.h.row_lstm is None
    assert model(torch.rand(2, 16, 16), [["1"], ["2"]]).shape == (2, 2, 13)


def test_gradient_reaches_g_through_non_sparse_bottleneck() -> None:
    model = tiny_model("image")
    x = torch.rand(2, 16, 16) < 0.3
    model.loss(x, [["1", "2"], ["3"]]).backward()
    for name, p in model.g.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_input_layout_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        tiny_model("image").motifs(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="6 mel bins"):
        tiny_model("audio").motifs(torch.rand(2, 24, 5))


# -- the layers equal PyTorch's (which the authors' code used) ------------------------------------
def _copy_attention(mine: Any, theirs: Any) -> None:
    for name, w, b in zip(
        ("q_proj", "k_proj", "v_proj"),
        theirs.in_proj_weight.chunk(3),
        theirs.in_proj_bias.chunk(3),
        strict=True,
    ):
        getattr(mine, name).weight.copy_(w)
        getattr(mine, name).bias.copy_(b)
    mine.out_proj.load_state_dict(theirs.out_proj.state_dict())


def _copy_layer(mine: Any, theirs: Any, attentions: dict[str, str], norms: int) -> None:
    # Any: these reach into submodules by name, which nn.Module's typing cannot follow.
    with torch.no_grad():
        for mine_name, theirs_name in attentions.items():
            _copy_attention(getattr(mine, mine_name), getattr(theirs, theirs_name))
        mine.ff[0].load_state_dict(theirs.linear1.state_dict())
        mine.ff[3].load_state_dict(theirs.linear2.state_dict())
        for i in range(norms):
            mine.sub.norms[i].load_state_dict(getattr(theirs, f"norm{i + 1}").state_dict())


@pytest.mark.parametrize("norm_first", [True, False])
def test_layers_match_torch_transformer_layers(norm_first: bool) -> None:
    from sparling.models.transformer import DecoderLayer, EncoderLayer

    theirs_enc = nn.TransformerEncoderLayer(
        16, 4, 32, dropout=0.1, batch_first=True, norm_first=norm_first
    ).eval()
    theirs_dec = nn.TransformerDecoderLayer(
        16, 4, 32, dropout=0.1, batch_first=True, norm_first=norm_first
    ).eval()
    enc = EncoderLayer(16, 4, 32, 0.1, norm_first).eval()
    dec = DecoderLayer(16, 4, 32, 0.1, norm_first).eval()
    _copy_layer(enc, theirs_enc, {"self_attn": "self_attn"}, 2)
    _copy_layer(dec, theirs_dec, {"self_attn": "self_attn", "cross_attn": "multihead_attn"}, 3)
    x, memory = torch.randn(3, 7, 16), torch.randn(3, 11, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        torch.testing.assert_close(enc(memory), theirs_enc(memory))
        torch.testing.assert_close(dec(x, memory), theirs_dec(x, memory, tgt_mask=causal))


# -- decoding --------------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity", [None, 4, 7])
@pytest.mark.parametrize("norm_first", [True, False])
def test_cached_steps_match_full_decoder(norm_first: bool, capacity: int | None) -> None:
    # capacity: preallocated self-attention cache (None: grown by concatenation; 4: runs
    # out after 4 of the 7 steps and continues by concatenation)
    h = DownstreamModel(4, 13, tiny_h_config(2, norm_first, dropout=0.1), 2).eval()
    with torch.no_grad():
        memory = h.encode(torch.randn(3, 4, 8, 8))
        ids = torch.randint(3, 13, (3, 7))
        ids[:, 0] = BOS_ID
        full = h.decode_logits(memory, ids)
        cache = h.init_cache(memory, capacity)
        steps = torch.stack([h.step(ids[:, t], t, cache) for t in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(steps, full)


def _eos_bias_for_ragged_ends(h: DownstreamModel, memory: torch.Tensor, max_len: int) -> float:
    """An EOS logit bias under which some rows finish early, at different steps, and some
    run to ``max_len``: the case where batched stopping is easiest to get wrong."""
    for bias in np.linspace(0.0, 4.0, 81):
        with torch.no_grad():
            h.out.bias[EOS_ID] = float(bias)
        out = h.greedy_decode_naive(memory, max_len)
        ends = [row.index(EOS_ID) if EOS_ID in row else max_len for row in out.tolist()]
        if len({e for e in ends if e < max_len}) >= 2 and max(ends) == max_len:
            return float(bias)
    raise AssertionError("no EOS bias gives ragged endings; change the seed")


@pytest.mark.parametrize("norm_first", [True, False])
def test_greedy_cached_equals_naive_with_early_stops(norm_first: bool) -> None:
    h = DownstreamModel(4, 13, tiny_h_config(1, norm_first, dropout=0.1), 1).eval()
    # A random memory (rather than an encoded one) makes rows differ enough, in an
    # untrained decoder, to end at different steps.
    memory = torch.randn(12, 20, 16) * 3
    max_len = 10
    _eos_bias_for_ragged_ends(h, memory, max_len)
    naive = h.greedy_decode_naive(memory, max_len)
    cached = h.greedy_decode(memory, max_len)
    assert torch.equal(cached, naive)
    # After EOS only PAD; BOS/PAD are never generated before it.
    for row in cached.tolist():
        end = row.index(EOS_ID) if EOS_ID in row else len(row)
        assert all(i == PAD_ID for i in row[end + 1 :])
        assert all(i not in (PAD_ID, BOS_ID) for i in row[:end])


def test_greedy_stops_when_all_rows_finished() -> None:
    h = DownstreamModel(4, 13, tiny_h_config(1), 1).eval()
    with torch.no_grad():
        h.out.bias[EOS_ID] = 1e4  # every row ends at once
    out = h.greedy_decode(h.encode(torch.randn(3, 4, 16)), max_len=20)
    assert out.tolist() == [[EOS_ID]] * 3


def test_model_decode_equals_naive() -> None:
    model = tiny_model("image").eval()
    x = torch.rand(5, 16, 16) < 0.3
    memory = model.encode(x)
    assert torch.equal(model.decode_ids(x, 6), model.h.greedy_decode_naive(memory, 6))


# -- learning --------------------------------------------------------------------------------------
def test_tiny_model_overfits_fixed_samples() -> None:
    model = tiny_model("image", channels=6, d_model=32, ff=64)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 16, 16, generator=gen) < 0.3
    tokens = [["3", "1", "4"], ["1", "5"], ["9", "2", "6", "5"], ["3", "5"]]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = model.loss(x, tokens)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])
    model.eval()
    assert model.decode(x, max_len=6) == tokens


# -- configs and presets ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: MotifConfig(cr=3), "cr must be even"),
        (lambda: MotifConfig(width=0), "width"),
        (lambda: DownstreamConfig(d_model=20, heads=8), r"heads \(8\) must divide d_model \(20\)"),
        (lambda: DownstreamConfig(dropout=1.0), "dropout"),
        (lambda: DownstreamConfig(d_model=18, heads=2, row_lstm=False), "multiple of 4"),
        (lambda: DownstreamConfig(d_model=64, norm="pre"), "norm"),  # type: ignore[call-arg]
        (lambda: DownstreamModel(4, 13, DownstreamConfig(row_lstm=True), 1), "row_lstm"),
        (
            lambda: preset_config("digit-circle", "huge", channels=10),
            r"accepted: \('paper', 'fast'\)",
        ),
        (lambda: preset_config("mnist", "fast", channels=10), "accepted"),
        (
            lambda: preset_config("digit-circle", "fast", channels=10, depth=3),
            r"unknown.*'depth'.*d_model",
        ),
        (lambda: preset_config("digit-circle", "fast", channels=10, heads=5), "downstream"),
        (lambda: preset_config("digit-circle", "fast", channels=0), "channels"),
    ],
)
def test_bad_config_values_raise_clear_errors(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]


def test_overrides_reach_the_right_config() -> None:
    cfg = preset_config("digit-circle", "fast", channels=12, d_model=64, cr=4, width=16)
    assert (cfg.channels, cfg.downstream.d_model, cfg.motif.cr, cfg.motif.width) == (12, 64, 4, 16)
    assert cfg.downstream.norm_first  # the rest of the preset is kept


@pytest.mark.parametrize("domain", sorted(DOMAINS))
@pytest.mark.parametrize("preset", ["paper", "fast"])
def test_presets_build(domain: str, preset: str) -> None:
    info = DOMAINS[domain]
    cfg = preset_config(domain, preset, channels=info.paper_channels)
    model = build_from_config(cfg, info, non_sparse(cfg.channels))
    assert model.g.dims == info.dims
    assert (
        model.g.context_radius == {"digit-circle": 8, "latex-ocr": 32, "audio-digits": 16}[domain]
    )
    # the paper's h reads rows with an LSTM; the fast one uses Fourier coordinates instead
    assert (model.h.row_lstm is not None) == (info.kind == "image" and preset == "paper")
    assert (model.h.position_proj is not None) == (preset == "fast")
    if preset == "paper":
        assert (cfg.downstream.d_model, cfg.downstream.ff, cfg.downstream.norm_first) == (
            512,
            2048,
            False,
        )
        if domain == "digit-circle":
            # The paper reports about 46 M parameters for this setting.
            assert sum(p.numel() for p in model.parameters()) == pytest.approx(46.0e6, rel=0.01)
    else:
        assert cfg.downstream.norm_first


def test_paper_digit_circle_forward_batch_one() -> None:
    info = DOMAINS["digit-circle"]
    model = build_from_config(
        preset_config("digit-circle", "paper", channels=10), info, non_sparse(10)
    )
    with torch.no_grad():  # about 1.5 s on one loaded CPU thread
        logits = model(torch.rand(1, 100, 100) < 0.2, [["1", "2", "3"]])
    assert logits.shape == (1, 4, 13)


@pytest.mark.parametrize("bottleneck", ["non-sparse", "sparling"])
def test_build_model_with_registered_domain_and_bottleneck(bottleneck: str) -> None:
    model = build_model("digit-circle", "fast", bottleneck, cr=2, d_model=32, heads=2, ff=32)
    assert model.tokenizer is not None and model.tokenizer.vocabulary == list(DIGITS)
    x = torch.rand(2, 100, 100) < 0.1
    assert model(x, [["1"], ["2", "3"]]).shape == (2, 3, 13)
    model.eval()
    assert model.motifs(x).shape == (2, 10, 100, 100)


def test_sinusoidal_encoding_matches_formula() -> None:
    pe = sinusoidal_encoding(torch.arange(5), 6)
    i = torch.arange(3, dtype=torch.float32)
    expected_sin = torch.sin(3.0 / 10000 ** (2 * i / 6))
    torch.testing.assert_close(pe[3, 0::2], expected_sin)
    torch.testing.assert_close(pe[0, 1::2], torch.ones(3))


def test_paper_digit_circle_trains_a_few_steps_on_cpu() -> None:
    """The published model (46 M parameters) takes real optimiser steps on the CPU: the
    loss is finite, g and h both move, and the (dropout-free) loss on the batch falls."""
    info = DOMAINS["digit-circle"]
    torch.manual_seed(0)
    model = build_from_config(
        preset_config("digit-circle", "paper", channels=10), info, non_sparse(10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(1, 100, 100) < 0.2
    tokens = [["1", "2", "3"]]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model.loss(x, tokens))

    start = eval_loss()
    model.train()
    for _ in range(2):  # a few seconds a step on one CPU thread
        loss = model.loss(x, tokens)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert eval_loss() < start
    moved = {n.split(".")[0] for n, p in model.named_parameters() if not p.equal(before[n])}
    assert {"g", "h"} <= moved


def test_fourier_features_are_sin_cos_octaves() -> None:
    from sparling.models.downstream import fourier_coordinates, fourier_features

    coords = fourier_coordinates((2, 4))
    assert coords.shape == (8, 2)
    torch.testing.assert_close(coords[1], torch.tensor([0.25, 0.375]))  # row 0, column 1
    feats = fourier_features(coords, bands=3)
    assert feats.shape == (8, 12)
    angle = math.pi * 4 * 0.375  # column coordinate, third octave
    torch.testing.assert_close(feats[1, 5], torch.tensor(math.sin(angle)))
    torch.testing.assert_close(feats[1, 11], torch.tensor(math.cos(angle)))


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_fourier_position_tells_cells_apart(kind: str) -> None:
    model = tiny_model(kind, row_lstm=False, position="fourier", fourier_bands=4).eval()
    motifs = torch.zeros(1, 4, 16, 16) if kind == "image" else torch.zeros(1, 4, 24)
    memory = model.h.encode(motifs)
    # identical (empty) content everywhere: only the position encoding separates the cells
    assert memory.shape[1] == (64 if kind == "image" else 12)
    assert torch.cdist(memory[0], memory[0]).fill_diagonal_(1.0).min() > 1e-3


def test_pool_first_reembeds_the_pooled_cells() -> None:
    model = tiny_model("image", pool_first=True).eval()
    motifs = torch.rand(2, 4, 16, 16)
    h = model.h
    pooled = torch.nn.functional.max_pool2d(motifs, 2)
    expected = h.reembed(pooled)
    seen: list[torch.Tensor] = []
    handle = h.reembed.register_forward_hook(lambda _m, _i, out: seen.append(out))
    h.encode(motifs)
    handle.remove()
    torch.testing.assert_close(seen[0], expected)
    assert seen[0].shape == (2, h.config.d_model, 8, 8)


def test_salience_weighs_attention_by_activation() -> None:
    h = DownstreamModel(
        4, 13, tiny_h_config(2).model_copy(update={"salience": True, "pool_first": True}), 2
    ).eval()
    motifs = torch.zeros(2, 4, 8, 8)
    motifs[0, 1, 0, 0] = 1.0  # one activation, in cell (0, 0) of the 4x4 pooled grid
    motifs[1, 2, 7, 7] = 3.0  # cell (3, 3)
    memory, bias = h.encode_with_bias(motifs)
    assert bias is not None and bias.shape == (2, 1, 1, 16)
    weights = torch.softmax(bias[:, 0, 0], dim=-1)
    assert weights[0, 0] > 0.98 and weights[1, 15] > 0.99  # attention starts on the activation
    # teacher-forced and cached decoding agree with the bias in both
    ids = torch.randint(3, 13, (2, 5))
    ids[:, 0] = BOS_ID
    with torch.no_grad():
        full = h.decode_logits(memory, ids, bias)
        cache = h.init_cache(memory, 5, bias)
        steps = torch.stack([h.step(ids[:, t], t, cache) for t in range(5)], dim=1)
        assert not torch.allclose(full, h.decode_logits(memory, ids))  # the bias matters
    torch.testing.assert_close(steps, full)
    assert torch.equal(h.greedy_decode(memory, 6, bias), h.greedy_decode_naive(memory, 6, bias))


def test_model_with_salience_decodes_as_its_naive_reference() -> None:
    model = tiny_model("image", salience=True).eval()
    x = torch.rand(5, 16, 16) < 0.3
    memory, bias = model.h.encode_with_bias(model.motifs(x))
    assert torch.equal(model.decode_ids(x, 6), model.h.greedy_decode_naive(memory, 6, bias))
    # no activation anywhere: every cell weighs the same, nothing is undefined
    empty = model.h(torch.zeros(2, 4, 16, 16), torch.full((2, 3), BOS_ID))
    assert torch.isfinite(empty).all()


def _h(dims: int, **update: Any) -> DownstreamModel:
    base = tiny_h_config(dims).model_dump()
    config = DownstreamConfig(**{**base, "row_lstm": False, **update})  # validated
    return DownstreamModel(4, 13, config, dims).eval()


def test_logsum_pooling_counts_the_activations_of_a_cell() -> None:
    motifs = torch.zeros(1, 4, 8, 8)
    motifs[0, 1, 0, 0] = 1.0  # cell (0, 0): one activation
    motifs[0, 1, 6:8, 6] = 1.0  # cell (3, 3): two of the same strength
    weights = {}
    for reduce in ("max", "logsum", "max+logsum"):
        h = _h(2, salience=True, pool_first=True, pool_reduce=reduce)
        _, bias = h.encode_with_bias(motifs)
        assert bias is not None
        weights[reduce] = torch.softmax(bias[0, 0, 0], dim=-1)
    torch.testing.assert_close(weights["max"][0], weights["max"][15])  # max: the same
    for reduce in ("logsum", "max+logsum"):
        torch.testing.assert_close(weights[reduce][15], 2 * weights[reduce][0], rtol=1e-2, atol=0)
    assert _h(2, pool_first=True, pool_reduce="max+logsum").reembed.in_channels == 8
    with pytest.raises(ValueError, match="pool_reduce='logsum' needs pool_first=true"):
        DownstreamConfig(pool_reduce="logsum", pool_first=False)


def test_tokens_are_the_strongest_activations_each_with_its_own_position() -> None:
    h = _h(2, position="fourier", tokens=3, salience=True)
    motifs = torch.zeros(2, 4, 8, 8)
    motifs[:, 0, 0, 0] = 2.0
    motifs[:, 2, 0, 1] = 1.0  # the same cell as the first, another channel: its own token
    motifs[:, 3, 5, 5] = 0.5
    motifs[:, 1, 7, 7] = 0.1  # the fourth strongest: left out with tokens=3
    motifs[1, 3, 5, 5], motifs[1, 3, 4, 4] = 0.0, 0.5  # image 1: moved inside its cell
    memory, bias = h.encode_with_bias(motifs)
    assert memory.shape == (2, 3, 16) and bias is not None and bias.shape == (2, 1, 1, 3)
    torch.testing.assert_close(bias[0, 0, 0], torch.log(torch.tensor([2.0, 1.0, 0.5]) + 1e-3))
    tokens, _ = h._tokens(motifs)  # before the encoder mixes them
    assert not torch.allclose(tokens[0, 2], tokens[1, 2])  # the exact position is kept
    torch.testing.assert_close(tokens[0, :2], tokens[1, :2])
    less = motifs.clone()
    less[:, 1] = 0.0  # the activation that was left out changes nothing
    torch.testing.assert_close(h.encode(less), memory)
    # the values carry gradient back to g
    motifs.requires_grad_(True)
    h.train()
    h(motifs, torch.full((2, 3), BOS_ID)).sum().backward()
    assert motifs.grad is not None and motifs.grad[0, 0, 0, 0] != 0
    assert motifs.grad[0, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="tokens=8 needs position='fourier' and row_lstm=false"):
        DownstreamConfig(tokens=8, position="sinusoid", row_lstm=False)
    with pytest.raises(ValueError, match="does not apply with tokens=8"):
        DownstreamConfig(
            tokens=8, position="fourier", row_lstm=False, pool_first=True, pool_reduce="logsum"
        )


def test_tokens_without_strength_see_only_channel_and_position() -> None:
    """``token_strength=False``: a token is its channel at its position. Scaling the maps
    (same ranking, other magnitudes) leaves the tokens unchanged; with strength it does
    not, and the salience bias still follows the values."""
    motifs = torch.zeros(2, 4, 8, 8)
    motifs[:, 0, 0, 0], motifs[:, 3, 5, 5], motifs[:, 1, 7, 2] = 2.0, 0.5, 0.25
    louder = motifs * torch.tensor([3.0, 0.2])[:, None, None, None]
    without = _h(2, position="fourier", tokens=3, salience=True, token_strength=False)
    assert without.value_proj is None
    plain, bias = without._tokens(motifs)
    scaled, scaled_bias = without._tokens(louder)
    torch.testing.assert_close(plain, scaled)
    assert bias is not None and scaled_bias is not None
    assert not torch.allclose(bias, scaled_bias)
    with_strength = _h(2, position="fourier", tokens=3, salience=True)
    assert not torch.allclose(with_strength._tokens(motifs)[0], with_strength._tokens(louder)[0])
    # g still gets gradient through the salience bias
    motifs.requires_grad_(True)
    without.train()
    without(motifs, torch.full((2, 3), BOS_ID)).sum().backward()
    assert motifs.grad is not None and motifs.grad[0, 0, 0, 0] != 0


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_token_model_decodes_as_its_naive_reference(kind: str) -> None:
    model = tiny_model(kind, position="fourier", row_lstm=False, tokens=5, salience=True).eval()
    x = torch.rand(4, 16, 16) < 0.3 if kind == "image" else torch.randn(4, 24, 6)
    memory, bias = model.h.encode_with_bias(model.motifs(x))
    assert memory.shape[1] == 5
    assert torch.equal(model.decode_ids(x, 6), model.h.greedy_decode_naive(memory, 6, bias))
