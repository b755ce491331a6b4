"""The audio-digits domain (AudioMNISTSequence) on the real FSDD copy and on tiny fake trees."""

from __future__ import annotations

import itertools
import math
import wave
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.stats
import torch
import torchaudio
from conftest import SHARED

from sparling import domains
from sparling.domains.audio_digits import (
    DEFAULT_TEST_SPEAKERS,
    AudioDigits,
    find_recordings,
    frame_span,
    place_non_overlapping,
    truncated_normal,
)

FSDD = SHARED / "data" / "fsdd"
needs_fsdd = pytest.mark.skipif(
    not (FSDD / "recordings").is_dir(),
    reason=f"FSDD copy not found at {FSDD.resolve()} (expected recordings/*.wav there)",
)


def write_wav(path: Path, rate: int, samples: np.ndarray) -> None:
    """A mono 16-bit WAV via the stdlib (the fake trees need no extra dependency)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())


def tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


@pytest.fixture(scope="module")
def audiomnist_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """AudioMNIST layout at 48 kHz: speakers 01 (a default held-out one), 02, 03; 1 take each."""
    root = tmp_path_factory.mktemp("audiomnist") / "AudioMNIST"
    for speaker, digit in itertools.product(("01", "02", "03"), range(10)):
        write_wav(
            root / "data" / speaker / f"{digit}_{speaker}_0.wav",
            48_000,
            tone(48_000, 0.25, 200 + 50 * digit),
        )
    (root / "data" / "audioMNIST_meta.txt").write_text("{}")  # present in the real tree
    return root


@pytest.fixture(scope="module")
def fsdd_train() -> AudioDigits:
    return domains.make("audio-digits", root=str(FSDD), split="train")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def fsdd_test() -> AudioDigits:
    return domains.make("audio-digits", root=str(FSDD), split="test")  # type: ignore[return-value]


# -- pure pieces ---------------------------------------------------------------------------


def test_placement_matches_authors_rejection_sampler() -> None:
    """The direct sampler's support is exactly the rejection sampler's, and uniform on it."""
    total, lengths = 12, (3, 2, 4)
    valid = {
        starts
        for starts in itertools.combinations(range(total), len(lengths))
        if all(starts[i] + lengths[i] <= starts[i + 1] for i in range(len(lengths) - 1))
        and starts[-1] + lengths[-1] <= total
    }
    slack = total - sum(lengths)
    assert len(valid) == math.comb(slack + len(lengths), len(lengths))
    rng = np.random.default_rng(0)
    draws = Counter(tuple(place_non_overlapping(rng, lengths, total)) for _ in range(20_000))
    assert set(draws) == valid
    expected = 20_000 / len(valid)
    assert scipy.stats.chisquare(list(draws.values()), [expected] * len(valid)).pvalue > 1e-3
    with pytest.raises(ValueError):
        place_non_overlapping(rng, (5, 8), 12)


def test_truncated_normal_matches_scipy() -> None:
    z = truncated_normal(np.random.default_rng(1), 200_000, 2.0**-10)
    assert np.abs(z).max() <= 2.0**-10
    ref = scipy.stats.truncnorm(-1, 1, scale=2.0**-10)
    assert z.std() == pytest.approx(ref.std(), rel=0.01)
    assert scipy.stats.kstest(z, ref.cdf).pvalue > 1e-3


def test_frame_span_matches_torchaudio() -> None:
    """Frames the formula names are exactly those whose window sees the samples.

    The periodic Hann window's first sample has weight 0, so torch may see nothing in the
    outermost frame the formula includes (an overlap of that one sample): allow 1 frame.
    """
    n_fft, hop, total = 375, 187, 8000
    frames = 1 + total // hop
    spec = torchaudio.transforms.Spectrogram(n_fft=n_fft, hop_length=hop, power=2.0)
    rng = np.random.default_rng(2)
    cases = [(0, 100), (total - 50, 50), (187, 1), (188, 374)] + [
        (int(s), int(n))
        for s, n in zip(rng.integers(0, total - 2000, 30), rng.integers(1, 2000, 30))
    ]
    for start, length in cases:
        x = torch.zeros(total)
        x[start : start + length] = 1.0
        seen = np.flatnonzero(spec(x).sum(0).numpy() > 1e-9)
        span = frame_span(start, length, n_fft=n_fft, hop=hop, frames=frames)
        assert span.start <= seen.min() <= span.start + 1, (start, length)
        assert span.stop - 1 >= seen.max() >= span.stop - 2, (start, length)
        # and the definition: every frame in the span overlaps [start, start+length)
        for t in range(span.start, span.stop):
            lo = t * hop - n_fft // 2
            assert lo < start + length and lo + n_fft > start


# -- the real FSDD copy ----------------------------------------------------------------------


@needs_fsdd
def test_properties(fsdd_train: AudioDigits) -> None:
    d = fsdd_train
    assert d.name == "audio-digits" and d.kind == "audio" and d.storage == "float32"
    assert d.vocabulary == [str(i) for i in range(10)] == d.motif_symbols
    assert d.paper_channels == 10 and d.expected_motifs == 7.5
    assert d.input_shape == (642, 64) and d.positions == 642
    assert d.target_density == pytest.approx(7.5 / (642 * 10))
    assert d.reported_density == pytest.approx(0.5 * 0.75**21, rel=1e-12)
    assert d.layout == "fsdd" and len(d.index.recordings) == 3000
    assert d.spec()["data"]["test_speakers"] == ["theo"]
    assert "audio-digits" in domains.names()


@needs_fsdd
def test_determinism(fsdd_train: AudioDigits) -> None:
    a = fsdd_train.sample(seed=3, index=7)
    fresh = domains.make("audio-digits", root=str(FSDD), split="train")  # empty cache
    b = fresh.sample(seed=3, index=7)
    assert a.x.tobytes() == b.x.tobytes()
    assert a.tokens == b.tokens and a.motifs == b.motifs
    others = [
        fsdd_train.sample(seed=4, index=7),
        fsdd_train.sample(seed=3, index=8),
        domains.make("audio-digits", root=str(FSDD), split="val").sample(seed=3, index=7),
    ]
    for other in others:
        assert other.x.tobytes() != a.x.tobytes()


@needs_fsdd
def test_speaker_split(fsdd_train: AudioDigits, fsdd_test: AudioDigits) -> None:
    assert fsdd_test.speakers == DEFAULT_TEST_SPEAKERS["fsdd"] == ("theo",)
    assert "theo" not in fsdd_train.speakers and len(fsdd_train.speakers) == 5
    assert {r.speaker for r in fsdd_test.recordings} == {"theo"}
    test_used = {pl.speaker for i in range(25) for pl in fsdd_test.sample_with_sources(0, i)[1]}
    train_used = {pl.speaker for i in range(25) for pl in fsdd_train.sample_with_sources(0, i)[1]}
    assert test_used == {"theo"}
    assert train_used == set(fsdd_train.speakers)  # every training speaker is heard

    explicit = domains.make(
        "audio-digits", root=str(FSDD), split="test", test_speakers=["george", "lucas"]
    )
    assert isinstance(explicit, AudioDigits)
    used = {pl.speaker for i in range(10) for pl in explicit.sample_with_sources(1, i)[1]}
    assert used <= {"george", "lucas"}


def assert_speech_inside_spans(x: np.ndarray, spans: list[slice]) -> None:
    """Every motif span holds a frame well above the noise-only frames outside all spans."""
    energy = x.mean(axis=1)  # dB per frame
    inside = np.zeros(len(energy), bool)
    for span in spans:
        inside[span] = True
    noise = np.percentile(energy[~inside], 99)
    for span in spans:
        assert energy[span].max() > noise + 5.0
    assert energy[inside].mean() > energy[~inside].mean() + 5.0


@needs_fsdd
def test_held_out_speaker_ground_truth(fsdd_test: AudioDigits) -> None:
    for index in range(20):
        sample = fsdd_test.sample(seed=5, index=index)
        assert_speech_inside_spans(sample.x, [m.slices[0] for m in sample.motifs])


@needs_fsdd
def test_samples_and_ground_truth(fsdd_train: AudioDigits) -> None:
    counts: Counter[int] = Counter()
    for index in range(60):
        sample, placements = fsdd_train.sample_with_sources(seed=0, index=index)
        x = sample.x
        assert x.shape == (642, 64) and x.dtype == np.float32 and np.isfinite(x).all()
        assert x.max() - x.min() <= 80.0 + 1e-3  # top_db floor
        counts[len(sample.tokens)] += 1
        assert sample.tokens == [m.symbol for m in sample.motifs] == [p.digit for p in placements]
        # sample spans sorted, disjoint, inside the clip
        for p, q in itertools.pairwise(placements):
            assert p.start + p.length <= q.start
        assert placements[0].start >= 0 and placements[-1].start + placements[-1].length <= 120_000
        # frame spans sorted and inside [0, frames)
        spans = [m.slices[0] for m in sample.motifs]
        assert all(len(m.slices) == 1 for m in sample.motifs)
        assert all(0 <= s.start < s.stop <= 642 for s in spans)
        assert all(s.start <= t.start and s.stop <= t.stop for s, t in itertools.pairwise(spans))
        assert_speech_inside_spans(x, spans)
    assert set(counts) == set(range(5, 11))


@needs_fsdd
def test_recordings_folder_directly() -> None:
    d = domains.make("audio-digits", root=str(FSDD / "recordings"))
    assert isinstance(d, AudioDigits) and d.layout == "fsdd"


# -- AudioMNIST layout ------------------------------------------------------------------------


def test_audiomnist_layout(audiomnist_tree: Path) -> None:
    for root in (audiomnist_tree, audiomnist_tree / "data"):
        index = find_recordings(root)
        assert index.layout == "audiomnist" and index.speakers == ["01", "02", "03"]
        assert len(index.recordings) == 30
    train = domains.make("audio-digits", root=audiomnist_tree)  # a Path is accepted
    assert train.params.root == str(audiomnist_tree)
    # The hash names the data's content, not where it is mounted.
    assert "root" not in train.spec()["params"]
    original_hash = train.spec_hash()
    moved = audiomnist_tree.parent / "moved"
    audiomnist_tree.rename(moved)
    assert domains.make("audio-digits", root=moved).spec_hash() == original_hash
    moved.rename(audiomnist_tree)
    test = domains.make("audio-digits", root=str(audiomnist_tree), split="test")
    assert isinstance(train, AudioDigits) and isinstance(test, AudioDigits)
    assert train.test_speakers == ("01",) and train.train_speakers == ("02", "03")
    sample, placements = test.sample_with_sources(0, 0)
    assert sample.x.shape == (642, 64)
    assert {p.speaker for p in placements} == {"01"}
    assert {p.length for p in placements} == {2000}  # 0.25 s resampled from 48 kHz to 8 kHz
    assert {p.speaker for i in range(5) for p in train.sample_with_sources(0, i)[1]} <= {"02", "03"}
    # integers name AudioMNIST speaker folders
    other = domains.make("audio-digits", root=str(audiomnist_tree), test_speakers=[2])
    assert isinstance(other, AudioDigits) and other.test_speakers == ("02",)


def test_resampled_audio_is_the_source(audiomnist_tree: Path) -> None:
    d = domains.make("audio-digits", root=str(audiomnist_tree), noise_log2=None)
    assert isinstance(d, AudioDigits)
    rec = d.recordings[0]
    audio = d._load(rec)
    expected = torchaudio.functional.resample(
        torch.tensor(tone(48_000, 0.25, 200 + 50 * rec.digit) / 32768.0, dtype=torch.float32),
        48_000,
        8_000,
    ).numpy()
    assert np.abs(audio - expected).max() < 2.0**-14


# -- errors ----------------------------------------------------------------------------------


def _expect_folder_error(root: Path, *fragments: str) -> None:
    with pytest.raises(ValueError) as e:
        domains.make("audio-digits", root=str(root))
    message = str(e.value)
    assert str(root) in message
    for fragment in ("expected", *fragments):
        assert fragment in message, message


def test_bad_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _expect_folder_error(tmp_path / "missing", "does not exist")
    (tmp_path / "file.wav").write_bytes(b"")
    _expect_folder_error(tmp_path / "file.wav", "is not a folder")
    (tmp_path / "empty").mkdir()
    _expect_folder_error(tmp_path / "empty", "no recordings")
    # too deep: recordings/x/y.wav is neither layout
    write_wav(tmp_path / "deep" / "recordings" / "a" / "0_x_0.wav", 8000, tone(8000, 0.1))
    _expect_folder_error(tmp_path / "deep", "no recordings")
    write_wav(tmp_path / "badname" / "recordings" / "zero-george-1.wav", 8000, tone(8000, 0.1))
    _expect_folder_error(tmp_path / "badname", "zero-george-1.wav")
    write_wav(tmp_path / "mismatch" / "data" / "01" / "0_02_0.wav", 48000, tone(48000, 0.1))
    _expect_folder_error(tmp_path / "mismatch", "speaker folder")
    write_wav(tmp_path / "both" / "data" / "01" / "0_01_0.wav", 48000, tone(48000, 0.1))
    write_wav(tmp_path / "both" / "recordings" / "0_x_0.wav", 8000, tone(8000, 0.1))
    _expect_folder_error(tmp_path / "both", "both")
    # a digit missing for the split's speakers
    for digit in range(9):
        write_wav(tmp_path / "nine" / "recordings" / f"{digit}_a_0.wav", 8000, tone(8000, 0.1))
    write_wav(tmp_path / "nine" / "recordings" / "9_theo_0.wav", 8000, tone(8000, 0.1))
    with pytest.raises(ValueError, match=r"no recording of digit 9 by the train speakers \['a'\]"):
        domains.make("audio-digits", root=str(tmp_path / "nine"))

    monkeypatch.delenv("SPARLING_AUDIO_ROOT", raising=False)
    with pytest.raises(ValueError, match="root"):
        domains.make("audio-digits")
    monkeypatch.setenv("SPARLING_AUDIO_ROOT", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="does not exist"):
        domains.make("audio-digits")


@pytest.mark.parametrize(
    "params",
    [
        {"min_digits": 6, "max_digits": 5},
        {"min_digits": 0},
        {"n_mels": 200},
        {"hop_length": 400},
        {"clip_seconds": 0},
        {"clip_seconds": 0.01},
        {"noise_log2": 3},
        {"test_speakers": []},
        {"test_speakers": ["02", "02"]},
        {"colour": "red"},
        {"speed_perturbation": -0.1},
        {"speed_perturbation": 0.5},
    ],
)
def test_bad_params(audiomnist_tree: Path, params: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="bad parameters"):
        domains.make("audio-digits", root=str(audiomnist_tree), **params)


def test_bad_speakers(audiomnist_tree: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        domains.make("audio-digits", root=str(audiomnist_tree), test_speakers=["07"])
    with pytest.raises(ValueError, match="no training speakers"):
        domains.make("audio-digits", root=str(audiomnist_tree), test_speakers=["01", "02", "03"])
    with pytest.raises(ValueError, match="split"):
        domains.make("audio-digits", root=str(audiomnist_tree), split="dev")


def test_clip_too_short_for_recordings(audiomnist_tree: Path) -> None:
    d = domains.make("audio-digits", root=str(audiomnist_tree), clip_seconds=0.5, min_digits=5)
    with pytest.raises(ValueError, match="too long"):
        d.sample(0, 0)


def test_pickle_drops_cache(audiomnist_tree: Path) -> None:
    import pickle

    d = domains.make("audio-digits", root=str(audiomnist_tree))
    assert isinstance(d, AudioDigits)
    before = d.sample(0, 0)
    assert d._cache
    clone = pickle.loads(pickle.dumps(d))
    assert clone._cache == {}
    assert clone.sample(0, 0).x.tobytes() == before.x.tobytes()


def test_speed_perturbation_changes_train_and_val_takes_and_never_the_test_split(
    audiomnist_tree: Path,
) -> None:
    root = str(audiomnist_tree)
    plain = {
        split: domains.make("audio-digits", root=root, split=split) for split in ("train", "test")
    }
    fast = {
        split: domains.make("audio-digits", root=root, split=split, speed_perturbation=0.15)
        for split in ("train", "val", "test")
    }
    # off is the data set as it was (same hash); on is another data set
    off = domains.make("audio-digits", root=root, speed_perturbation=0.0)
    assert off.spec_hash() == plain["train"].spec_hash() != fast["train"].spec_hash()
    # each take is 0.25 s (2,000 samples at 8 kHz), played at a speed in [0.85, 1.15]
    lengths = {
        split: [pl.length for i in range(12) for pl in fast[split].sample_with_sources(0, i)[1]]  # type: ignore[attr-defined]
        for split in ("train", "val")
    }
    for split, seen in lengths.items():
        assert all(2000 / 1.15 - 1 <= n <= 2000 / 0.85 + 1 for n in seen), (split, seen)
        assert len(set(seen)) >= 5, (split, seen)  # not one factor for all
    # a pure function of (params, split, seed, index)
    again = domains.make("audio-digits", root=root, split="train", speed_perturbation=0.15)
    assert again.sample(0, 3).x.tobytes() == fast["train"].sample(0, 3).x.tobytes()
    assert fast["train"].sample(0, 3).x.tobytes() != plain["train"].sample(0, 3).x.tobytes()
    # the held-out speakers are heard as recorded
    for i in range(4):
        a, sources = fast["test"].sample_with_sources(0, i)  # type: ignore[attr-defined]
        assert {pl.length for pl in sources} == {2000}
        assert a.x.tobytes() == plain["test"].sample(0, i).x.tobytes()
