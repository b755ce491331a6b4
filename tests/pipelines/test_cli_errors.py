"""Bad input to the command line: one clear line naming what was wrong and what is
accepted, a non-zero exit, no traceback, and nothing written (the work directory is
left as it was). Each case is (arguments, words the message must contain); ``{tmp}`` is
the test's folder, holding the files below and a work directory that must stay absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_python, tiny_config

CONFIG = yaml.safe_dump(tiny_config())
FILES = {
    "run.yaml": CONFIG,
    "bad-domain.yaml": yaml.safe_dump(
        tiny_config(domain={"name": "digit-circle", "params": {"min_digit": 2}})
    ),
    "broken.yaml": "domain:\n  name: [digit-circle\n",
    "typo.yaml": CONFIG + "optm: {lr: 0.1}\n",
    "dup-sweep.yaml": "name: d\nbase: run.yaml\nmethods: [sparling]\nseeds: [0, 1, 2]\nseeds: [7]\n",
    "typo-sweep.yaml": "name: t\nbase: run.yaml\nmethod: [sparling]\n",
    "binary.yaml": "\x00\x01\x02 not yaml \xff",
}
W = ["--work-dir", "{tmp}/work"]
CASES = [
    (
        ["train", "{tmp}/bad-domain.yaml", *W],
        ["min_digit: unknown key (did you mean 'min_digits'?)"],
    ),
    (["train", "{tmp}/broken.yaml", *W], ["broken.yaml: not valid YAML: line 3"]),
    (["train", "{tmp}/typo.yaml", *W], ["optm: unknown key (did you mean 'optim'?)"]),
    (["train", "{tmp}/run.yaml", "--set", "optim.lr=[1,", *W], ["--set", "not valid YAML"]),
    (["train", "{tmp}/run.yaml", "--set", "optim.lrr=1", *W], ["optim.lrr"]),
    (["train", "{tmp}/missing.yaml", *W], ["missing.yaml"]),
    (["train", "{tmp}/binary.yaml", *W], ["binary.yaml"]),
    (["train", "{tmp}", *W], ["is a folder"]),
    (
        ["sweep", "{tmp}/dup-sweep.yaml", "--dry-run", *W],
        ["'seeds' is given twice", "line 4 and at line 5"],
    ),
    (
        ["sweep", "{tmp}/typo-sweep.yaml", "--dry-run", *W],
        ["method: unknown key (did you mean 'methods'?)"],
    ),
]
if not torch.cuda.is_available():
    CASES += [
        (
            ["sweep", "{tmp}/typo-sweep.yaml", "--executor", "local", "--device", "cuda", *W],
            ["this machine has no GPU"],
        ),
        (["evaluate", "{tmp}/nothing/last", "--device", "cuda:0"], ["this machine has no GPU"]),
    ]


@pytest.mark.parametrize(
    ("args", "words"), CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_gets_one_clear_line_and_writes_nothing(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    for name, text in FILES.items():
        (tmp_path / name).write_text(text, encoding="latin-1" if name == "binary.yaml" else "utf-8")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run_python("-m", "pipelines.cli", *[a.format(tmp=tmp_path) for a in args], timeout=120)
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no work dir, no debris


def test_evaluate_a_checkpoint_copied_out_of_its_run_writes_only_beside_it(tmp_path: Path) -> None:
    import shutil

    import sparling

    result = sparling.fit(tiny_config(), tmp_path / "work", progress=False)
    copy = tmp_path / "x" / "deep" / "a" / "b" / "last"
    shutil.copytree(result.run_dir / "checkpoints" / "last", copy)
    out = run_python("-m", "pipelines.cli", "evaluate", str(copy), "--samples", "8", timeout=300)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["deep"]  # no data/ above
    assert sorted(p.name for p in copy.parent.iterdir()) == ["evaluation-last", "last"]
    assert (copy.parent / "evaluation-last" / "evaluation.json").is_file()
