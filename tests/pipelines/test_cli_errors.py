"""Bad input to the command line: one clear line naming what was wrong and what is
accepted, exit code 2, no traceback, and nothing written (the test's folder is left as
it was). Each case is (arguments, exit code, words the message must contain). In the
arguments ``{tmp}`` is the test's folder, holding the files and folders below and a work
directory that must stay absent; ``{ro}`` is a folder in it made read-only (a read-only
bind mount: the case is skipped where mounting is not permitted); ``{run}`` is the folder
of a run trained once for the module, in a work directory of its own that must not change
either."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, read_only, run_python, tiny_config

from sparling.config import load_config

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
    "sweep.yaml": "name: s\nbase: run.yaml\nmethods: [sparling]\nseeds: [0]\n",
    "grid-sweep.yaml": yaml.safe_dump(
        {
            "name": "grid",
            "base": "run.yaml",
            "methods": ["sparling", "l1"],
            "axes": [
                {"field": field, "values": list(range(1, 1001))}
                for field in ("batch_size", "val_interval")
            ],
        }
    ),
    "checkpoint/config.json": load_config(tiny_config()).to_json(),
    "checkpoint/meta.json": '{"density": 0.5, "samples": 3',  # cut short
    "audio-sweep.yaml": yaml.safe_dump(
        {
            "name": "a",
            "base": str(REPO / "pipelines" / "configs" / "audio-digits-paper.yaml"),
            "set": {
                "domain.params.root": "{tmp}/no-recordings",
                "compute.gpus_per_worker": 0,
                "compute.cpus_per_worker": 1,
            },
        }
    ),
    "binary.yaml": "\x00\x01\x02 not yaml \xff",
}
#: folders: one to make read-only, one where a file is expected, a damaged checkpoint
FOLDERS = ["ro", "model.safetensors", "checkpoint"]
W = ["--work-dir", "{tmp}/work"]
NOT_UTF8 = "binary.yaml: not UTF-8 text"
READ_ONLY = "cannot write {ro}/out: Read-only file system"
FILE_NOT_FOLDER = "{tmp}/run.yaml is a file, where a folder is expected"
CORRUPT_META = "{tmp}/checkpoint/meta.json: corrupt checkpoint metadata, not valid JSON"
NO_RECORDINGS = [
    "audio-digits: folder {tmp}/no-recordings does not exist",
    "expected either AudioMNIST",
    "sparling data fetch audiomnist|fsdd",
]
GEN = ["data", "generate", "--domain", "digit-circle", "--split", "test", "--count", "4"]
CASES = [
    (
        ["train", "{tmp}/bad-domain.yaml", *W],
        2,
        ["min_digit: unknown key (did you mean 'min_digits'?)"],
    ),
    (["train", "{tmp}/broken.yaml", *W], 2, ["broken.yaml: not valid YAML: line 3"]),
    (["train", "{tmp}/typo.yaml", *W], 2, ["optm: unknown key (did you mean 'optim'?)"]),
    (["train", "{tmp}/run.yaml", "--set", "optim.lr=[1,", *W], 2, ["--set", "not valid YAML"]),
    (["train", "{tmp}/run.yaml", "--set", "optim.lrr=1", *W], 2, ["optim.lrr"]),
    (["train", "{tmp}/missing.yaml", *W], 2, ["missing.yaml"]),
    (["train", "{tmp}/binary.yaml", *W], 2, [NOT_UTF8]),
    (["train", "{tmp}", *W], 2, ["is a folder"]),
    (
        ["sweep", "{tmp}/dup-sweep.yaml", "--dry-run", *W],
        2,
        ["'seeds' is given twice", "line 4, column 1 and at line 5, column 1"],
    ),
    (
        ["sweep", "{tmp}/typo-sweep.yaml", "--dry-run", *W],
        2,
        ["method: unknown key (did you mean 'methods'?)"],
    ),
    (["sweep", "{tmp}/binary.yaml", "--dry-run", *W], 2, [NOT_UTF8]),
    (
        ["sweep", "{tmp}/grid-sweep.yaml", "--dry-run", *W],
        2,
        ["plans 2,000,000 runs", "over the limit of 10,000 runs", "SPARLING_SWEEP_MAX_RUNS"],
    ),
    (["sweep", "{tmp}", "--dry-run", *W], 2, ["{tmp} is a folder; a sweep is a YAML file"]),
    # the sweep's command-line overrides (checked before anything is made)
    (
        ["sweep", "{tmp}/sweep.yaml", "--seeds", "3-1", *W],
        2,
        ["--seeds '3-1': the range 3-1 goes down; write 1-3"],
    ),
    (
        ["sweep", "{tmp}/sweep.yaml", "--seeds", "0,x", *W],
        2,
        ["--seeds expects seeds as N, N-M or a comma list of them, e.g. 0-8"],
    ),
    (
        ["sweep", "{tmp}/sweep.yaml", "--methods", "sparlin,l1", *W],
        2,
        ["--methods: no method 'sparlin' in", "(did you mean 'sparling'?); accepted: sparling"],
    ),
    (
        ["sweep", "{tmp}/sweep.yaml", "--set", "optim.lrr=1", *W],
        2,
        ["--set: optim.lrr: unknown config field 'optim.lrr' (did you mean 'lr'?)"],
    ),
    (
        ["sweep", "{tmp}/grid-sweep.yaml", "--set", "batch_size=4", "--dry-run", *W],
        2,
        ["--set batch_size: {tmp}/grid-sweep.yaml varies it per run (the axes vary it)"],
    ),
    (["sweep", "{tmp}/sweep.yaml", "--set", "seed=1", *W], 2, ["use --seeds"]),
    # the MLflow settings file named by the flag: missing, broken, or contradicted
    (
        ["sweep", "{tmp}/sweep.yaml", "--dry-run", "--mlflow-config", "{tmp}/missing.yaml", *W],
        2,
        ["MLflow settings file not found: {tmp}/missing.yaml (--mlflow-config; it does not"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", "--mlflow-config", "{tmp}/broken.yaml", *W],
        2,
        ["{tmp}/broken.yaml: not valid YAML: line 3"],
    ),
    (
        ["report", "quickstart", "--mlflow-config", "{tmp}/typo.yaml", *W],
        2,
        ["{tmp}/typo.yaml: invalid MLflow settings: ", "optm: unknown key"],
    ),
    (
        ["sweep", "{tmp}/sweep.yaml", "--no-tracking", "--mlflow-config", "{tmp}/run.yaml", *W],
        2,
        ["--mlflow-config names where to track; --no-tracking tracks nothing"],
    ),
    # which finished runs to train again
    (
        ["sweep", "{tmp}/sweep.yaml", "--dry-run", "--rerun", "chnaged", *W],
        2,
        ["--rerun 'chnaged': unknown 'chnaged'; accepted: changed (the finished runs whose"],
    ),
    (
        ["sweep", "{tmp}/sweep.yaml", "--rerun", "changed", "--no-tracking", *W],
        2,
        ["--rerun changed compares the commit each run's MLflow runs record"],
    ),
    (["report", "{tmp}", *W], 2, ["{tmp} is a folder; a sweep is a YAML file"]),
    (["report", "quickstart", *W], 2, ["no MLflow tracking store at {tmp}/work/mlflow/mlflow.db"]),
    (["evaluate", "{tmp}/model.safetensors", *W], 2, ["model.safetensors is a folder"]),
    (["evaluate", "{tmp}/checkpoint", "--samples", "4"], 2, [CORRUPT_META]),
    (["export", "{tmp}/checkpoint", "--out", "{tmp}/m.safetensors"], 2, [CORRUPT_META]),
    # the dry run checks what the real run checks before its first step
    (["sweep", "{tmp}/audio-sweep.yaml", "--dry-run", *W], 2, NO_RECORDINGS),
    (["sweep", "{tmp}/audio-sweep.yaml", "--executor", "local", *W], 2, NO_RECORDINGS),
    (["sweep", "{tmp}/audio-sweep.yaml", *W], 2, NO_RECORDINGS),
    (
        ["train", str(REPO / "pipelines" / "configs" / "audio-digits-paper.yaml"), *W]
        + ["--set", "domain.params.root={tmp}/no-recordings", "--set", "compute.gpus_per_worker=0"]
        + ["--set", "compute.cpus_per_worker=1"],
        2,
        NO_RECORDINGS,
    ),
    # the filesystem refuses a path given for output: the path and the cause
    (["train", "{tmp}/run.yaml", "--work-dir", "{ro}/out"], 2, [READ_ONLY]),
    (["train", "{tmp}/run.yaml", "--work-dir", "{tmp}/run.yaml"], 2, [FILE_NOT_FOLDER]),
    (
        ["train", "{tmp}/run.yaml", "--work-dir", "{tmp}/run.yaml/deeper"],
        2,
        [FILE_NOT_FOLDER, "(to hold {tmp}/run.yaml/deeper/"],
    ),
    (
        ["sweep", "{tmp}/sweep.yaml", "--executor", "local", "--work-dir", "{ro}/out"],
        2,
        [READ_ONLY],
    ),
    (["sweep", "{tmp}/sweep.yaml", "--work-dir", "{ro}/out"], 2, [READ_ONLY]),
    (["sweep", "{tmp}/sweep.yaml", "--work-dir", "{tmp}/run.yaml"], 2, [FILE_NOT_FOLDER]),
    (["ui", "--work-dir", "{ro}/out"], 2, [READ_ONLY]),
    (["demo", "--showcase-samples", "0", "--work-dir", "{ro}/out"], 2, [READ_ONLY]),
    ([*GEN, "--out", "{ro}/out", "--quiet"], 2, [READ_ONLY]),
    ([*GEN, "--out", "{tmp}/run.yaml", "--quiet"], 2, [FILE_NOT_FOLDER]),
    (["data", "fetch", "fsdd", "--to", "{ro}/out", "--url", "file:///nowhere.zip"], 2, [READ_ONLY]),
    (["evaluate", "{run}", "--samples", "4", "--out", "{ro}/out"], 2, [READ_ONLY]),
    (["evaluate", "{run}", "--samples", "4", "--out", "{tmp}/run.yaml"], 2, [FILE_NOT_FOLDER]),
    (
        ["export", "{run}", "--out", "{ro}/out.safetensors"],
        2,
        ["cannot write {ro}/out.safetensors: Read-only file system"],
    ),
    (
        ["export", "{run}", "--out", "{tmp}/model.safetensors"],
        2,
        ["{tmp}/model.safetensors is a folder, where a file is expected"],
    ),
]
if not torch.cuda.is_available():
    CASES += [
        (
            ["sweep", "{tmp}/typo-sweep.yaml", "--executor", "local", "--device", "cuda", *W],
            2,
            ["this machine has no GPU"],
        ),
        (["evaluate", "{tmp}/nothing/last", "--device", "cuda:0"], 2, ["this machine has no GPU"]),
    ]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run's folder, in a work directory of its own."""
    import sparling

    return sparling.fit(
        tiny_config(), tmp_path_factory.mktemp("trained") / "work", progress=False
    ).run_dir


@pytest.mark.parametrize(
    ("args", "code", "words"), CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input_gets_one_clear_line_and_writes_nothing(
    tmp_path: Path, request: pytest.FixtureRequest, args: list[str], code: int, words: list[str]
) -> None:
    for name in FOLDERS:
        (tmp_path / name).mkdir()
    for name, text in FILES.items():
        text = text.replace("{tmp}", str(tmp_path))
        (tmp_path / name).write_text(text, encoding="latin-1" if name == "binary.yaml" else "utf-8")
    run = request.getfixturevalue("trained_run") if any("{run}" in a for a in args) else None
    places = {"tmp": tmp_path, "ro": tmp_path / "ro", "run": run}
    work = run.parents[1] if run else tmp_path
    before, work_before = _tree(tmp_path), _tree(work)
    mount = read_only(tmp_path / "ro") if any("{ro}" in a for a in args) else None
    with mount or contextlib.nullcontext():
        out = run_python("-m", "pipelines.cli", *[a.format(**places) for a in args], timeout=120)
    assert out.returncode == code, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    for w in words:
        assert w.format(**places) in out.stderr, out.stderr
    assert _tree(tmp_path) == before  # no work dir, no debris
    assert _tree(work) == work_before  # the trained run's work dir: nothing added


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


def test_output_to_a_closed_pipe_ends_quietly_with_141(tmp_path: Path) -> None:
    """``sparling sweep --dry-run | head -1``: once the reader has gone, the command stops
    as a shell command does (128 + SIGPIPE), without a BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    from conftest import subprocess_env

    (tmp_path / "run.yaml").write_text(CONFIG)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: run.yaml\nmethods: [sparling, l1]\nseeds: [0, 1, 2]\n")
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first line
    try:
        out = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "sweep", str(sweep), "--dry-run"]
            + ["--no-tracking", "--work-dir", str(tmp_path / "work")],
            cwd=REPO,
            env=subprocess_env(),
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert out.returncode == 141, out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr, out.stderr
    assert not (tmp_path / "work").exists()


def test_a_local_run_refused_by_its_checkpoint_fails_in_one_line(
    tmp_path: Path, trained_run: Path
) -> None:
    """A run of the local executor that fails on an error naming its cause (here a
    checkpoint cut short) says so in one line, not a traceback; the sweep exits 1."""
    import shutil

    work = tmp_path / "work"
    shutil.copytree(trained_run.parents[1], work)
    run = work / "runs" / trained_run.name
    (run / "result.json").unlink()  # not finished: it resumes from the checkpoint
    state = run / "checkpoints" / "last" / "state.pt"
    os_size = state.stat().st_size
    with open(state, "r+b") as f:
        f.truncate(os_size // 2)
    (tmp_path / "run.yaml").write_text(CONFIG)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: run.yaml\nmethods: [sparling]\nseeds: [0]\n")
    out = run_python(
        "-m", "pipelines.cli", "sweep", str(sweep), "--executor", "local", "--no-tracking",
        "--no-report", "--quiet", "--work-dir", str(work), timeout=300,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert "CheckpointError: checkpoint file is corrupted or truncated" in out.stderr, out.stderr
    assert "1 failed" in out.stdout + out.stderr
