"""DigitCircle: 3-6 distinct digit stamps around a circle in a noisy 100x100 binary image.

The definition follows the authors' generator (``pixel_art/domain/stamp_circle.py`` in
``kavigupta/sparling-repro``, run with ``size=100, min_radius=20, random_shift=3,
max_syms=6, pre_noise=0.5, post_noise=0.05``); every choice below is theirs unless marked
*project choice*:

1. ``n`` digits, uniform on ``min_digits..max_digits`` (theirs: ``randint(3, max_syms+1)``),
   an ordered random subset of the 10 stamps without replacement (distinct digits).
2. Padding ``pad = max_shift + largest side of any stamp`` (3 + 12 = 15). Radius uniform
   on the integers ``min_radius .. size//2 - pad - 1`` (upper bound exclusive: 20..34);
   each centre coordinate uniform on ``radius + pad .. size - radius - pad - 1``. So every
   stamp centre is at least ``max side`` pixels from the border and stamps never clip.
3. Angles: draw ``n`` uniforms, normalise them to sum to 1 (gaps, in turns), redraw all
   until every gap is at least ``1/(2n)``; the angles are the cumulative sums plus one
   uniform offset, times 2 pi. Digits are therefore listed in circle order.
4. Stamp ``i``'s centre is ``round(centre + radius * (cos a_i, sin a_i))`` (axis 0 = rows,
   numpy's round-half-even) plus an integer shift uniform on ``-max_shift..max_shift``
   drawn independently per axis; its box starts at ``centre - shape // 2``.
5. Image: all pixels start blank; *pre-noise* sets each to ink with probability
   ``pre_noise * ink`` where ``ink`` is the mean over the 10 stamps of each stamp's ink
   fraction (0.5 * 0.2504 = 0.1252 for the paper's stamps). Stamps are then *assigned*
   (not OR-ed) into their boxes, so a box holds exactly its stamp (blank border
   included) and wipes the pre-noise under it; where two boxes overlap (possible with 6
   digits on a small circle) the later digit in circle order wins. Then *post-noise*
   flips every pixel independently with probability ``post_noise``.
6. Tokens: the digits in circle order rotated so that the smallest comes first. Motifs:
   one per digit, in the same (rotated) order as the tokens, with the stamp's box.

*Project choices* (the first three change no distribution beyond float rounding):

- Randomness comes from ``Domain.rng(seed, index)`` (numpy's PCG64), not the authors'
  ``RandomState``: samples differ from theirs but follow the same distribution. The
  geometry is drawn before the noise (the authors draw the pre-noise field first).
- The integer choices (digit count, radius, centre, shifts) are ``low + floor(u * count)``
  from one vector of uniforms (numpy's per-call overhead dominates at this size); the
  angle gaps are drawn as blocks of candidates, keeping the first acceptable one.
- :meth:`DigitCircle.sample` draws both noises from one float32 uniform per pixel:
  outside the boxes a pixel is ink iff ``u < p_pre (1-p_post) + (1-p_pre) p_post`` (pre-
  then post-noise composed), inside a box it is ``stamp XOR (u < p_post)``. Each pixel
  uses one uniform, so this is the two-step definition's distribution (probabilities
  quantised to 2**-24). :func:`reference_sample` is a literal two-step implementation
  (same geometry draws, separate pre- and post-noise fields) used by the tests and the
  benchmark to check that.
- ``min_digits`` is a parameter (the authors hard-code 3).
- The default stamps are the project's DejaVu Sans Mono set (:mod:`.stamps`), not the
  authors' FreeMono pickle; their mean ink fraction is 0.256 instead of 0.250, so the
  pre-noise probability is 0.128 instead of 0.125. ``stamps=`` loads any other set, e.g.
  the paper's.

With the paper's stamps, about 3% of images have two overlapping boxes and in about 1.5%
an earlier stamp is partly overwritten (0.4% have two stamps' ink on one pixel); the
motif boxes are still the full stamp boxes, as in the authors' metadata.

``expected_motifs`` is the exact mean ``(min_digits + max_digits) / 2`` = 4.5. The
paper's stopping density 4.492e-05 is the authors' Monte-Carlo estimate of the same
thing: ``load_sparsity_bars`` in ``pixel_art/analysis/main_experiment.py`` averages
``len(tokens) / x.size / 10`` over the 1,000 noise-free samples drawn with
``RandomState(0..999)``, whose mean digit count happens to be 4.492; it was hard-coded as
``done_at_density = 4.492e-05`` in ``pixel_art/experiments/experiment.py``. Both give the
same reported density 0.5 * 0.75**32 = 5.022621e-05.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import numpy as np
from pydantic import Field, field_validator, model_validator

from . import register
from .base import Domain, DomainError, DomainParams, Motif, Sample, Split, stream_seed
from .stamps import DIGITS, ink_fraction, load_stamps, max_extent

if TYPE_CHECKING:
    from ..metrics import Assignment


@dataclass(frozen=True)
class Layout:
    """Where the digits of one sample went (placement order = circle order, unrotated).

    Exposed so tests can check the geometry against the definition.
    """

    #: indices into the digit list ("0".."9"), in placement order
    digits: tuple[int, ...]
    radius: int
    #: circle centre (row, col)
    center: tuple[int, int]
    #: angle of each digit in turns (cumulative gaps plus the offset; not reduced mod 1)
    turns: tuple[float, ...]
    #: per-digit (row, col) shift added after rounding the point on the circle
    shifts: tuple[tuple[int, int], ...]
    #: per-digit box (row slice, col slice)
    boxes: tuple[tuple[slice, slice], ...]


@register
class DigitCircle(Domain):
    """The paper's DigitCircle domain (see the module docstring for the exact definition)."""

    name: ClassVar[str] = "digit-circle"
    kind: ClassVar[Literal["image", "audio"]] = "image"
    storage: ClassVar[Literal["bits", "float32"]] = "bits"
    #: Bump when samples change for the same params, including a re-rendered default
    #: stamp set (assets/digit_stamps.npz is not hashed into the spec).
    version: ClassVar[int] = 1
    #: the paper's g context radius for DigitCircle
    context_radius: ClassVar[int | None] = 8
    #: as many channels as digits: CE maps them one-to-one
    assignment: ClassVar[Assignment] = "hungarian"

    class Params(DomainParams):
        """Parameters of DigitCircle; the defaults are the paper's setting."""

        size: int = Field(100, ge=8, description="Side of the square image, in pixels.")
        min_digits: int = Field(
            3, ge=1, le=len(DIGITS), description="Fewest digits per image (inclusive)."
        )
        max_digits: int = Field(
            6,
            ge=1,
            le=len(DIGITS),
            description="Most digits per image (inclusive); digits are distinct, so at most 10.",
        )
        max_shift: int = Field(
            3,
            ge=0,
            description="Each stamp is moved off the circle by an integer shift uniform on "
            "[-max_shift, max_shift], independently per axis.",
        )
        pre_noise: float = Field(
            0.5,
            ge=0.0,
            description="Before stamping, each pixel becomes ink with probability "
            "pre_noise x (mean ink fraction of the stamps).",
        )
        post_noise: float = Field(
            0.05,
            ge=0.0,
            le=1.0,
            description="After stamping, every pixel is flipped with this probability.",
        )
        min_radius: int = Field(
            20, ge=0, description="Smallest circle radius; the largest is size//2 - padding - 1."
        )
        stamps: str | None = Field(
            None,
            description="None: the project's stamps (DejaVu Sans Mono, "
            "sparling/domains/assets/digit_stamps.npz); otherwise the path of an .npz of "
            '2-D boolean arrays keyed "0".."9" (relative paths: to the working directory).',
        )

        @field_validator("stamps", mode="before")
        @classmethod
        def _path_to_str(cls, v: object) -> object:
            # Accept pathlib paths; the spec keeps a plain string either way.
            return str(v) if isinstance(v, PurePath) else v

        @model_validator(mode="after")
        def _check(self) -> Self:
            if self.min_digits > self.max_digits:
                raise DomainError(
                    f"min_digits ({self.min_digits}) must not exceed max_digits ({self.max_digits})"
                )
            return self

    params: Params

    def __init__(self, split: Split = "train", **params: object) -> None:
        super().__init__(split=split, **params)
        p = self.params
        stamps = load_stamps(p.stamps)
        source = "the default stamps" if p.stamps is None else f"stamps file {p.stamps!r}"
        ink = ink_fraction(stamps)
        if p.pre_noise * ink > 1.0:
            raise DomainError(
                f"pre_noise={p.pre_noise} times the ink fraction {ink:.4f} of {source} "
                "exceeds 1: it must be a probability"
            )
        pad = p.max_shift + max_extent(stamps)
        radius_stop = p.size // 2 - pad  # exclusive, as in the authors' randint
        if radius_stop <= p.min_radius:
            raise DomainError(
                f"the circle does not fit: size={p.size} allows radii below "
                f"size//2 - (max_shift + largest stamp side) = {p.size // 2} - {pad} = "
                f"{radius_stop}, but min_radius={p.min_radius} (with {source})"
            )
        self._stamps: list[np.ndarray] = [stamps[d] for d in DIGITS]
        self._stamp_shapes: list[tuple[int, int]] = [
            (int(a.shape[0]), int(a.shape[1])) for a in self._stamps
        ]
        self._pad = pad
        self._radius_stop = radius_stop
        self.ink_fraction = ink
        self.p_pre = p.pre_noise * ink
        self.p_post = p.post_noise
        # Pre-noise then post-noise on a pixel no stamp covers: ink iff exactly one fired.
        self.p_background = self.p_pre * (1 - self.p_post) + (1 - self.p_pre) * self.p_post

    def spec(self) -> dict[str, Any]:
        """The base spec, with a ``stamps=`` path replaced by a digest of the stamps' bits.

        The path differs between machines (and a relative one between working folders),
        and a file edited in place keeps its path: the content is what names the data.
        """
        spec = super().spec()
        if self.params.stamps is not None:
            digest = hashlib.sha256()
            for stamp in self._stamps:
                digest.update(repr(stamp.shape).encode())
                digest.update(np.packbits(stamp.astype(bool)).tobytes())
            spec["params"]["stamps"] = f"sha256:{digest.hexdigest()[:16]}"
        return spec

    # -- descriptive properties --------------------------------------------------------
    @property
    def vocabulary(self) -> list[str]:
        return list(DIGITS)

    @property
    def motif_symbols(self) -> list[str]:
        return list(DIGITS)

    @property
    def paper_channels(self) -> int:
        return 10

    @property
    def max_tokens(self) -> int:
        return self.params.max_digits

    @property
    def expected_motifs(self) -> float:
        # Exact mean of the uniform digit count (the paper's 4.492 is a 1,000-sample estimate).
        return (self.params.min_digits + self.params.max_digits) / 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.params.size, self.params.size)

    @property
    def stamps(self) -> dict[str, np.ndarray]:
        """The stamp set in use (copies), keyed "0".."9"."""
        return {d: a.copy() for d, a in zip(DIGITS, self._stamps)}

    # -- sampling --------------------------------------------------------------------------
    def layout(self, rng: np.random.Generator) -> Layout:
        """Draw the geometry of one sample. Consumes ``rng`` exactly as
        :func:`reference_sample` does, so both place the same digits in the same boxes.

        All the integer choices (digit count, radius, centre, shifts) come from one
        vector of uniforms, ``lo + floor(u * count)`` each: one numpy call instead of
        four, whose per-call overhead dominates at this size. (Each value's probability
        is off from ``1/count`` by under 2**-52; ``u * count`` never rounds up to
        ``count`` because ``u <= 1 - 2**-53``.) With at most 10 digits, the per-digit
        geometry is cheaper in scalar Python than in numpy on tiny arrays.
        """
        p = self.params
        pad, shift = self._pad, p.max_shift
        u: list[float] = rng.random(4 + 2 * p.max_digits).tolist()
        n = p.min_digits + int(u[0] * (p.max_digits - p.min_digits + 1))
        radius = p.min_radius + int(u[1] * (self._radius_stop - p.min_radius))
        low, count = radius + pad, p.size - 2 * (radius + pad)  # centre in [low, low + count)
        cy, cx = low + int(u[2] * count), low + int(u[3] * count)
        digits: list[int] = rng.permutation(len(self._stamps))[:n].tolist()
        turns = _sample_turns(rng, n)
        boxes = []
        shifts = []
        for i, k in enumerate(digits):
            dy = int(u[4 + 2 * i] * (2 * shift + 1)) - shift
            dx = int(u[5 + 2 * i] * (2 * shift + 1)) - shift
            angle = turns[i] * _TWO_PI
            h, w = self._stamp_shapes[k]
            # round() is round-half-even, like the authors' np.round.
            top = round(cy + radius * math.cos(angle)) + dy - h // 2
            left = round(cx + radius * math.sin(angle)) + dx - w // 2
            boxes.append((slice(top, top + h), slice(left, left + w)))
            shifts.append((dy, dx))
        return Layout(
            digits=tuple(digits),
            radius=radius,
            center=(cy, cx),
            turns=tuple(turns),
            shifts=tuple(shifts),
            boxes=tuple(boxes),
        )

    def rng(self, seed: int, index: int) -> np.random.Generator:
        """The same stream as :meth:`Domain.rng` (``default_rng`` of the same seed
        sequence is ``Generator(PCG64(...))``), built without ``default_rng``'s wrapper,
        which costs a third of the construction time."""
        return np.random.Generator(np.random.PCG64(stream_seed(seed, self.split, index)))

    def sample(self, seed: int, index: int) -> Sample:
        return self.sample_with_layout(seed, index)[0]

    def sample_with_layout(self, seed: int, index: int) -> tuple[Sample, Layout]:
        """:meth:`sample` plus the geometry it used."""
        rng = self.rng(seed, index)
        lay = self.layout(rng)
        # One uniform per pixel serves both noises (see the module docstring); float32
        # halves the cost of the dominant draw.
        u = rng.random(self.input_shape, dtype=np.float32)
        x = u < self.p_background
        p_post = self.p_post
        for k, box in zip(lay.digits, lay.boxes):
            x[box] = self._stamps[k] ^ (u[box] < p_post)
        return _assemble(x, lay), lay


_TWO_PI = 2 * math.pi

#: Candidate gap vectors drawn per round of the angle rejection sampler (see below).
TURN_CANDIDATES = 32


def _sample_turns(rng: np.random.Generator, n: int) -> list[float]:
    """Angles in turns: normalised uniform gaps, each at least 1/(2n), then a random offset.

    The definition redraws the gaps until they are acceptable (probability ~0.45 for
    n=3 down to ~0.14 for n=6). Candidates are drawn TURN_CANDIDATES at a time and the
    first acceptable one is kept: the first success of an i.i.d. sequence has the same
    distribution whether it is examined one by one or in blocks, and this avoids ~7
    numpy round trips per sample. ``min >= sum / (2n)`` is the gap test without dividing.
    """
    while True:
        cand = rng.random((TURN_CANDIDATES, n))
        ok = cand.min(axis=1) * (2 * n) >= cand.sum(axis=1)
        first = int(ok.argmax())
        if ok[first]:
            gaps = cand[first]
            turns: list[float] = (np.cumsum(gaps / gaps.sum()) + rng.random()).tolist()
            return turns


def _assemble(x: np.ndarray, lay: Layout) -> Sample:
    """Tokens and motifs in circle order, rotated so that the smallest digit comes first."""
    symbols = [DIGITS[k] for k in lay.digits]
    first = symbols.index(min(symbols))
    order = list(range(first, len(symbols))) + list(range(first))
    return Sample(
        x=x,
        tokens=[symbols[i] for i in order],
        motifs=[Motif(symbols[i], lay.boxes[i]) for i in order],
    )


def reference_sample(domain: DigitCircle, seed: int, index: int) -> tuple[Sample, Layout]:
    """A literal, unoptimised implementation of the definition, for tests and benchmarks.

    It consumes the random stream in the same order as :meth:`DigitCircle.layout` (so the
    layout, tokens and motifs are identical for the same ``(seed, index)``), but computes
    the geometry per digit with scalar maths and then draws the noise as the definition
    reads: a full pre-noise field, stamps assigned on top, a full post-noise field XOR-ed
    on. The images therefore differ from :meth:`DigitCircle.sample` pixel by pixel but
    must agree in distribution.
    """
    p = domain.params
    stamps = domain.stamps
    pad = p.max_shift + max(max(a.shape) for a in stamps.values())
    rng = domain.rng(seed, index)

    def uniform_int(u: float, low: int, high: int) -> int:
        """The integer ``floor(low + u * (high - low))``, uniform on ``low..high-1``."""
        return low + math.floor(u * (high - low))

    u = rng.random(4 + 2 * p.max_digits)
    n = uniform_int(u[0], p.min_digits, p.max_digits + 1)
    radius = uniform_int(u[1], p.min_radius, p.size // 2 - pad)
    cy = uniform_int(u[2], radius + pad, p.size - radius - pad)
    cx = uniform_int(u[3], radius + pad, p.size - radius - pad)
    shifts = [
        (
            uniform_int(u[4 + 2 * i], -p.max_shift, p.max_shift + 1),
            uniform_int(u[5 + 2 * i], -p.max_shift, p.max_shift + 1),
        )
        for i in range(n)
    ]
    chosen = [DIGITS[int(k)] for k in rng.permutation(len(DIGITS))[:n]]
    # Candidate gap vectors come in blocks of TURN_CANDIDATES rows (the sampling order
    # the fast path uses); the first acceptable row, read one at a time, is used.
    gaps = None
    while gaps is None:
        for row in rng.random((TURN_CANDIDATES, n)):
            if all(g >= 1 / (2 * n) for g in row / row.sum()):
                gaps = row / row.sum()
                break
    offset = rng.random()

    boxes = []
    turns = []
    for i, symbol in enumerate(chosen):
        turn = float(np.cumsum(gaps)[i] + offset)
        turns.append(turn)
        angle = turn * (2 * math.pi)
        row = round(cy + radius * math.cos(angle)) + shifts[i][0]
        col = round(cx + radius * math.sin(angle)) + shifts[i][1]
        h, w = stamps[symbol].shape
        top, left = row - h // 2, col - w // 2
        boxes.append((slice(top, top + h), slice(left, left + w)))

    image = rng.random((p.size, p.size)) < p.pre_noise * ink_fraction(stamps)
    for symbol, box in zip(chosen, boxes):
        image[box] = stamps[symbol]
    image ^= rng.random((p.size, p.size)) < p.post_noise

    lay = Layout(
        digits=tuple(DIGITS.index(s) for s in chosen),
        radius=radius,
        center=(cy, cx),
        turns=tuple(turns),
        shifts=tuple(shifts),
        boxes=tuple(boxes),
    )
    return _assemble(image, lay), lay
