"""``bench/learning_curve.py``: exact match against samples, and the ideal motif maps, for
every domain (2-D boxes in images, 1-D frame spans in audio)."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import REPO, run_python

sys.path.insert(0, str(REPO / "bench"))
import learning_curve  # noqa: E402

from sparling import domains  # noqa: E402

TINY = ["--set", "d_model=32", "--set", "ff=64", "--set", "heads=2", "--set", "width=4"]
TINY += ["--set", "encoder_layers=1", "--set", "decoder_layers=1", "--set", "cr=2"]


@pytest.fixture(scope="module")
def fsdd_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FSDD layout with two speakers (theo is held out) and one short tone per digit."""
    root = tmp_path_factory.mktemp("fsdd")
    t = np.arange(int(8000 * 0.3)) / 8000
    for speaker in ("jackson", "theo"):
        for digit in range(10):
            path = root / "recordings" / f"{digit}_{speaker}_0.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            tone = 0.3 * 32767 * np.sin(2 * np.pi * (200 + 60 * digit) * t)
            with wave.open(str(path), "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(8000)
                w.writeframes(tone.astype("<i2").tobytes())
    return root


def assert_one_activation_per_motif(
    maps: Any, samples: list[Any], channel_of: dict[str, int]
) -> None:
    """Every motif has a 1 in its symbol's channel inside its slices, and nothing else is set."""
    for i, s in enumerate(samples):
        assert int((maps[i] > 0).sum()) == len(s.motifs) == int(maps[i].sum())
        for symbol, slices in s.motifs:
            centre = learning_curve.motif_centre(slices, maps.shape[2:])
            assert maps[(i, channel_of[symbol], *centre)] == 1
            assert all(sl.start <= k < sl.stop for sl, k in zip(slices, centre))


def test_ideal_maps_mark_each_digit_in_its_channel() -> None:
    d = domains.make("digit-circle", split="val")
    samples = [d.sample(0, i) for i in range(3)]
    channel_of = learning_curve.symbol_channels(d, 10)
    assert channel_of == {str(k): k for k in range(10)}
    maps = learning_curve.ideal_maps(samples, channel_of, 10, (100, 100))
    assert maps.shape == (3, 10, 100, 100)
    assert_one_activation_per_motif(maps, samples, channel_of)
    for i, s in enumerate(samples):
        for symbol, _ in s.motifs:
            assert maps[i, int(symbol)].sum() == 1  # digit d in channel d


def test_latex_ideal_maps_use_the_motif_classes_in_order_and_leave_spare_channels() -> None:
    d = domains.make("latex-ocr", split="val")
    samples = [d.sample(0, i) for i in range(12)]
    assert any(m.symbol == r"\frac{" for s in samples for m in s.motifs)  # a fraction bar
    channel_of = learning_curve.symbol_channels(d, d.paper_channels)
    assert len(channel_of) == 20 and channel_of["0"] == 0 and channel_of[r"\frac{"] == 19
    maps = learning_curve.ideal_maps(samples, channel_of, 32, d.input_shape)
    assert maps.shape == (12, 32, 120, 360)
    assert_one_activation_per_motif(maps, samples, channel_of)
    assert maps[:, 20:].sum() == 0  # 12 spare channels
    with pytest.raises(ValueError, match=r"latex-ocr has 20 .*--set channels=N with N >= 20"):
        learning_curve.symbol_channels(d, 16)


def test_audio_ideal_maps_are_one_dimensional_over_frames(fsdd_tree: Path) -> None:
    d = learning_curve.make_domain("audio-digits", "val", {}, str(fsdd_tree))
    samples = [d.sample(0, i) for i in range(4)]
    shape = learning_curve.spatial_shape(d)
    assert shape == (642,)
    channel_of = learning_curve.symbol_channels(d, 10)
    maps = learning_curve.ideal_maps(samples, channel_of, 10, shape)
    assert maps.shape == (4, 10, 642)
    assert_one_activation_per_motif(maps, samples, channel_of)
    noisy = learning_curve.noisy_maps(samples, channel_of, 10, shape, 2, 5)
    assert (noisy == learning_curve.noisy_maps(samples, channel_of, 10, shape, 2, 5)).all()
    assert (noisy >= maps).all() and (noisy > 0).sum() > (maps > 0).sum()


def test_decoding_length_is_the_domains_longest_output_and_its_end() -> None:
    for name, params, longest in [
        ("digit-circle", {"max_digits": 4}, 4),
        ("latex-ocr", {"max_length": 7}, 7),
    ]:
        d = domains.make(name, split="val", **params)
        assert learning_curve.decode_length(d) == longest + 1
        assert max(len(d.sample(0, i).tokens) for i in range(30)) <= longest


def test_noisy_maps_add_clutter_inside_boxes_and_out_deterministically() -> None:
    d = domains.make("digit-circle", split="val")
    samples = [d.sample(0, i) for i in range(4)]
    channel_of = learning_curve.symbol_channels(d, 10)
    clean = learning_curve.ideal_maps(samples, channel_of, 10, (100, 100))
    noisy = learning_curve.noisy_maps(samples, channel_of, 10, (100, 100), 3, 20)
    again = learning_curve.noisy_maps(list(reversed(samples)), channel_of, 10, (100, 100), 3, 20)
    assert (noisy == again.flip(0)).all()  # a function of each sample, not of its place
    assert (noisy >= clean).all() and ((noisy > 0) & (noisy <= 1)).sum() > (clean > 0).sum()
    for i, s in enumerate(samples):
        active = int((noisy[i] > 0).sum())
        # collisions may merge a few of them
        assert len(s.tokens) * 4 + 20 - 6 <= active <= len(s.tokens) * 4 + 20
        inside = 0
        for m in s.motifs:
            rows, cols = m.slices
            inside += int((noisy[i][:, rows, cols] > 0).sum())
        assert inside >= len(s.tokens) * 3  # the clean one and most of the extra ones


def test_samples_to_levels() -> None:
    curve = [{"samples": 10, "exact_match": 0.2}, {"samples": 20, "exact_match": 0.6}]
    assert learning_curve.samples_to(curve, 0.5) == 20
    assert learning_curve.samples_to(curve, 0.95) is None


@pytest.mark.parametrize(
    ("domain", "setting", "extra"),
    [
        ("digit-circle", "h-ideal", []),
        ("digit-circle", "sparling", []),
        ("latex-ocr", "h-ideal", ["--domain-param", "max_length=6"]),
        ("audio-digits", "sparling", []),
    ],
)
def test_run_writes_the_curve_in_the_domains_folder_and_plot_draws_it(
    domain: str, setting: str, extra: list[str], tmp_path: Path, fsdd_tree: Path
) -> None:
    if domain == "audio-digits":
        extra = ["--audio-root", str(fsdd_tree), "--recalibrate-bn", "12", "--test-size", "6"]
    label = f"test-{setting}-{tmp_path.name}"
    folder = learning_curve.records_dir(domain)
    created = not folder.exists()
    record = folder / f"{label}.json"
    try:
        done = run_python(
            *["bench/learning_curve.py", "run", setting, "--domain", domain, "--samples", "32"],
            *["--eval-every", "16", "--val-size", "8", "--batch", "8", "--label", label],
            *["--train-size", "16", *TINY, *extra],
        )
        assert done.returncode == 0, done.stderr
        result = json.loads(record.read_text())["results"][0]
        assert result["domain"] == result["domain_spec"]["name"] == domain
        assert [p["samples"] for p in result["curve"]] == [16, 32]
        assert set(result["samples_to"]) == {"50%", "95%"}
        assert result["architecture"]["downstream"]["d_model"] == 32
        assert result["architecture"]["channels"] == {"latex-ocr": 32}.get(domain, 10)
        assert result["train_size"] == 16 and result["cpu_share"] > 0
        # the longest output + 1: 6 digits, max_length=6, 10 spoken digits
        assert result["max_output_len"] == {"audio-digits": 11}.get(domain, 7)
        assert (result["symbol_channels"] is None) == (setting != "h-ideal")
        assert result["recalibrate_bn"] == (12 if domain == "audio-digits" else 0)
        # audio also scores the held-out speaker (theo) at each validation
        held_out = domain == "audio-digits"
        assert result["test_size"] == (6 if held_out else 0)
        for point in result["curve"]:
            assert ("test_exact_match" in point) == held_out
            if held_out:
                assert 0.0 <= point["test_exact_match"] <= 1.0 and point["test_loss"] > 0
        png = tmp_path / "curve.png"
        assert learning_curve.plot([record], png) == png and png.stat().st_size > 1000
    finally:
        record.unlink(missing_ok=True)
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    assert folder == (
        learning_curve.RECORDS if domain == "digit-circle" else learning_curve.RECORDS / domain
    )


def _write_record(path: Path, domain: str | None) -> Path:
    result: dict[str, Any] = {"label": path.stem, "curve": [{"samples": 8, "exact_match": 0.5}]}
    result["curve"][0]["val_loss"] = 1.0
    if domain is not None:  # records from before --domain name none: DigitCircle
        result["domain"] = domain
    path.write_text(json.dumps({"results": [result]}))
    return path


def test_plot_draws_one_figure_per_domain(tmp_path: Path) -> None:
    old = _write_record(tmp_path / "old.json", None)
    latex = _write_record(tmp_path / "latex.json", "latex-ocr")
    audio = _write_record(tmp_path / "audio.json", "audio-digits")
    groups = learning_curve.figures([old, latex, audio], None, None)
    assert groups == [
        ([audio], learning_curve.FIGURE.with_name("learning-curve-audio-digits.png")),
        ([old], learning_curve.FIGURE),  # DigitCircle's figure is where it was
        ([latex], learning_curve.FIGURE.with_name("learning-curve-latex-ocr.png")),
    ]
    out = tmp_path / "latex.png"
    assert learning_curve.figures([old, latex], "latex-ocr", out) == [([latex], out)]
    with pytest.raises(ValueError, match="--out names one figure.*2 domains"):
        learning_curve.figures([old, latex], None, out)
    with pytest.raises(ValueError, match="one figure per domain"):
        learning_curve.plot([old, latex], out)


def _one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        learning_curve.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("learning_curve.py ")
    return err


def test_bad_input_gives_one_line_naming_it_and_what_is_accepted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _one_line_error(["run", "h-ideal", "--domain", "nope"], capsys)
    assert "unknown domain 'nope'" in err and "audio-digits, digit-circle, latex-ocr" in err
    missing = tmp_path / "no-recordings"
    err = _one_line_error(
        ["run", "h-ideal", "--domain", "audio-digits", "--audio-root", str(missing)], capsys
    )
    assert f"folder {missing} does not exist" in err and "--audio-root" in err
    assert "FSDD, ROOT/recordings/" in err  # the layouts accepted
    err = _one_line_error(
        ["run", "h-ideal", "--domain", "latex-ocr", "--set", "channels=8"], capsys
    )
    assert "latex-ocr has 20" in err and "N >= 20" in err
    err = _one_line_error(["run", "h-ideal", "--domain", "latex-ocr", "--audio-root", "x"], capsys)
    # (other test modules may register audio domains of their own: only ours is named here)
    assert "--audio-root is for the audio domains (" in err and "audio-digits" in err
    assert "not latex-ocr" in err
    err = _one_line_error(["run", "h-ideal", "--test-size", "-3"], capsys)
    assert "--test-size must be 0 (none) or a number of test samples, got -3" in err
    err = _one_line_error(["plot", "--domain", "nope"], capsys)
    assert "unknown domain 'nope'" in err
