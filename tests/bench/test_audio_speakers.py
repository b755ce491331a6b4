"""``bench/audio_speakers.py``: one checkpoint scored on the training speakers' clips and on
the held-out speakers', each with the project's metrics."""

from __future__ import annotations

import json
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_config

sys.path.insert(0, str(REPO / "bench"))
import audio_speakers  # noqa: E402


def _fsdd(root: Path) -> Path:
    """An FSDD layout with two speakers (theo is held out), one short tone per digit."""
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


def test_a_checkpoint_is_scored_on_both_speaker_groups(tmp_path: Path) -> None:
    import sparling

    root = _fsdd(tmp_path / "fsdd")
    config = tiny_config(
        **{"domain": {"name": "audio-digits", "params": {"root": str(root)}}, "max_output_len": 12}
    )
    run = sparling.fit(config, tmp_path / "work", progress=False).run_dir
    out = tmp_path / "speakers.json"
    assert audio_speakers.main([str(run), "--samples", "3", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["samples"] == 3 and record["data_seed"] == 1  # the run's data seed + 1
    assert record["checkpoint_samples"] == 48
    val, test = record["splits"]["val"], record["splits"]["test"]
    assert val["speaker_names"] == ["jackson"] and test["speaker_names"] == ["theo"]
    for split in (val, test):
        for key in ("accuracy", "fpe", "fne", "ce", "e2ee"):
            assert 0.0 <= split[key] <= 1.0, (key, split)
        assert split["density"] > 0
    # the two groups are different clips: their scores are not the same record
    assert {k: v for k, v in val.items() if k not in ("speakers", "speaker_names", "seconds")} != {
        k: v for k, v in test.items() if k not in ("speakers", "speaker_names", "seconds")
    }


def test_a_model_of_another_domain_is_refused(tmp_path: Path) -> None:
    import sparling

    run = sparling.fit(tiny_config(), tmp_path / "work", progress=False).run_dir
    with pytest.raises(SystemExit, match="a model of 'digit-circle', not audio-digits"):
        audio_speakers.main([str(run), "--samples", "2"])
