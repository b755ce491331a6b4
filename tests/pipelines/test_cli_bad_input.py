"""Bad input to every command, second round: what a new user types wrong (empty files, a
list where a mapping is expected, wrong types, paths that are loops of symbolic links or
files where folders are expected, out-of-range numbers, bad environment variables, GPUs
this machine lacks) gets exit code 2 and one clear line naming what was wrong and what is
accepted, no traceback, and nothing written.

The command line's ``main`` is called in this process (fast: every case fails before any
training, Ray or MLflow server would start). Each case is (arguments, environment, exit
code, words the output must contain). In the arguments ``{tmp}`` is the test's folder
(the files below, a work directory that must stay absent, two symbolic links that point
at each other: ``loop`` and ``loop.yaml``), ``{ro}`` a read-only folder in it (a read-only
bind mount: the case is skipped where mounting is not permitted), ``{run}`` a run trained
once for the module and ``{work}`` its work directory, ``{model}`` that run exported; the
trained run's work directory and the exported model must not change either.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import read_only, tiny_config

from pipelines import cli

CONFIG = tiny_config()
SWEEP = "name: s\nbase: run.yaml\nmethods: [sparling]\nseeds: [0]\n"
FILES = {
    "run.yaml": yaml.safe_dump(CONFIG),
    "empty.yaml": "",
    "comment.yaml": "# only a comment\n",
    "list.yaml": "- a\n- b\n",
    "scalar.yaml": "hello\n",
    "neg-batch.yaml": yaml.safe_dump(tiny_config(batch_size=-1)),
    "lr-abc.yaml": yaml.safe_dump(tiny_config(**{"optim.lr": "abc"})),
    "bn-unknown.yaml": yaml.safe_dump(tiny_config(**{"bottleneck.name": "sparlin"})),
    "init-missing.yaml": yaml.safe_dump(tiny_config(init_from="{tmp}/nothing")),
    "sw.yaml": SWEEP,
    "sw-empty.yaml": "",
    "sw-list.yaml": "- name: s\n",
    "sw-seeds-a.yaml": SWEEP.replace("seeds: [0]", 'seeds: "a"'),
    "sw-base-dir.yaml": SWEEP.replace("run.yaml", "folder"),
    "sw-base-empty.yaml": SWEEP.replace("run.yaml", "empty.yaml"),
    "sw-base-list.yaml": SWEEP.replace("run.yaml", "list.yaml"),
    "sw-gpu.yaml": SWEEP + "set: {compute.gpus_per_worker: 1}\n",
    "mlflow-list.yaml": "- local\n",
    # third round
    "deep.yaml": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "bell.yaml": "seed: 1\nbatch_size: \x07\n",
    "flowdup.yaml": "optim: {lr: 1, lr: 2}\n",
    "channels-override.yaml": yaml.safe_dump(tiny_config(**{"model.overrides.channels": 8})),
    "big-seed.yaml": yaml.safe_dump(tiny_config(seed=2**32)),
    "inf-lr.yaml": yaml.safe_dump(tiny_config(**{"optim.lr": float("inf")})),
    "thresholds.yaml": yaml.safe_dump(
        tiny_config(**{"schedule.min_threshold": 0.9, "schedule.max_threshold": 0.5})
    ),
    "sw-big-seed.yaml": SWEEP.replace("seeds: [0]", "seeds: [4294967296]"),
    "srv.yaml": "profile: server\n",
    "sw-base-sweep.yaml": SWEEP.replace("run.yaml", "sw.yaml"),
    "empty.safetensors": "",
    "text.safetensors": "not a model\n",
}
FOLDERS = ["folder", "ro"]
W = ["--work-dir", "{tmp}/work"]
LOOP = "{tmp}/loop is a loop of symbolic links (they lead to one another, never to a file"
LOOP_FILE = "{tmp}/loop.yaml is a loop of symbolic links"
FILE_NOT_FOLDER = "{tmp}/run.yaml is a file, where a folder is expected"
EMPTY_PATH = "an empty path; give a file or folder name"
GEN = ["data", "generate", "--domain", "digit-circle", "--split", "test", "--count", "4"]
OUT = ["--out", "{tmp}/data", "--quiet"]
NO_GPU = ["needs 1 GPU(s); the local Ray instance has 0", "compute.gpus_per_worker=0"]
NOT_A_RUN = "a run folder (<work-dir>/runs/<run id>, holding checkpoints/) or a checkpoint"
NO_ENV: dict[str, str] = {}

CASES: list[tuple[list[str], dict[str, str], int, list[str]]] = [
    # -- train: run configs that are empty, not a mapping, of the wrong types -------------
    (
        ["train", "{tmp}/empty.yaml", *W],
        NO_ENV,
        2,
        ["{tmp}/empty.yaml: the file is empty (no YAML in it); a run config is a mapping"]
        + ["write {{}} to use every default"],
    ),
    (["train", "{tmp}/comment.yaml", *W], NO_ENV, 2, ["comment.yaml: the file is empty"]),
    (
        ["train", "{tmp}/list.yaml", *W],
        NO_ENV,
        2,
        ["a run config must be a mapping of keys", "but the file holds a list of 2 item(s)"],
    ),
    (["train", "{tmp}/scalar.yaml", *W], NO_ENV, 2, ["the file holds the text 'hello'"]),
    (
        ["train", "{tmp}/neg-batch.yaml", *W],
        NO_ENV,
        2,
        ["batch_size: Input should be greater than or equal to 1"],
    ),
    (["train", "{tmp}/lr-abc.yaml", *W], NO_ENV, 2, ["optim.lr: Input should be a valid number"]),
    (
        ["train", "{tmp}/bn-unknown.yaml", *W],
        NO_ENV,
        2,
        ["unknown bottleneck 'sparlin' (did you mean 'sparling'?); accepted: ", "sparling"],
    ),
    (
        ["train", "{tmp}/init-missing.yaml", *W],
        NO_ENV,
        2,
        ["init_from '{tmp}/nothing'", "folder not found: {tmp}/nothing", NOT_A_RUN],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "batch_size", *W],
        NO_ENV,
        2,
        ["--set expects key=value, got 'batch_size'"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "seed=1", "--set", "seed=2", *W],
        NO_ENV,
        2,
        ["--set seed is given twice; keep one"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--set", "budget_samples=8"]
        + ["--set", " budget_samples=16", *W],
        NO_ENV,
        2,
        ["--set budget_samples is given twice"],
    ),
    (
        [*GEN, "--param", "min_digits=3", "--param", "min_digits=4", *OUT],
        NO_ENV,
        2,
        ["--param min_digits is given twice"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "seed=abc", *W],
        NO_ENV,
        2,
        ["seed: Input should be a valid integer"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "domain.name=nope", *W],
        NO_ENV,
        2,
        ["unknown domain 'nope'; accepted names: ", "digit-circle"],
    ),
    (["train", "{tmp}/loop.yaml", *W], NO_ENV, 2, [LOOP_FILE, "a config file is expected"]),
    (["train", "{tmp}/loop/run.yaml", *W], NO_ENV, 2, ["{tmp}/loop/run.yaml is a loop"]),
    (["train", "{tmp}/run.yaml", "--work-dir", ""], NO_ENV, 2, ["--work-dir: " + EMPTY_PATH]),
    (["train", "{tmp}/run.yaml", "--work-dir", "{tmp}/loop"], NO_ENV, 2, [LOOP]),
    (
        ["train", "{tmp}/run.yaml", "--dry-run"],
        {"SPARLING_WORK_DIR": "{tmp}/run.yaml"},
        2,
        [FILE_NOT_FOLDER],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", *W],
        {"SPARLING_MLFLOW_CONFIG": "{tmp}/mlflow-list.yaml"},
        2,
        ["mlflow-list.yaml: MLflow settings must be a mapping of keys such as `profile: local`"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", *W],
        {"SPARLING_YAML_MAX_BYTES": "abc"},
        2,
        ["SPARLING_YAML_MAX_BYTES must be a whole number, got 'abc'"],
    ),
    # -- sweep: the file, its base, the overrides, the environment, GPUs -------------------
    (
        ["sweep", "{tmp}/sw-empty.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["sw-empty.yaml: the file is empty (no YAML in it); a sweep is a mapping of keys"],
    ),
    (
        ["sweep", "{tmp}/sw-list.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["a sweep must be a mapping of keys such as `name: my-sweep`, but the file holds a list"],
    ),
    (
        ["sweep", "{tmp}/sw-seeds-a.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["invalid sweep", "seeds: Input should be a valid list"],
    ),
    (
        ["sweep", "{tmp}/sw-base-dir.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["base: {tmp}/folder is a folder; a run config is a YAML file"],
    ),
    (
        ["sweep", "{tmp}/sw-base-empty.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["base: {tmp}/empty.yaml: the file is empty"],
    ),
    (
        ["sweep", "{tmp}/sw-base-list.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["base: {tmp}/list.yaml: a run config must be a mapping of keys"],
    ),
    (
        ["sweep", "quikstart", "--dry-run", *W],
        NO_ENV,
        2,
        ["no sweep file 'quikstart' (did you mean 'quickstart'?); shipped sweeps: "],
    ),
    (["sweep", "{tmp}/loop.yaml", "--dry-run", *W], NO_ENV, 2, [LOOP_FILE, "shipped sweeps"]),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--seeds", "-1", *W],
        NO_ENV,
        2,
        ["--seeds expects seeds as N, N-M or a comma list"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--methods", ",", *W],
        NO_ENV,
        2,
        ["--methods expects comma-separated method names"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", *W],
        {"SPARLING_SWEEP_MAX_RUNS": "abc"},
        2,
        ["SPARLING_SWEEP_MAX_RUNS must be a whole number, got 'abc'"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--seeds", "0-3", *W],
        {"SPARLING_SWEEP_MAX_RUNS": "0"},
        2,
        ["SPARLING_SWEEP_MAX_RUNS must be at least 1, got 0"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", *W],
        {"SPARLING_MLFLOW_CONFIG": "{tmp}/nothing.yaml"},
        2,
        ["MLflow settings file not found: {tmp}/nothing.yaml ($SPARLING_MLFLOW_CONFIG; it does"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--executor", "local", "--deadline", "nan", *W],
        NO_ENV,
        2,
        ["argument --deadline: must be a positive number of seconds, got nan"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--executor", "local", "--parallel", "0", *W],
        NO_ENV,
        2,
        ["argument --parallel: must be at least 1, got 0"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--executor", "local", "--pack", "{tmp}/run.yaml/x", *W],
        NO_ENV,
        2,
        [FILE_NOT_FOLDER, "(to hold {tmp}/run.yaml/x-1.tgz)"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--pack", "x", *W],
        NO_ENV,
        2,
        ["--pack applies to --executor local only"],
    ),
    (["sweep", "{tmp}/sw.yaml", "--dry-run", "--work-dir", "{tmp}/loop"], NO_ENV, 2, [LOOP]),
    # -- evaluate: what is no run, checkpoint or model; numbers out of range ---------------
    (
        ["evaluate", "{tmp}/nothing", "--samples", "4"],
        NO_ENV,
        2,
        ["neither a run folder nor a checkpoint: folder not found: {tmp}/nothing", NOT_A_RUN],
    ),
    (
        ["evaluate", "{tmp}/folder", "--samples", "4"],
        NO_ENV,
        2,
        ["{tmp}/folder holds neither checkpoints/ nor meta.json", NOT_A_RUN],
    ),
    (
        ["evaluate", "{run_id}", "--samples", "4", "--work-dir", "{work}"],
        NO_ENV,
        2,
        ["no folder '{run_id}' here; run {run_id} of the work dir {work} is the folder {run}"],
    ),
    (
        ["evaluate", "{tmp}/empty.safetensors", *W],
        NO_ENV,
        2,
        ["empty.safetensors is not a readable safetensors file"],
    ),
    (
        ["evaluate", "{tmp}/text.safetensors", *W],
        NO_ENV,
        2,
        ["text.safetensors is not a readable safetensors file"],
    ),
    (
        ["evaluate", "{tmp}/cut.safetensors", *W],
        NO_ENV,
        2,
        ["cut.safetensors is not a readable safetensors file"],
    ),
    (
        ["evaluate", "{tmp}/plain.safetensors", *W],
        NO_ENV,
        2,
        ["plain.safetensors is not a Sparling model export", "write one with `sparling export`"],
    ),
    (["evaluate", "{tmp}/loop.safetensors", *W], NO_ENV, 2, ["loop.safetensors is a loop"]),
    (
        ["evaluate", "{model}", "--samples", "0", *W],
        NO_ENV,
        2,
        ["argument --samples: must be at least 1, got 0"],
    ),
    (
        ["evaluate", "{model}", "--data-seed", "-1", *W],
        NO_ENV,
        2,
        ["argument --data-seed: must be from 0 to 4,294,967,295, got -1"],
    ),
    (["evaluate", "{model}", "--out", "{tmp}/loop", *W], NO_ENV, 2, [LOOP]),
    (
        ["evaluate", "{run}", "--samples", "-1"],
        NO_ENV,
        2,
        ["argument --samples: must be at least 1, got -1"],
    ),
    (
        ["evaluate", "{run}", "--density", "2"],
        NO_ENV,
        2,
        ["argument --density: a density is a fraction above 0 and at most 1"],
    ),
    (["evaluate", "{run}", "--density", "nan"], NO_ENV, 2, ["a density is a fraction above 0"]),
    (
        ["evaluate", "{run}", "--density", "0.001"],
        NO_ENV,
        2,
        ["has no checkpoint at density >= 0.001 (it kept none", "chosen when no density is"],
    ),
    (
        ["evaluate", "{tmp}/no-state", "--samples", "4"],
        NO_ENV,
        2,
        ["checkpoint has no state.pt: {tmp}/no-state"],
    ),
    (
        ["evaluate", "{tmp}/cut-state", "--samples", "4"],
        NO_ENV,
        2,
        ["checkpoint file is corrupted or truncated (sha256 mismatch): {tmp}/cut-state/state.pt"],
    ),
    # -- export ----------------------------------------------------------------------------
    (
        ["export", "{model}", "--out", "{tmp}/m.safetensors"],
        NO_ENV,
        2,
        ["{model} is a file (an exported model)", NOT_A_RUN],
    ),
    (
        ["export", "{run}", "--density", "5", "--out", "{tmp}/m.safetensors"],
        NO_ENV,
        2,
        ["argument --density: a density is a fraction above 0 and at most 1"],
    ),
    (["export", "{run}", "--out", "{tmp}/loop/m.safetensors"], NO_ENV, 2, [LOOP]),
    (["export", "{run}", "--out", ""], NO_ENV, 2, ["argument --out: " + EMPTY_PATH]),
    (
        ["export", "{tmp}/cut-state", "--out", "{tmp}/m.safetensors"],
        NO_ENV,
        2,
        ["(sha256 mismatch): {tmp}/cut-state/state.pt"],
    ),
    # -- report: where it would write, and what it reads ------------------------------------
    (
        ["report", "quickstart", "--out", "{ro}/out", *W],
        NO_ENV,
        2,
        ["cannot write {ro}/out: Read-only file system"],
    ),
    (
        ["report", "quickstart", "--out", "{tmp}/run.yaml", *W],
        NO_ENV,
        2,
        [FILE_NOT_FOLDER],
    ),
    (["report", "quickstart", "--work-dir", "{tmp}/run.yaml"], NO_ENV, 2, [FILE_NOT_FOLDER]),
    (["report", "quickstart", "--work-dir", "{tmp}/loop"], NO_ENV, 2, [LOOP]),
    (["report", "{tmp}/sw-empty.yaml", *W], NO_ENV, 2, ["sw-empty.yaml: the file is empty"]),
    # -- data generate / fetch ------------------------------------------------------------------
    (
        ["data", "generate", "--domain", "digit-circle", "--split", "test", "--count", "0", *OUT],
        NO_ENV,
        2,
        ["argument --count: must be at least 1, got 0"],
    ),
    ([*GEN, "--shards", "0", *OUT], NO_ENV, 2, ["argument --shards: must be at least 1, got 0"]),
    ([*GEN, "--seed", "-1", *OUT], NO_ENV, 2, ["argument --seed: must be from 0 to"]),
    ([*GEN, "--param", "min_digits", *OUT], NO_ENV, 2, ["--param expects key=value"]),
    ([*GEN, "--out", "", "--quiet"], NO_ENV, 2, ["argument --out: " + EMPTY_PATH]),
    ([*GEN, "--out", "{tmp}/loop", "--quiet"], NO_ENV, 2, [LOOP]),
    (
        ["data", "fetch", "fsdd", "--to", "", "--url", "file:///nowhere.zip"],
        NO_ENV,
        2,
        ["argument --to: " + EMPTY_PATH],
    ),
    (
        ["data", "fetch", "fsdd", "--to", "{tmp}/fsdd", "--sha256", "xyz", "--url", "file:///x"],
        NO_ENV,
        2,
        ["sha256 must be 64 hexadecimal digits, got 'xyz'"],
    ),
    # -- RAY_ADDRESS naming no Ray head: said at once (Ray would retry it for minutes) ----
    (
        [*GEN, *OUT],
        {"RAY_ADDRESS": "127.0.0.1:1"},
        2,
        ["RAY_ADDRESS=127.0.0.1:1: nothing answers at 127.0.0.1:1 (Connection refused)"]
        + ["unset RAY_ADDRESS to run on a local Ray instance"],
    ),
    (["train", "{tmp}/run.yaml", *W], {"RAY_ADDRESS": "127.0.0.1:1"}, 2, ["nothing answers"]),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", *W],
        {"RAY_ADDRESS": "127.0.0.1:1"},
        2,
        ["nothing answers"],
    ),
    (["sweep", "{tmp}/sw.yaml", *W], {"RAY_ADDRESS": "127.0.0.1:1"}, 2, ["nothing answers"]),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", *W],
        {"RAY_ADDRESS": "head-node"},
        2,
        ["RAY_ADDRESS='head-node' is no Ray address: expected host:port"],
    ),
    # -- ui and demo -----------------------------------------------------------------------------
    (["ui", "--port", "0", *W], NO_ENV, 2, ["argument --port: must be from 1 to 65,535, got 0"]),
    (["ui", "--port", "99999", *W], NO_ENV, 2, ["leave --port out for a free one"]),
    (["ui", "--work-dir", "{tmp}/run.yaml"], NO_ENV, 2, [FILE_NOT_FOLDER]),
    (["ui", "--work-dir", "{tmp}/loop"], NO_ENV, 2, [LOOP]),
    (["ui"], {"SPARLING_WORK_DIR": "{tmp}/run.yaml"}, 2, [FILE_NOT_FOLDER]),
    # ~ in the variable is the home folder (it used to be a folder named ~ here)
    (["ui"], {"HOME": "{tmp}", "SPARLING_WORK_DIR": "~/run.yaml"}, 2, [FILE_NOT_FOLDER]),
    (
        ["ui", *W],
        {"SPARLING_MLFLOW_CONFIG": "{tmp}/mlflow-list.yaml"},
        2,
        ["MLflow settings must be a mapping of keys"],
    ),
    (
        ["demo", "--showcase-samples", "-1", *W],
        NO_ENV,
        2,
        ["argument --showcase-samples: must be at least 0, got -1"],
    ),
    # the demo refuses what its sweep would refuse before it scores the shipped models
    (["demo", "--work-dir", "{tmp}/run.yaml"], NO_ENV, 2, [FILE_NOT_FOLDER]),
    (["demo", "--work-dir", "{tmp}/loop"], NO_ENV, 2, [LOOP]),
    (
        ["demo", *W],
        {"SPARLING_MLFLOW_CONFIG": "{tmp}/nothing.yaml"},
        2,
        ["MLflow settings file not found: {tmp}/nothing.yaml"],
    ),
]
if not torch.cuda.is_available():
    CASES += [
        # a sweep asking for GPUs on this machine's own Ray: refused at once, dry run or not
        (["sweep", "{tmp}/sw-gpu.yaml", "--dry-run", *W], NO_ENV, 2, NO_GPU),
        (["sweep", "{tmp}/sw-gpu.yaml", *W], NO_ENV, 2, [*NO_GPU, "nothing was started"]),
        # on a cluster (which may add GPU nodes) it is planned, and the dry run says so
        (
            ["sweep", "{tmp}/sw-gpu.yaml", "--dry-run", *W],
            {"RAY_ADDRESS": "{head}"},
            0,
            ["1 run(s) ask for GPUs", "on the cluster at RAY_ADDRESS they wait for nodes with"],
        ),
        # sparling train: the same, dry run included
        (
            ["train", "{tmp}/run.yaml", "--dry-run", "--set", "compute.gpus_per_worker=1", *W],
            NO_ENV,
            2,
            NO_GPU,
        ),
        (
            ["train", "{tmp}/run.yaml", "--dry-run", "--set", "compute.gpus_per_worker=1", *W],
            {"RAY_ADDRESS": "{head}"},
            0,
            ["the run asks for 1 GPU(s)", "at RAY_ADDRESS it waits for a node with free GPUs"],
        ),
        # the local executor says it trains them on its --device
        (
            ["sweep", "{tmp}/sw-gpu.yaml", "--dry-run", "--executor", "local", *W],
            NO_ENV,
            0,
            ["--executor local trains every run on --device cpu"],
        ),
    ]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def head() -> Any:
    """``host:port`` where something accepts connections (as a Ray head node would)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished tiny run's folder (in a work directory of its own) and its export."""
    import sparling
    from sparling.export import export_model

    root = tmp_path_factory.mktemp("trained")
    run = sparling.fit(tiny_config(), root / "work", progress=False).run_dir
    model = root / "model" / "m.safetensors"
    model.parent.mkdir()
    export_model(run, model)
    return run, model


def _setup(tmp: Path, run: Path, model: Path) -> None:
    import shutil

    from safetensors.torch import save_file

    for name in FOLDERS:
        (tmp / name).mkdir()
    for name, text in FILES.items():
        (tmp / name).write_text(text.replace("{tmp}", str(tmp)))
    os.symlink(tmp / "loop", tmp / "loop")  # a link to itself
    os.symlink(tmp / "loop.yaml", tmp / "loop.yaml")
    os.symlink(tmp / "loop.safetensors", tmp / "loop.safetensors")
    data = model.read_bytes()
    (tmp / "cut.safetensors").write_bytes(data[: len(data) // 2])
    save_file({"a": torch.zeros(3)}, str(tmp / "plain.safetensors"))
    last = run / "checkpoints" / "last"
    shutil.copytree(last, tmp / "no-state", ignore=shutil.ignore_patterns("state.pt"))
    shutil.copytree(last, tmp / "cut-state")
    state = tmp / "cut-state" / "state.pt"
    os.truncate(state, state.stat().st_size // 2)
    os.mkfifo(tmp / "fifo.yaml")
    # a copy of the trained run's work dir whose result.json is cut short
    shutil.copytree(run.parents[1], tmp / "wc")
    result = tmp / "wc" / "runs" / run.name / "result.json"
    result.write_text(result.read_text()[:20])


def _main(args: list[str]) -> int:
    try:
        return cli.main(args)
    except SystemExit as e:  # argparse refusing a value
        return int(e.code or 0)


CASES += [
    # -- third round: YAML that exhausts the parser, characters and keys placed exactly --
    (
        ["train", "{tmp}/deep.yaml", *W],
        NO_ENV,
        2,
        ["{tmp}/deep.yaml: line 1, column 103: lists and mappings nest deeper than the limit"]
        + ["of 100 (set SPARLING_YAML_MAX_DEPTH to raise it)"],
    ),
    (["sweep", "{tmp}/deep.yaml", "--dry-run", *W], NO_ENV, 2, ["deep.yaml: line 1, column 103"]),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", *W],
        {"SPARLING_MLFLOW_CONFIG": "{tmp}/deep.yaml"},
        2,
        ["{tmp}/deep.yaml: line 1, column 103: lists and mappings nest deeper"],
    ),
    (
        ["train", "{tmp}/bell.yaml", *W],
        NO_ENV,
        2,
        ["{tmp}/bell.yaml: not valid YAML: line 2, column 13: the character '\\x07' (U+0007)"],
    ),
    (
        ["train", "{tmp}/flowdup.yaml", *W],
        NO_ENV,
        2,
        ["the key 'lr' is given twice in one mapping, at line 1, column 9 and at line 1, "]
        + ["column 16; keep one"],
    ),
    # -- values the model or the generators cannot take -------------------------------------
    (
        ["train", "{tmp}/channels-override.yaml", *W],
        NO_ENV,
        2,
        ["model.overrides.channels: the motif channels are model.channels"],
    ),
    (
        ["train", "{tmp}/big-seed.yaml", *W],
        NO_ENV,
        2,
        ["seed: Input should be less than or equal to 4294967295"],
    ),
    (
        ["sweep", "{tmp}/sw-big-seed.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["seed: Input should be less than or equal to 4294967295"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--seeds", "4294967296", *W],
        NO_ENV,
        2,
        ["seed 4294967296 is too large; seeds go from 0 to 4,294,967,295"],
    ),
    (["train", "{tmp}/inf-lr.yaml", *W], NO_ENV, 2, ["optim.lr: Input should be a finite number"]),
    (
        ["train", "{tmp}/thresholds.yaml", *W],
        NO_ENV,
        2,
        ["schedule.min_threshold (0.9) is above schedule.max_threshold (0.5)"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "domain.name=digit-circel", *W],
        NO_ENV,
        2,
        ["unknown domain 'digit-circel' (did you mean 'digit-circle'?); accepted names"],
    ),
    # -- sizes and resources this machine cannot give -------------------------------------
    (
        ["data", "generate", "--domain", "digit-circle", "--split", "test"]
        + ["--count", "20000000", *OUT],
        NO_ENV,
        2,
        ["count 20,000,000 is over the limit of 10,000,000 samples for one dataset (set "]
        + ["SPARLING_MAX_DATASET_SAMPLES to raise it)"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", "--set", "data.train_size=20000000", *W],
        NO_ENV,
        2,
        ["data.train_size: 20,000,000 samples is over the limit of 10,000,000"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", "--set", "compute.cpus_per_worker=4096", *W],
        NO_ENV,
        2,
        ["compute.cpus_per_worker=4096 x 1 worker(s) needs 4096 CPU(s); the local Ray"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--set", "compute.cpus_per_worker=4096", *W],
        NO_ENV,
        2,
        ["needs 4096 CPU(s); the local Ray instance has", "nothing was started"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", "--set", "compute.cpus_per_worker=4096", *W],
        {"RAY_ADDRESS": "{head}"},
        0,
        ["to train"],
    ),
    # -- a shared tracking server that does not answer: said in seconds, not minutes -------
    (
        ["train", "{tmp}/run.yaml", "--mlflow-config", "{tmp}/srv.yaml", *W],
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
        2,
        ["the MLflow tracking server http://127.0.0.1:1 does not answer (Connection refused"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--mlflow-config", "{tmp}/srv.yaml", *W],
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:1"},
        2,
        ["does not answer", "or pass --no-tracking; nothing was started"],
    ),
    # -- the command line: options twice, keys inside one another, paths of other kinds ---
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--parallel", "2", "--parallel", "3", *W],
        NO_ENV,
        2,
        ["argument --parallel: given twice (2, then 3); give it once"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--work-dir", "{tmp}/a", "--work-dir", "{tmp}/b"],
        NO_ENV,
        2,
        ["argument --work-dir: given twice"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "optim={{lr: 1}}", "--set", "optim.lr=2", *W],
        NO_ENV,
        2,
        ["--set optim and --set optim.lr both set optim.lr"],
    ),
    (
        ["train", "{tmp}/fifo.yaml", *W],
        NO_ENV,
        2,
        ["{tmp}/fifo.yaml is a named pipe (FIFO), not a regular file; a run config is a YAML"],
    ),
    (["sweep", "{tmp}/fifo.yaml", *W], NO_ENV, 2, ["fifo.yaml is a named pipe (FIFO)"]),
    (["train", "/dev/null", *W], NO_ENV, 2, ["/dev/null is a character device, not a regular"]),
    (
        ["train", "{tmp}/\udcff.yaml", *W],
        NO_ENV,
        2,
        ["argument config: the path {tmp}/\\xff.yaml is not UTF-8 text"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--work-dir", "{tmp}/\udcff"],
        NO_ENV,
        2,
        ["argument --work-dir: the path {tmp}/\\xff is not UTF-8 text"],
    ),
    # -- dataset folders that could not be made: refused before the run folder is ---------
    (
        ["train", "{tmp}/run.yaml", "--no-tracking", "--set", "data.root={tmp}/run.yaml", *W],
        NO_ENV,
        2,
        ["{tmp}/run.yaml is a file, where a folder is expected (to hold {tmp}/run.yaml/digit-"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--dry-run", "--set", "data.root={tmp}/run.yaml", *W],
        NO_ENV,
        2,
        [FILE_NOT_FOLDER],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--set", "data.root={tmp}/run.yaml", *W],
        NO_ENV,
        2,
        [FILE_NOT_FOLDER],
    ),
    # -- records of a run that are damaged: named, never taken for missing ----------------
    (
        ["sweep", "{tmp}/sw.yaml", "--dry-run", "--no-tracking", "--work-dir", "{tmp}/wc"],
        NO_ENV,
        2,
        ["{tmp}/wc/runs/{run_id}/result.json: the run's result is corrupt, not valid JSON"]
        + ["delete it to finish the run again from its last checkpoint"],
    ),
    (
        ["train", "{tmp}/run.yaml", "--set", "batch_size=1000000000", *W],
        NO_ENV,
        2,
        ["batch_size (1000000000) must not exceed data.train_size (32)"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--executor", "local", "--threads", "100000", *W],
        NO_ENV,
        2,
        ["--threads 100000 is more than this machine's", "CPU(s); give at most"],
    ),
    (
        ["sweep", "{tmp}/sw.yaml", "--executor", "local", "--parallel", "100000", *W],
        NO_ENV,
        2,
        ["--parallel 100000 is more than this machine's"],
    ),
    (
        ["sweep", "{tmp}/sw-base-sweep.yaml", "--dry-run", *W],
        NO_ENV,
        2,
        ["base: {tmp}/sw.yaml is a sweep (it has methods:), not a run config"],
    ),
    # -- evaluate, export, ui ----------------------------------------------------------------
    (
        ["evaluate", "{model}", "--samples", "20000000", *W],
        NO_ENV,
        2,
        ["--samples 20,000,000 is over the limit of 10,000,000 test images"],
    ),
    (
        ["evaluate", "{run}", "--samples", "9", "--no-tracking"],
        NO_ENV,
        2,
        ["--samples 9 is more than the 8 samples of the run's test split (data.test_size)"],
    ),
    (
        ["export", "{run}", "--out", "{tmp}/plain.safetensors"],
        NO_ENV,
        2,
        ["{tmp}/plain.safetensors already exists; pass --force to replace it"],
    ),
    (
        ["ui", "--port", "{head_port}", *W],
        NO_ENV,
        2,
        ["port {head_port} on 127.0.0.1 is taken by another program"],
    ),
]


# a case that is not refused may start training: it fails at the time limit, not hours later
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "env", "code", "words"),
    CASES,
    ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)],
)
def test_bad_input_is_refused_in_one_line_and_writes_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    trained: tuple[Path, Path],
    head: str,
    args: list[str],
    env: dict[str, str],
    code: int,
    words: list[str],
) -> None:
    run, model = trained
    _setup(tmp_path, run, model)
    places: dict[str, Any] = {
        "tmp": tmp_path,
        "ro": tmp_path / "ro",
        "run": run,
        "run_id": run.name,
        "work": run.parents[1],
        "model": model,
        "head": head,
        "head_port": head.rpartition(":")[2],
    }
    for name in (
        "RAY_ADDRESS",
        "SPARLING_WORK_DIR",
        "SPARLING_MLFLOW_CONFIG",
        "MLFLOW_TRACKING_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value.format(**places))
    monkeypatch.chdir(tmp_path)  # a default work dir would appear here
    before = _tree(tmp_path), _tree(run.parents[1]), _tree(model.parent)
    mount = read_only(tmp_path / "ro") if any("{ro}" in a for a in args) else None
    with mount or contextlib.nullcontext():
        got = _main([a.format(**places) for a in args])
    out, err = capsys.readouterr()
    assert got == code, out + err
    assert "Traceback" not in err, err
    for w in words:
        assert w.format(**places) in (err if code else out), out + err
    if code:
        assert err.count(": error: ") == 1, err  # one problem, one line
    assert (_tree(tmp_path), _tree(run.parents[1]), _tree(model.parent)) == before


def test_ctrl_c_says_what_is_kept_and_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during a command: exit code 130 and one line saying what is kept, no
    traceback (data generation keeps its finished shards; rerunning writes the others,
    ``tests/pipelines/test_generate.py::test_partial_dataset_redoes_only_bad_shards``)."""
    import pipelines.generate

    def interrupted(*args: Any, **kwargs: Any) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipelines.generate, "generate_dataset", interrupted)
    assert _main([*GEN, "--out", str(tmp_path / "data"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("sparling data: interrupted (Ctrl-C); the shards already written")
    assert "run the same command again to write the others" in err and "Traceback" not in err

    def stopped(args: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_report", stopped)
    assert _main(["report", "quickstart", "--work-dir", str(tmp_path / "w")]) == 130
    err = capsys.readouterr().err
    assert err.startswith("sparling report: interrupted (Ctrl-C); what was completed is kept")
