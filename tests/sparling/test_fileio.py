"""The shared file pieces (atomic writes, the lock, YAML loading), pydantic error messages,
the user-facing error classes and the command line's logging."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import read_only
from pydantic import BaseModel, ValidationError

from pipelines import cli
from pipelines.plan import SweepError, load_sweep
from sparling.config import load_config
from sparling.errors import SparlingError, describe_os_error, format_validation_errors
from sparling.export import ExportError
from sparling.fileio import (
    LockTimeout,
    YAMLLoadError,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    file_lock,
    load_yaml,
)
from sparling.shards import DatasetConflictError, DatasetError


def test_atomic_writes_replace_the_file_and_leave_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    atomic_write_json(target, {"b": 1, "a": [1, 2]}, indent=2, sort_keys=True, fsync=True)
    assert target.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2, sort_keys=True) + "\n"
    atomic_write_json(target, {"x": 1})  # compact: one line, no newline
    assert target.read_text() == '{"x": 1}'
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_bytes() == "héllo\n".encode()
    atomic_write_bytes(tmp_path / "b.bin", b"\0\1")
    assert (tmp_path / "b.bin").read_bytes() == b"\0\1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "t.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail, fsync=True)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_an_atomic_write_refused_by_the_filesystem_names_the_target(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (tmp_path / "dir.bin").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        atomic_write_bytes(tmp_path / "dir.bin", b"x")
    assert (
        describe_os_error(info.value)
        == f"{tmp_path / 'dir.bin'} is a folder, where a file is expected"
    )
    with read_only(folder):
        with pytest.raises(OSError) as info:
            atomic_write_bytes(folder / "a.bin", b"x")
    assert (
        describe_os_error(info.value) == f"cannot write {folder / 'a.bin'}: Read-only file system"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.bin", "ro"]  # no temp file
    assert list(folder.iterdir()) == []


def test_check_writable_says_what_writing_would_meet_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    check_writable(tmp_path / "new" / "deeper", folder=True)
    check_writable(tmp_path / "folder", folder=True)
    check_writable(tmp_path / "file", folder=False)
    cases = {
        (tmp_path / "file", True): f"{tmp_path / 'file'} is a file, where a folder is expected",
        (tmp_path / "file" / "x", True): f"{tmp_path / 'file'} is a file, where a folder is "
        f"expected (to hold {tmp_path / 'file' / 'x'})",
        (
            tmp_path / "folder",
            False,
        ): f"{tmp_path / 'folder'} is a folder, where a file is expected",
    }
    for (path, folder), message in cases.items():
        with pytest.raises(OSError) as info:
            check_writable(path, folder=folder)
        assert describe_os_error(info.value) == message
    with read_only(tmp_path / "folder"):
        for target, folder in (
            (tmp_path / "folder" / "a" / "b", True),
            (tmp_path / "folder" / "f", False),
        ):
            with pytest.raises(OSError) as info:
                check_writable(target, folder=folder)
            assert describe_os_error(info.value) == f"cannot write {target}: Read-only file system"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["file", "folder"]


def test_os_errors_are_described_by_path_and_cause() -> None:
    assert describe_os_error(PermissionError(13, "Permission denied", "/srv/out")) == (
        "cannot access /srv/out: Permission denied"
    )
    assert describe_os_error(OSError(28, "No space left on device", "/srv/out/a.pt")) == (
        "cannot write /srv/out/a.pt: No space left on device"
    )
    assert describe_os_error(FileNotFoundError(2, "No such file or directory", "/nowhere/x")) == (
        "no such file or folder: /nowhere/x"
    )
    # the project's own messages (no errno) are kept as they are
    assert describe_os_error(FileNotFoundError("model file not found: m.safetensors")) == (
        "model file not found: m.safetensors"
    )


def test_file_lock_excludes_other_holders_and_times_out(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with file_lock(path):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        start = time.monotonic()
        with pytest.raises(LockTimeout, match="x.lock") as info:
            with file_lock(path, timeout=0.3, poll_interval=0.05):
                pass
        assert time.monotonic() - start >= 0.3
        assert isinstance(info.value, SparlingError)
    finally:
        release.set()
        thread.join(10)
    with file_lock(path, timeout=1):  # free again
        pass
    assert path.exists()  # the lock file stays, so that waiters share it


def test_file_lock_in_a_read_only_folder_raises_oserror(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError):
            with file_lock(folder / ".lock"):
                pass
    finally:
        folder.chmod(0o755)


def test_load_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("seed: 1\nschedule: [1, 2\n")
    with pytest.raises(YAMLLoadError) as info:
        load_yaml(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML: line 3, column 1:")
    assert "<unicode string>" not in message
    assert "line 2, column 11" in message  # where the unclosed list starts
    assert isinstance(info.value, SparlingError) and isinstance(info.value, ValueError)

    with pytest.raises(YAMLLoadError, match="^--set a: not valid YAML: line 1"):
        load_yaml("[1", source="--set a")
    with pytest.raises(YAMLLoadError, match="could not determine a constructor"):
        load_yaml("x: !!python/object/apply:os.getcwd []")  # the safe loader builds no objects
    assert load_yaml("a: [1, 2]") == {"a": [1, 2]} and load_yaml("") is None
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(YAMLLoadError, match="binary.yaml: not UTF-8"):
        load_yaml(tmp_path / "binary.yaml")


def test_load_yaml_refuses_a_key_given_twice_naming_both_lines(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nseeds: [0, 1, 2]\nmethods: [sparling]\nseeds: [7]\n")
    with pytest.raises(
        YAMLLoadError,
        match=r"sweep\.yaml: the key 'seeds' is given twice .* line 2, column 1 and at line 4, column 1",
    ):
        load_yaml(sweep)
    with pytest.raises(SweepError, match=r"'seeds' is given twice"):
        load_sweep(sweep)
    # in a flow mapping both are on one line: the columns tell them apart
    with pytest.raises(
        YAMLLoadError, match=r"'a' is given twice .* line 2, column 4 and at line 2, column 10"
    ):
        load_yaml("outer:\n  {a: 1, a: 2}\n")
    # a merge key's values may be overridden (that is what it is for); nesting is separate
    assert load_yaml("x: &x {b: 1}\ny:\n  <<: *x\n  b: 2\nz: {b: {b: 3}}\n") == {
        "x": {"b": 1},
        "y": {"b": 2},
        "z": {"b": {"b": 3}},
    }


def test_load_yaml_refuses_nesting_past_the_depth_limit_and_forbidden_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10 KB of brackets used to end in a RecursionError traceback
    deep = tmp_path / "deep.yaml"
    deep.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(
        YAMLLoadError,
        match=r"deep\.yaml: line 1, column 103: .* limit of 100 \(set SPARLING_YAML_MAX_DEPTH",
    ):
        load_yaml(deep)
    assert load_yaml("a: " + "[" * 99 + "]" * 99) is not None  # the limit is inclusive
    monkeypatch.setenv("SPARLING_YAML_MAX_DEPTH", "20000")
    nested = load_yaml("a: " + "[" * 300 + "]" * 300)
    assert isinstance(nested, dict)
    monkeypatch.setenv("SPARLING_YAML_MAX_DEPTH", "3")
    with pytest.raises(YAMLLoadError, match="limit of 3"):
        load_yaml("a: {b: {c: 1}}")
    monkeypatch.delenv("SPARLING_YAML_MAX_DEPTH")
    # a control character: the file, the line and the column, never "<unicode string>"
    bell = tmp_path / "bell.yaml"
    bell.write_text("seed: 1\nbatch_size: \x07\n")
    with pytest.raises(YAMLLoadError) as info:
        load_yaml(bell)
    assert str(info.value).startswith(f"{bell}: not valid YAML: line 2, column 13: the character")
    assert "U+0007" in str(info.value) and "unicode string" not in str(info.value)


def test_load_yaml_refuses_documents_that_expand_past_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 9 levels of 9 aliases: 600 bytes that would expand to 9**9 (387 million) values
    lines = ["l0: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(
        YAMLLoadError,
        match=r"bomb\.yaml: the YAML expands to more than 1,000,000 values.*SPARLING_YAML_MAX_VALUES",
    ):
        load_yaml(bomb)
    assert time.monotonic() - started < 5
    with pytest.raises(SweepError, match="expands to more than"):
        load_sweep(bomb)
    monkeypatch.setenv("SPARLING_YAML_MAX_VALUES", "10")
    with pytest.raises(YAMLLoadError, match="more than 10 values"):
        load_yaml("a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n")
    monkeypatch.setenv("SPARLING_YAML_MAX_VALUES", "ten")
    with pytest.raises(YAMLLoadError, match="SPARLING_YAML_MAX_VALUES must be a whole number"):
        load_yaml("a: 1\n")
    monkeypatch.delenv("SPARLING_YAML_MAX_VALUES")
    monkeypatch.setenv("SPARLING_YAML_MAX_BYTES", "100")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 200 + "\n")
    with pytest.raises(YAMLLoadError, match=r"big\.yaml: 204 bytes is over the limit of 100 bytes"):
        load_yaml(big)


def test_config_and_sweep_files_report_yaml_errors_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain:\n  name: [digit-circle\n")
    with pytest.raises(YAMLLoadError, match=r"bad\.yaml: not valid YAML: line 3"):
        load_config(bad)
    with pytest.raises(SweepError, match=r"bad\.yaml: not valid YAML: line 3"):
        load_sweep(bad)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: bad.yaml\n")
    with pytest.raises(SweepError, match=r"sweep\.yaml: base: .*bad\.yaml: not valid YAML"):
        load_sweep(sweep)


def test_format_validation_errors_writes_paths_as_in_the_file() -> None:
    class Inner(BaseModel):
        values: list[int]

    class Outer(BaseModel):
        items: list[Inner]
        name: str

    with pytest.raises(ValidationError) as info:
        Outer.model_validate({"items": [{"values": [1, "x"]}]})
    assert format_validation_errors(info.value) == [
        "items[0].values[1]: Input should be a valid integer, unable to parse string as an integer",
        "name: Field required",
    ]
    with pytest.raises(ValidationError) as info:
        Inner.model_validate([1])
    assert format_validation_errors(info.value, root="(params)")[0].startswith("(params): ")


def test_unknown_keys_say_what_is_accepted_and_the_nearest_match(tmp_path: Path) -> None:
    from sparling.config import RunConfig
    from sparling.models.presets import preset_config

    bad = tmp_path / "run.yaml"
    bad.write_text(
        "domain: {name: digit-circle}\noptm: {lr: 0.1}\nschedule: {intial_density: 0.1}\n"
    )
    with pytest.raises(ValueError) as caught:
        load_config(bad)
    text = str(caught.value)
    assert "optm: unknown key (did you mean 'optim'?); accepted here: domain, data," in text
    assert "schedule.intial_density: unknown key (did you mean 'initial_density'?)" in text
    assert "accepted here: enabled, initial_density, delta_update" in text
    # a bottleneck's parameters, and a key under a list of models
    with pytest.raises(ValueError, match=r"densty: unknown key \(did you mean 'density'\?\)"):
        load_config(
            {
                "domain": {"name": "digit-circle"},
                "bottleneck": {"name": "sparling", "params": {"densty": 0.1}},
            }
        )
    # no near match: only the accepted keys
    try:
        RunConfig.model_validate({"domain": {"name": "digit-circle"}, "zzz": 1})
    except ValidationError as e:
        (line,) = format_validation_errors(e, model=RunConfig)
        assert line.startswith("zzz: unknown key; accepted here: domain,")
    with pytest.raises(ValueError, match=r"salince: did you mean 'salience'\?"):
        preset_config("digit-circle", "fast", channels=10, salince=True)


def test_user_errors_are_sparling_errors_and_still_value_errors() -> None:
    for cls in (SweepError, DatasetError, DatasetConflictError, ExportError, YAMLLoadError):
        assert issubclass(cls, SparlingError) and issubclass(cls, ValueError), cls


def test_the_cli_prints_sweep_errors_as_before(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [x\n")
    assert cli.main(["sweep", str(bad), "--dry-run", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"sparling sweep: error: {bad}: not valid YAML: line 2")
    assert cli.main(["train", str(tmp_path / "r.yaml")]) == 2  # a missing file, as before
    assert capsys.readouterr().err.startswith("sparling train: error: config file not found")
    (tmp_path / "r.yaml").write_text("seed: 1\n")
    assert cli.main(["train", str(tmp_path / "r.yaml"), "--set", "seed=[1"]) == 2
    assert "sparling train: error: --set seed: not valid YAML" in capsys.readouterr().err


def test_the_cli_shows_info_messages_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    loggers = [logging.getLogger(n) for n in ("sparling", "pipelines")]
    before = [(lg.level, list(lg.handlers)) for lg in loggers]
    try:
        cli.configure_logging()
        cli.configure_logging()  # idempotent: one line per message
        logging.getLogger("pipelines.generate").info("dataset %s is ready", "d")
        logging.getLogger("sparling.train").debug("not shown")
        logging.getLogger("sparling.train").warning("careful")
        assert capsys.readouterr().err == "dataset d is ready\ncareful\n"
    finally:
        for lg, (level, handlers) in zip(loggers, before):
            lg.setLevel(level)
            lg.handlers[:] = handlers
