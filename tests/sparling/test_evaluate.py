"""Evaluation: known errors on synthetic activation maps; checkpoint selection; figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sparling import domains
from sparling.domains import Sample
from sparling.evaluate import Evaluation, evaluate_model, write_report


class _ScriptedModel:
    """Stands in for a SparlingModel: returns prepared activation maps and outputs."""

    def __init__(self, maps: list[np.ndarray], outputs: list[list[str]]) -> None:
        self.maps, self.outputs, self.pos = maps, outputs, 0

    def eval(self) -> None:
        pass

    def motifs(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return torch.from_numpy(np.stack(self.maps[self.pos : self.pos + n]))

    def decode(self, x: torch.Tensor, max_len: int) -> list[list[str]]:
        n = x.shape[0]
        out = self.outputs[self.pos : self.pos + n]
        self.pos += n
        return out


def _perfect_map(sample: Sample, channels: int = 10) -> np.ndarray:
    a = np.zeros((channels, *sample.x.shape), dtype=np.float32)
    for symbol, (rs, cs) in sample.motifs:
        a[int(symbol), rs.start + 2, cs.start + 2] = 1.0  # channel c fires on digit c
    return a


def test_known_errors_on_synthetic_maps() -> None:
    d = domains.make("digit-circle", split="test")
    data = [d.sample(0, i) for i in range(20)]
    maps = [_perfect_map(s) for s in data]
    outputs = [list(s.tokens) for s in data]
    perfect = evaluate_model(_ScriptedModel(maps, outputs), d, data, batch_size=6)  # type: ignore[arg-type]
    assert (perfect.metrics["fpe"], perfect.metrics["fne"], perfect.metrics["ce"]) == (0, 0, 0)
    assert perfect.metrics["e2ee"] == 0 and perfect.metrics["accuracy"] == 1
    n_motifs = sum(len(s.motifs) for s in data)
    assert perfect.metrics["density"] == pytest.approx(n_motifs / (20 * 10 * 100 * 100))

    # Now damage it in known ways: drop sample 0's first motif, add 3 stray activations in
    # sample 1, and make the last sample's output lose one token.
    maps = [m.copy() for m in maps]
    (_, (rs, cs)) = data[0].motifs[0]
    maps[0][:, rs, cs] = 0
    maps[1][0, 0, 0:3] = 0.5  # the image corner: never inside a stamp box
    outputs = [list(o) for o in outputs]
    outputs[-1] = outputs[-1][1:]
    r = evaluate_model(_ScriptedModel(maps, outputs), d, data, batch_size=7)  # type: ignore[arg-type]
    assert r.metrics["fne"] == pytest.approx(1 / n_motifs)
    assert r.metrics["fpe"] == pytest.approx(3 / (3 + n_motifs - 1))
    assert r.metrics["ce"] == 0
    assert r.metrics["e2ee"] == pytest.approx(1 / len(data[-1].tokens) / 20)


def test_report_files(tmp_path: Path) -> None:
    d = domains.make("digit-circle", split="test")
    data = [d.sample(0, i) for i in range(4)]
    result: Evaluation = evaluate_model(
        _ScriptedModel([_perfect_map(s) for s in data], [s.tokens for s in data]),  # type: ignore[arg-type]
        d,
        data,
    )
    paths = write_report(result, d, tmp_path)
    assert [p.name for p in paths] == ["evaluation.json", "confusion.png", "activations.png"]
    for p in paths[1:]:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5_000
    import json

    doc: dict[str, Any] = json.loads(paths[0].read_text())
    assert doc["fne"] == 0 and len(doc["confusion"]) == 10
