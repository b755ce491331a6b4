"""AudioMNISTSequence ("audio-digits"): spoken digits placed in a 15 s clip, as a mel spectrogram.

A sample is built from real recordings of single spoken digits, files named
``{digit}_{speaker}_{take}.wav``, in either of two layouts (detected automatically):

* **AudioMNIST** (the paper's data): ``ROOT/data/{NN}/{digit}_{NN}_{take}.wav``, 48 kHz,
  60 speakers ``01``..``60``. ``ROOT`` may also be the ``data/`` folder itself.
* **FSDD** (Free Spoken Digit Dataset, a small stand-in): ``ROOT/recordings/{digit}_{name}_{take}.wav``,
  flat, 8 kHz, 6 speakers. ``ROOT`` may also be the ``recordings/`` folder itself.

Generation of one sample, a pure function of (params, split, seed, index), following the
authors' ``AudioClipDomain`` (kavigupta/sparling-repro, ``pixel_art/audo_mnist``):

1. ``n ~ U{min_digits..max_digits}``; ``n`` digits uniform over 0-9 with replacement; for each,
   a speaker uniform over the split's speakers (those with that digit), then a take uniform
   over that speaker's recordings of that digit.
2. Recordings are decoded to float in [-1, 1) and resampled to 8 kHz with torchaudio.
3. Start positions: the authors draw ``n`` starts uniformly (with replacement) from the
   clip's samples, sort them, and redraw until every recording fits before the next start
   (the last before the end). Conditioned on success that is *uniform over all valid
   sorted start tuples*; :func:`place_non_overlapping` samples that same distribution
   directly (no rejection loop, which needs ~500 tries per clip at 10 digits).
   Digits keep their drawn order, which is therefore also their time order.
4. The recordings are written into a silent clip of ``clip_seconds * 8000`` samples and
   truncated-normal noise (bounds +-1 standard unit, scale ``2**noise_log2``, i.e. values in
   ``[-2**-10, 2**-10]`` by default: the authors' ``truncnorm(-1, 1, scale=2**-10)``) is added
   to every sample. (Optional, not in the paper: ``speed_perturbation`` plays each train and
   val recording faster or slower before step 3, to vary the voices; test is never changed.)
5. ``x``: 64-mel power spectrogram (torchaudio ``MelSpectrogram``: n_fft = win = 375,
   hop 187, periodic Hann, centred with reflect padding, 0-4000 Hz, HTK mel scale, no filter
   normalisation -- the authors' settings, from their ``time_chunk=1.5`` rule
   ``n_fft = int(2 * 1.5 * 8000 / 64)`` and torchaudio's default ``hop = win // 2``), then
   ``AmplitudeToDB(top_db=80)`` (floor 80 dB below the clip's maximum). ``x`` is
   ``(frames, mels)`` float32 with ``frames = 1 + clip_samples // hop = 642``.

Ground truth (:func:`frame_span`): with ``center=True``, frame ``t`` sees samples
``[t*hop - n_fft//2, t*hop - n_fft//2 + n_fft)`` (for odd n_fft the same integers as
``[t*hop - n_fft/2, t*hop + n_fft/2)``). A digit occupying samples ``[s, s+L)`` gets the
motif ``Motif(digit, (slice(f0, f1),))`` where ``f0..f1-1`` are *all* frames overlapping it.
This is about one frame wider on each side than the authors' proportional mapping
(``s * frames // samples`` .. ``+ L * frames // samples``). Two digits closer than ``n_fft``
samples can therefore share a frame at their boundary; their sample spans never overlap.

Speaker split: ``split="test"`` draws only from the held-out speakers, ``"train"`` and
``"val"`` from all others (val differs from train by its random stream only). Defaults:
AudioMNIST holds out the 9 speakers the authors held out (their speaker indices 52-60 of
the order ``np.random.RandomState(0).shuffle(list(range(1, 61)))``), folders
``01 04 10 20 40 45 48 54 56``; FSDD holds out ``theo`` (1 of 6; his USA/neutral accent is
also represented in training by ``jackson``, as the AudioMNIST held-out speakers share
accents with training speakers).

Decoded, resampled recordings are cached per domain instance on first use (as int16 at
8 kHz, half the memory of float32; the rounding error, <= 2**-16, is far below the
2**-10 noise). The cache is not pickled (a domain sent to a worker starts empty).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import scipy.io.wavfile
import scipy.special
from pydantic import Field, field_validator, model_validator

from . import register
from .base import Domain, DomainError, DomainParams, Motif, Sample, Split, canonical_hash

if TYPE_CHECKING:
    import torch

# torch and torchaudio are imported where first needed (decoding, spectrograms): importing
# them takes seconds, which `domains.names()` and `sparling data fetch` need not pay.

#: every recording is resampled to this rate (Hz) before use, as in the paper
SAMPLE_RATE = 8000
#: environment variable read when ``root`` is not given
ROOT_ENV = "SPARLING_AUDIO_ROOT"

Layout = Literal["audiomnist", "fsdd"]

#: ``{digit}_{speaker}_{take}.wav``; the underscore separates fields, so speakers have none
FILENAME_RE = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z0-9]+)_(?P<take>[0-9]+)\.wav$")

#: held-out (test) speakers per layout when ``test_speakers`` is not given
DEFAULT_TEST_SPEAKERS: dict[Layout, tuple[str, ...]] = {
    # the authors' speaker_set 52..60 mapped through their shuffled speaker order
    "audiomnist": ("01", "04", "10", "20", "40", "45", "48", "54", "56"),
    "fsdd": ("theo",),
}

#: printed in every folder error: what a valid root looks like
EXPECTED_LAYOUT = (
    "expected either AudioMNIST, ROOT/data/NN/{digit}_NN_{take}.wav (one folder per speaker; "
    "ROOT may also be the data/ folder), or FSDD, ROOT/recordings/{digit}_{speaker}_{take}.wav "
    "(flat; ROOT may also be the recordings/ folder); get either with "
    "`sparling data fetch audiomnist|fsdd --to DIR`"
)


# -- finding recordings ----------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One WAV file of a single spoken digit."""

    path: Path
    digit: int
    speaker: str
    take: int


@dataclass(frozen=True)
class RecordingIndex:
    """The recordings found under a root folder, and the layout they were found in."""

    #: the folder the user gave
    root: Path
    #: the folder holding the speaker folders (AudioMNIST) or the WAV files (FSDD)
    recordings_dir: Path
    layout: Layout
    #: sorted by (speaker, digit, take) so that random choices never depend on listing order
    recordings: tuple[Recording, ...]

    @property
    def speakers(self) -> list[str]:
        return sorted({r.speaker for r in self.recordings})


def _wavs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav")


def _subdirs_with_wavs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and _wavs(d))


def _parse(path: Path, root: Path) -> Recording:
    m = FILENAME_RE.match(path.name)
    if m is None:
        raise DomainError(
            f"audio-digits: recording {path} in {root} is not named {{digit}}_{{speaker}}_{{take}}.wav "
            f"(digit 0-9, speaker letters/digits, take a number); {EXPECTED_LAYOUT}"
        )
    return Recording(path, int(m["digit"]), m["speaker"], int(m["take"]))


def find_recordings(root: str | Path) -> RecordingIndex:
    """Detect the layout under ``root`` and list its recordings.

    Raises ``ValueError`` naming the folder and the expected layout when ``root`` is
    missing, empty, laid out otherwise, or holds a WAV file with a malformed name.
    This is also the check ``pipelines.fetch`` runs after downloading.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DomainError(f"audio-digits: folder {root} {what}; {EXPECTED_LAYOUT}")

    # Candidates in the order a user is most likely to point at: the dataset's own root,
    # then the inner folder itself.
    found: list[tuple[Layout, Path]] = []
    if (root / "data").is_dir() and _subdirs_with_wavs(root / "data"):
        found.append(("audiomnist", root / "data"))
    if (root / "recordings").is_dir() and _wavs(root / "recordings"):
        found.append(("fsdd", root / "recordings"))
    if not found:
        flat, nested = _wavs(root), _subdirs_with_wavs(root)
        if flat and nested:
            raise DomainError(
                f"audio-digits: folder {root} holds both WAV files and folders of WAV files, "
                f"so its layout is ambiguous; {EXPECTED_LAYOUT}"
            )
        if flat:
            found.append(("fsdd", root))
        elif nested:
            found.append(("audiomnist", root))
    if not found:
        raise DomainError(f"audio-digits: no recordings found in folder {root}; {EXPECTED_LAYOUT}")
    if len(found) > 1:
        raise DomainError(
            f"audio-digits: folder {root} holds both data/ and recordings/ with WAV files; "
            f"point root at one of them; {EXPECTED_LAYOUT}"
        )
    layout, folder = found[0]

    recordings: list[Recording] = []
    if layout == "fsdd":
        recordings = [_parse(p, root) for p in _wavs(folder)]
    else:
        stray = _wavs(folder)
        if stray:
            raise DomainError(
                f"audio-digits: {stray[0]} lies directly in the AudioMNIST folder {folder}, "
                f"outside any speaker folder; {EXPECTED_LAYOUT}"
            )
        for speaker_dir in _subdirs_with_wavs(folder):
            for p in _wavs(speaker_dir):
                rec = _parse(p, root)
                if rec.speaker != speaker_dir.name:
                    raise DomainError(
                        f"audio-digits: {p} names speaker {rec.speaker!r} but lies in speaker "
                        f"folder {speaker_dir.name!r} of {folder}; {EXPECTED_LAYOUT}"
                    )
                recordings.append(rec)
    recordings.sort(key=lambda r: (r.speaker, r.digit, r.take, r.path.name))
    return RecordingIndex(root, folder, layout, tuple(recordings))


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Decode a WAV file to mono float32 in [-1, 1) and its sample rate.

    Integer PCM is scaled by its full range (int16 / 32768, as librosa does); several
    channels are averaged. scipy is used because torchaudio >= 2.9 decodes via ffmpeg.
    """
    try:
        rate, data = scipy.io.wavfile.read(path)
    except (ValueError, OSError) as e:
        raise DomainError(f"audio-digits: cannot read {path} as a WAV file: {e}") from e
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        audio = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        audio = data.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return audio, int(rate)


# -- the pieces of a sample ---------------------------------------------------------------


def place_non_overlapping(
    rng: np.random.Generator, lengths: Sequence[int], total: int
) -> np.ndarray:
    """Sorted start positions for clips of ``lengths`` (kept in order) in ``total`` samples.

    Same distribution as the authors' rejection sampler (iid uniform starts in
    ``range(total)``, sorted, accepted when ``start[i] + lengths[i] <= start[i+1]`` and the
    last clip ends by ``total``): every valid tuple of distinct sorted starts is equally
    likely there, and ``u_i = s_i - sum(lengths[:i])`` maps valid tuples one-to-one onto
    non-decreasing ``u`` in ``[0, slack]``, ``slack = total - sum(lengths)``. Those are drawn
    uniformly as ``n`` distinct sorted values of ``range(slack + n)`` minus ``0..n-1``.
    """
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    n = len(lengths_arr)
    slack = int(total) - int(lengths_arr.sum())
    if slack < 0:
        raise DomainError(
            f"clips of total length {lengths_arr.sum()} do not fit in {total} samples"
        )
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    v = np.sort(rng.choice(slack + n, size=n, replace=False)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths_arr[:-1])])
    return v - np.arange(n, dtype=np.int64) + offsets


_TN_LO = float(scipy.special.ndtr(-1.0))
_TN_HI = float(scipy.special.ndtr(1.0))


def truncated_normal(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """``size`` draws of ``scipy.stats.truncnorm(-1, 1, scale=scale)`` (float64).

    By inverse CDF: ``ndtri(U(Phi(-1), Phi(1)))``; identical in distribution to scipy's
    sampler and ~25x faster for a 120,000-sample clip.
    """
    z = scipy.special.ndtri(rng.uniform(_TN_LO, _TN_HI, size))
    # ndtri can round a hair past +-1 at the interval ends; keep the truncation exact
    return np.clip(z, -1.0, 1.0) * scale


def frame_span(start: int, length: int, *, n_fft: int, hop: int, frames: int) -> slice:
    """The frames (``center=True``) overlapping samples ``[start, start + length)``.

    Frame ``t`` covers samples ``[t*hop - n_fft//2, t*hop - n_fft//2 + n_fft)`` (torch pads
    ``n_fft//2`` on the left). It overlaps the digit when ``t*hop - n_fft//2 < end`` and
    ``t*hop - n_fft//2 + n_fft > start``; the result is clipped to ``[0, frames)``.
    """
    pad = n_fft // 2
    end = start + length
    first = (start + pad - n_fft) // hop + 1  # smallest t with t*hop > start + pad - n_fft
    stop = -((-(end + pad)) // hop)  # smallest t with t*hop >= end + pad, i.e. ceil
    return slice(max(0, first), min(frames, stop))


@dataclass(frozen=True)
class Placement:
    """Where one recording went in a sample (``start``/``length`` in 8 kHz samples)."""

    digit: str
    speaker: str
    take: int
    path: Path
    start: int
    length: int
    frames: slice


# -- the domain -------------------------------------------------------------------------


class AudioDigitsParams(DomainParams):
    """Parameters of :class:`AudioDigits`; defaults are the paper's setting."""

    root: str | None = Field(
        None,
        description=(
            "Folder of recordings {digit}_{speaker}_{take}.wav: an AudioMNIST root (data/NN/...) "
            f"or an FSDD root (recordings/...), or that inner folder. None: ${ROOT_ENV}."
        ),
    )
    test_speakers: tuple[str, ...] | None = Field(
        None,
        description=(
            "Held-out speakers (names as in the file names; integers are read as AudioMNIST "
            "folder numbers, 1 -> '01'). The test split uses only these, train/val only the "
            "others. None: the authors' 9 for AudioMNIST, 'theo' for FSDD."
        ),
    )
    min_digits: int = Field(5, ge=1, description="Fewest digits in a clip (count is uniform).")
    max_digits: int = Field(10, ge=1, description="Most digits in a clip (inclusive).")
    clip_seconds: float = Field(
        15.0, gt=0, le=600, description="Clip length in seconds at 8 kHz (15 s = 120,000 samples)."
    )
    noise_log2: float | None = Field(
        -10.0,
        le=0,
        description=(
            "Truncated-normal noise (bounds +-1 unit) of scale 2**noise_log2 added to every "
            "sample; None adds no noise."
        ),
    )
    n_mels: int = Field(64, ge=1, description="Mel bands (the width of x).")
    n_fft: int = Field(375, ge=2, description="FFT size and window length, in samples.")
    hop_length: int = Field(187, ge=1, description="Hop between frames, in samples.")
    top_db: float = Field(80.0, gt=0, description="dB floor below the clip's maximum.")
    speed_perturbation: float = Field(
        0.0,
        ge=0.0,
        lt=0.5,
        description=(
            "Training-time augmentation (not in the paper): each recording of the train and "
            "val splits is played faster or slower by a factor drawn uniformly from "
            "[1 - a, 1 + a] in steps of 0.01, changing its length and pitch together (speed "
            "perturbation). The test split is never perturbed. 0: off."
        ),
    )

    @field_validator("root", mode="before")
    @classmethod
    def _root_text(cls, value: Any) -> Any:
        # accept pathlib paths; stored as text so that the spec stays JSON
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("test_speakers", mode="before")
    @classmethod
    def _speaker_names(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str | int):
            value = [value]
        names = [f"{v:02d}" if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if not names:
            raise DomainError("test_speakers must name at least one speaker (or be None)")
        if len(set(names)) != len(names):
            raise DomainError(f"test_speakers has duplicates: {names}")
        # sorted so that equal sets give equal specs (and spec hashes)
        return tuple(sorted(names))

    @model_validator(mode="after")
    def _consistent(self) -> AudioDigitsParams:
        if self.min_digits > self.max_digits:
            raise DomainError(f"min_digits ({self.min_digits}) > max_digits ({self.max_digits})")
        if self.hop_length > self.n_fft:
            raise DomainError(f"hop_length ({self.hop_length}) > n_fft ({self.n_fft})")
        if self.n_mels > self.n_fft // 2 + 1:
            raise DomainError(
                f"n_mels ({self.n_mels}) exceeds the {self.n_fft // 2 + 1} FFT bins of n_fft={self.n_fft}"
            )
        if round(self.clip_seconds * SAMPLE_RATE) < self.n_fft:
            raise DomainError(f"clip_seconds ({self.clip_seconds}) is shorter than one FFT window")
        return self


@register
class AudioDigits(Domain):
    """AudioMNISTSequence: 5-10 spoken digits in a 15 s clip; output the digit sequence."""

    name = "audio-digits"
    kind = "audio"
    storage = "float32"
    Params = AudioDigitsParams
    context_radius = 16  # the paper's g context radius for audio, in frames

    #: tries at drawing recordings whose total length fits the clip before giving up
    MAX_DRAWS = 100

    def __init__(self, split: Split = "train", **params: Any) -> None:
        super().__init__(split, **params)
        p = self.p
        root = p.root if p.root is not None else os.environ.get(ROOT_ENV)
        if not root:
            raise DomainError(
                f"audio-digits: no recordings folder: pass root=DIR or set ${ROOT_ENV}; {EXPECTED_LAYOUT}"
            )
        self.index = find_recordings(root)
        speakers = self.index.speakers

        if p.test_speakers is not None:
            unknown = sorted(set(p.test_speakers) - set(speakers))
            if unknown:
                raise DomainError(
                    f"audio-digits: test_speakers {unknown} not found in {self.index.recordings_dir} "
                    f"(speakers there: {', '.join(speakers)})"
                )
            held_out = tuple(p.test_speakers)
        else:
            # a partial tree may lack some default held-out speakers; hold out those present
            held_out = tuple(s for s in DEFAULT_TEST_SPEAKERS[self.index.layout] if s in speakers)
        #: the held-out speakers (heard only in the test split)
        self.test_speakers: tuple[str, ...] = held_out
        #: the speakers of train and val
        self.train_speakers: tuple[str, ...] = tuple(s for s in speakers if s not in held_out)
        if not self.train_speakers:
            raise DomainError(
                f"audio-digits: test_speakers {list(held_out)} leave no training speakers in "
                f"{self.index.recordings_dir}"
            )
        #: the speakers this split draws from
        self.speakers: tuple[str, ...] = held_out if split == "test" else self.train_speakers
        if not self.speakers:
            raise DomainError(
                f"audio-digits: none of the default held-out speakers "
                f"{list(DEFAULT_TEST_SPEAKERS[self.index.layout])} is in {self.index.recordings_dir}; "
                f"pass test_speakers explicitly"
            )

        # pool[digit] = [(speaker, [recordings of that digit by that speaker]), ...]
        chosen = set(self.speakers)
        self._pool: list[list[tuple[str, list[Recording]]]] = []
        for digit in range(10):
            by_speaker: dict[str, list[Recording]] = {}
            for rec in self.index.recordings:
                if rec.digit == digit and rec.speaker in chosen:
                    by_speaker.setdefault(rec.speaker, []).append(rec)
            if not by_speaker:
                raise DomainError(
                    f"audio-digits: no recording of digit {digit} by the {split} speakers "
                    f"{list(self.speakers)} in {self.index.recordings_dir}"
                )
            self._pool.append(sorted(by_speaker.items()))

        self._cache: dict[Path, np.ndarray] = {}
        self._features: tuple[torch.nn.Module, torch.nn.Module] | None = None  # built lazily

    # -- parameters and derived sizes ----------------------------------------------------
    @property
    def p(self) -> AudioDigitsParams:
        """The validated parameters, typed."""
        return cast(AudioDigitsParams, self.params)

    @property
    def layout(self) -> Layout:
        return self.index.layout

    @property
    def clip_samples(self) -> int:
        return int(round(self.p.clip_seconds * SAMPLE_RATE))

    @property
    def frames(self) -> int:
        return total_frames(self.clip_samples, self.p.hop_length)

    @property
    def recordings(self) -> list[Recording]:
        """The recordings this split may use."""
        return [r for by_digit in self._pool for _, recs in by_digit for r in recs]

    # -- Domain contract -------------------------------------------------------------------
    @property
    def vocabulary(self) -> list[str]:
        return [str(d) for d in range(10)]

    @property
    def motif_symbols(self) -> list[str]:
        return [str(d) for d in range(10)]

    @property
    def paper_channels(self) -> int:
        return 10

    @property
    def max_tokens(self) -> int:
        return self.p.max_digits

    @property
    def expected_motifs(self) -> float:
        return (self.p.min_digits + self.p.max_digits) / 2

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.frames, self.p.n_mels)

    def spec(self) -> dict[str, Any]:
        """The base spec plus what the folder resolved to (layout, speakers, size).

        The resolved data identify the data set even when ``root`` comes from the
        environment, so that FSDD and AudioMNIST runs never share a spec hash; the
        ``root`` path itself is left out, so one data set mounted at different paths
        on different machines keeps one hash.
        """
        spec = super().spec()
        # Where the folder is mounted differs between machines of a cluster; what it
        # holds does not. Keep the content description, drop the path.
        spec["params"].pop("root", None)
        # an augmentation left off is not part of the data set's identity (data sets made
        # before it existed keep their hashes)
        if not spec["params"].get("speed_perturbation"):
            spec["params"].pop("speed_perturbation", None)
        spec["data"] = {
            "layout": self.layout,
            "test_speakers": list(self.test_speakers),
            "train_speakers": list(self.train_speakers),
            "recordings": len(self.index.recordings),
            # Names and sizes of every file: a different or edited copy gets another hash
            # (cheap: one stat per file, no reading).
            "fingerprint": canonical_hash(
                [(r.path.name, r.path.stat().st_size) for r in self.index.recordings]
            )[:16],
        }
        return spec

    def sample(self, seed: int, index: int) -> Sample:
        return self.sample_with_sources(seed, index)[0]

    def sample_with_sources(self, seed: int, index: int) -> tuple[Sample, list[Placement]]:
        """The sample and where each recording came from and went (in time order)."""
        p = self.p
        rng = self.rng(seed, index)
        total = self.clip_samples
        for _ in range(self.MAX_DRAWS):
            count = int(rng.integers(p.min_digits, p.max_digits + 1))
            digits = rng.integers(0, 10, size=count)
            recs = [self._draw(rng, int(d)) for d in digits]
            waves = [self._load(r) for r in recs]
            if p.speed_perturbation and self.split != "test":
                waves = [self._perturb(rng, w) for w in waves]
            if sum(len(w) for w in waves) <= total:
                break
            # Too long to fit (only with a short clip_seconds or unusually long takes; never
            # for the paper's data): redraw, as the authors' sampler would otherwise loop forever.
        else:
            raise DomainError(
                f"audio-digits: drew {self.MAX_DRAWS} sets of recordings too long for a "
                f"{p.clip_seconds} s clip; raise clip_seconds or lower max_digits"
            )

        starts = place_non_overlapping(rng, [len(w) for w in waves], total)
        audio = np.zeros(total, dtype=np.float64)
        for s, w in zip(starts, waves):
            audio[s : s + len(w)] = w
        if p.noise_log2 is not None:
            audio += truncated_normal(rng, total, 2.0**p.noise_log2)

        x = self._spectrogram(audio.astype(np.float32))
        placements = [
            Placement(
                digit=str(r.digit),
                speaker=r.speaker,
                take=r.take,
                path=r.path,
                start=int(s),
                length=len(w),
                frames=frame_span(
                    int(s), len(w), n_fft=p.n_fft, hop=p.hop_length, frames=self.frames
                ),
            )
            for r, s, w in zip(recs, starts, waves)
        ]
        sample = Sample(
            x=x,
            tokens=[pl.digit for pl in placements],
            motifs=[Motif(pl.digit, (pl.frames,)) for pl in placements],
        )
        return sample, placements

    # -- internals -------------------------------------------------------------------------
    def _draw(self, rng: np.random.Generator, digit: int) -> Recording:
        # speaker first, then take: the authors' order, so a speaker with fewer takes of a
        # digit is not under-represented
        by_speaker = self._pool[digit]
        _, recs = by_speaker[int(rng.integers(len(by_speaker)))]
        return recs[int(rng.integers(len(recs)))]

    def _perturb(self, rng: np.random.Generator, wave: np.ndarray) -> np.ndarray:
        """``wave`` played at a speed factor in [1 - a, 1 + a] (steps of 0.01): a polyphase
        resampling by 100 / round(100 * factor), which shortens a faster take and raises
        its pitch."""
        import scipy.signal

        steps = int(round(self.p.speed_perturbation * 100))
        down = 100 + int(rng.integers(-steps, steps + 1))
        if down == 100:
            return wave
        out = scipy.signal.resample_poly(wave, 100, down)
        return np.clip(out, -1.0, 1.0).astype(np.float32)

    def _load(self, rec: Recording) -> np.ndarray:
        """The recording at 8 kHz as float32 (decoded and resampled once per instance)."""
        cached = self._cache.get(rec.path)
        if cached is None:
            audio, rate = read_wav(rec.path)
            if audio.size == 0:
                raise DomainError(f"audio-digits: recording {rec.path} is empty")
            if rate != SAMPLE_RATE:
                import torch
                import torchaudio

                audio = torchaudio.functional.resample(
                    torch.from_numpy(audio), rate, SAMPLE_RATE
                ).numpy()
            cached = np.round(np.clip(audio, -1.0, 1.0 - 2.0**-15) * 32768.0).astype(np.int16)
            self._cache[rec.path] = cached
        return cached.astype(np.float32) / 32768.0

    def _spectrogram(self, audio: np.ndarray) -> np.ndarray:
        import torch
        import torchaudio

        p = self.p
        if self._features is None:
            mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=SAMPLE_RATE,
                n_fft=p.n_fft,
                win_length=p.n_fft,
                hop_length=p.hop_length,
                f_min=0.0,
                f_max=SAMPLE_RATE / 2,
                n_mels=p.n_mels,
                window_fn=torch.hann_window,
                power=2.0,
                center=True,
                pad_mode="reflect",
                norm=None,
                mel_scale="htk",
            )
            self._features = (mel, torchaudio.transforms.AmplitudeToDB("power", top_db=p.top_db))
        mel, to_db = self._features
        with torch.no_grad():
            spec = to_db(mel(torch.from_numpy(audio)))  # (mels, frames)
        return np.ascontiguousarray(spec.numpy().T, dtype=np.float32)

    def __getstate__(self) -> dict[str, Any]:
        # do not ship the (possibly hundreds of MB) recording cache to workers
        state = self.__dict__.copy()
        state["_cache"] = {}
        state["_features"] = None
        return state


def total_frames(clip_samples: int, hop: int) -> int:
    """Frames of a centred STFT: ``1 + clip_samples // hop`` (642 for 120,000 / 187)."""
    return 1 + clip_samples // hop


__all__ = [
    "DEFAULT_TEST_SPEAKERS",
    "EXPECTED_LAYOUT",
    "ROOT_ENV",
    "SAMPLE_RATE",
    "AudioDigits",
    "AudioDigitsParams",
    "Placement",
    "Recording",
    "RecordingIndex",
    "find_recordings",
    "frame_span",
    "place_non_overlapping",
    "read_wav",
    "total_frames",
]
