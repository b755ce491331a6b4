"""MLflow tracking: settings, the local tracking server, the run API and the metric logger.

The integration tests share one local tracking server (a real ``mlflow server`` process on
127.0.0.1 over a SQLite store in a temporary work dir); the restart test stops it and
starts another on the same store and port.

Why a server at all, measured on the 2-core development machine (one core busy), with 4
processes each creating a run and calling ``MlflowClient.log_metric`` 200 times:

* straight into one **fresh** SQLite file, four tries: 3, 4, 0 and 3 of the 4 processes
  died at start-up, racing through MLflow's schema migrations (``table experiments
  already exists``, ``duplicate column name: step``, ``Online migration expected to match
  one row ... 0 found``): 1,400 of 3,200 points lost;
* straight into an **initialised** SQLite file: 4 x 200 and 8 x 200 points arrived (no
  ``database is locked`` at this load), but the writers queue on the file lock (30-90 s
  for 800-1,600 points) and one that waits past SQLite's 5 s busy timeout fails;
* through the local server: the server's single process owns the file; 4 processes x
  200 steps x 2 metrics in batches of 10 (this test): 1,600 points in 8-10 s; unbatched,
  4 x 400 requests in 18 s and 8 x 400 in 39 s: zero errors, every point present.

``SPARLING_MEASURE_SQLITE=1`` runs the direct-SQLite measurement
(:func:`test_measure_direct_sqlite_writers`).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, tiny_config

from pipelines.tracking.errors import TrackingConfigError, TrackingError, TrackingServerError
from pipelines.tracking.finder import Tracker
from pipelines.tracking.logger import MetricLogger
from pipelines.tracking.procs import server_healthy
from pipelines.tracking.redaction import REDACTED, is_secret_key, redact_uri, scrub
from pipelines.tracking.server import SERVER_FILE, LocalTrackingServer, tracking_uri
from pipelines.tracking.settings import TrackingSettings, load_settings
from pipelines.tracking.tags import (
    TAG_COMMIT,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_PARENT,
    TAG_RUN_ID,
    TAG_SWEEP,
    TAG_VERSIONS,
    environment_tags,
    run_name,
)
from sparling.config import load_config

REPO_SETTINGS = REPO / "mlflow.yaml"


# -- settings ------------------------------------------------------------------------------
def test_default_settings_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./mlflow.yaml here: the built-in defaults
    work = tmp_path / "work"
    s = load_settings(work, env={})
    assert s.profile == "local" and s.is_local and s.source == "built-in defaults"
    assert s.store_uri == f"sqlite:///{work}/mlflow/mlflow.db"
    assert s.artifact_location == str(work / "mlflow" / "artifacts")
    assert s.state_dir == work / "mlflow"
    assert s.port is None and s.start_timeout == 120
    assert s.run_options() == {
        "train_every_steps": 50,
        "system_metrics": True,
        "system_metrics_interval": 10.0,
    }
    assert s.experiment_for(sweep="paper-digit-circle") == "sparling-paper-digit-circle"
    assert s.experiment_for("digit-circle") == "sparling"  # no sweep given
    assert s.experiment_artifact_location is None  # the local server proxies artifacts
    # the repository's mlflow.yaml states exactly the built-in defaults
    from_file = load_settings(work, REPO_SETTINGS, env={})
    assert dataclasses.replace(from_file, source=s.source) == s


def test_profiles_and_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    server = load_settings(
        work,
        REPO_SETTINGS,
        env={
            "SPARLING_MLFLOW_PROFILE": "server",
            "MLFLOW_TRACKING_URI": "http://mlflow.example:5000",
            "MLFLOW_EXPERIMENT_NAME": "team-{domain}-{sweep}",
        },
    )
    assert server.profile == "server" and server.tracking_uri == "http://mlflow.example:5000"
    assert server.experiment_for("latex-ocr", "seeds") == "team-latex-ocr-seeds"
    assert "MLFLOW_TRACKING_URI" in server.source and "mlflow.example" in server.describe()

    # an exported server URI means "log there", unless the local profile is asked for
    remote = load_settings(work, env={"MLFLOW_TRACKING_URI": "https://mlflow.example"})
    assert remote.profile == "server" and remote.tracking_uri == "https://mlflow.example"
    local = load_settings(
        work,
        env={"MLFLOW_TRACKING_URI": "https://mlflow.example", "SPARLING_MLFLOW_PROFILE": "local"},
    )
    assert local.is_local and "MLFLOW_TRACKING_URI ignored" in local.source
    # a database URI replaces the local server's store (relative to the current folder)
    other = load_settings(work, env={"MLFLOW_TRACKING_URI": "sqlite:///other/db.sqlite"})
    assert other.store_uri == f"sqlite:///{tmp_path}/other/db.sqlite"
    assert other.state_dir == tmp_path / "other"

    # paths in a file resolve against the work dir; the server profile reads its URI
    custom = tmp_path / "custom.yaml"
    custom.write_text(
        "experiment_name: exp\n"
        "profiles:\n"
        "  local: {store_uri: 'sqlite:///db/x.db', artifact_location: arts, port: 5123}\n"
        "  server: {tracking_uri: 'http://mlflow.example:5000', artifact_location: 's3://b/p'}\n"
        "logging: {train_every_steps: 7, system_metrics: false}\n"
    )
    s = load_settings(work, custom, env={})
    assert s.run_options() == {
        "train_every_steps": 7,
        "system_metrics": False,
        "system_metrics_interval": 10.0,
    }
    assert s.store_uri == f"sqlite:///{work}/db/x.db" and s.artifact_location == str(work / "arts")
    assert s.port == 5123 and s.experiment_for("digit-circle") == "exp"
    s = load_settings(
        work, env={"SPARLING_MLFLOW_CONFIG": str(custom), "SPARLING_MLFLOW_PROFILE": "server"}
    )
    assert s.tracking_uri == "http://mlflow.example:5000"
    assert s.experiment_artifact_location == "s3://b/p"


@pytest.mark.parametrize(
    ("content", "env", "expected"),
    [
        ("profile: cloud\n", {}, r"profile: Input should be 'local' or 'server'"),
        (
            "profiles:\n  local:\n    prot: 5000\n",
            {},
            r"profiles\.local\.prot: unknown key \(did you mean .port.\?\)",
        ),
        ("profiles:\n  local:\n    port: abc\n", {}, r"profiles\.local\.port: Input should be"),
        ("experiment_prefix: x\n", {}, r"experiment_prefix: unknown key.*accepted here"),
        (
            "logging:\n  train_every_steps: 0\n",
            {},
            r"logging\.train_every_steps: Input should be greater than or equal to 1",
        ),
        (
            "logging:\n  system_metrics: sometimes\n",
            {},
            r"logging\.system_metrics: Input should be a valid boolean",
        ),
        (
            "logging:\n  system_metrics_every: 5\n",
            {},
            r"logging\.system_metrics_every: unknown key \(did you mean .system_metrics",
        ),
        ("profile: [local\n", {}, r"not valid YAML"),
        (
            "- local\n",
            {},
            r"must be a mapping of keys such as .profile: local., but the file holds a list",
        ),
        ("experiment_name: 'x-{user}'\n", {}, r"experiment_name='x-\{user\}': unknown placeholder"),
        (
            "profiles:\n  server:\n    password: hunter2\n",
            {},
            r"key 'profiles\.server\.password': credentials are read only from the environment",
        ),
        (
            "profiles:\n  server:\n    tracking_uri: http://bob:hunter2@mlflow.example\n",
            {},
            r"'profiles\.server\.tracking_uri' holds a password",
        ),
        ("profile: server\n", {}, r"'server' profile needs the tracking server's URI"),
        (
            "profile: server\nprofiles: {server: {tracking_uri: 'sqlite:///x.db'}}\n",
            {},
            r"for a local store use the 'local' profile",
        ),
        ("", {"SPARLING_MLFLOW_PROFILE": "remote"}, r"must be 'local' or 'server'"),
        ("", {"MLFLOW_TRACKING_URI": "http://u:p@h:5000"}, r"MLFLOW_TRACKING_URI holds a password"),
    ],
)
def test_bad_settings_are_refused_with_file_and_key(
    tmp_path: Path, content: str, env: dict[str, str], expected: str
) -> None:
    path = tmp_path / "mlflow.yaml"
    path.write_text(content)
    with pytest.raises(TrackingConfigError, match=expected) as info:
        load_settings(tmp_path, path, env=env)
    if not env:
        assert str(path) in str(info.value)


def test_missing_settings_file(tmp_path: Path) -> None:
    with pytest.raises(TrackingConfigError, match="settings file not found: .*nope.yaml"):
        load_settings(tmp_path, tmp_path / "nope.yaml", env={})
    with pytest.raises(TrackingConfigError, match=r"nope.yaml \(\$SPARLING_MLFLOW_CONFIG"):
        load_settings(tmp_path, env={"SPARLING_MLFLOW_CONFIG": str(tmp_path / "nope.yaml")})
    with pytest.raises(TrackingConfigError, match="not found: .* it is a folder"):
        load_settings(tmp_path, tmp_path, env={})


def test_settings_file_is_found_beside_the_work_dir_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    work = project / "sparling-work"
    work.mkdir(parents=True)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_settings(work, env={}).source == "built-in defaults"

    beside = project / "mlflow.yaml"
    beside.write_text("experiment_name: beside-{sweep}\n")
    s = load_settings(work, env={})
    assert s.source == f"{beside} (next to the work dir)" and s.also_found == ()
    assert s.experiment_for(sweep="q") == "beside-q"
    assert "next to the work dir" in s.summary() and str(beside) in s.summary()

    # one in the work dir wins over the one beside it; the other is named as not used
    inside = work / "mlflow.yaml"
    inside.write_text("experiment_name: inside-{sweep}\n")
    # and one in the current folder (another file) comes last
    (elsewhere / "mlflow.yaml").write_text("experiment_name: cwd-{sweep}\n")
    s = load_settings(work, env={})
    assert s.source == f"{inside} (in the work dir)"
    assert s.also_found == (str(beside), str(elsewhere / "mlflow.yaml"))
    assert f"also found, not used: {beside}, {elsewhere / 'mlflow.yaml'}" in s.summary()
    # the same text in two places is no conflict
    beside.write_text(inside.read_text())
    assert load_settings(work, env={}).also_found == (str(elsewhere / "mlflow.yaml"),)

    # a named file (the flag, then the variable) wins over every one found
    named = tmp_path / "named.yaml"
    named.write_text("experiment_name: named-{sweep}\n")
    s = load_settings(work, named, env={"SPARLING_MLFLOW_CONFIG": str(inside)})
    assert s.source == f"{named} (--mlflow-config)" and s.also_found == ()
    s = load_settings(work, env={"SPARLING_MLFLOW_CONFIG": str(named)})
    assert s.source == f"{named} ($SPARLING_MLFLOW_CONFIG)"

    # a broken file is one line naming it, whichever way it was found
    inside.write_text("profile: [local\n")
    with pytest.raises(TrackingConfigError) as e:
        load_settings(work, env={})
    assert str(e.value).startswith(f"{inside}: not valid YAML") and "\n" not in str(e.value)
    inside.write_text("profil: local\nlogging: {train_every_steps: 0}\n")
    with pytest.raises(TrackingConfigError) as e:
        load_settings(work, env={})
    message = str(e.value)
    assert message.startswith(f"{inside}: invalid MLflow settings: ") and "\n" not in message
    assert "profil: unknown key (did you mean 'profile'?)" in message
    assert "logging.train_every_steps" in message


# -- credentials and environment tags ---------------------------------------------------------
def test_credentials_are_scrubbed() -> None:
    values: dict[str, Any] = {
        "db.password": "hunter2",
        "MLFLOW_TRACKING_TOKEN": "t0k",
        "aws.secret_access_key": "s",
        "api_key": "k",
        "apiKey": "k",
        "storage.key": "k",
        "client_secret": "c",
        "uri": "https://bob:hunter2@mlflow.example/x",
        "header": "Bearer abc.def",
        "note": "AKIAABCDEFGHIJKLMNOP",
        # not credentials
        "max_tokens": 5,
        "tokenizer": "char",
        "model.overrides.d_model": 32,
        "keep": 1,
        "monkey": "x",
        "author": "me",
        "plain_uri": "http://127.0.0.1:5000",
    }
    out = scrub(values)
    secret = ["db.password", "MLFLOW_TRACKING_TOKEN", "aws.secret_access_key", "api_key"]
    secret += ["apiKey", "storage.key", "client_secret", "header", "note"]
    assert all(out[k] == REDACTED for k in secret)
    assert out["uri"] == "https://bob:***@mlflow.example/x"
    kept = ["max_tokens", "tokenizer", "model.overrides.d_model", "keep", "monkey", "author"]
    assert all(out[k] == values[k] for k in [*kept, "plain_uri"])
    assert "hunter2" not in json.dumps(out)
    assert redact_uri("postgresql://u:pw@db/x") == "postgresql://u:***@db/x"
    assert is_secret_key("MLFLOW_TRACKING_PASSWORD") and not is_secret_key("sparling.run_id")


def test_environment_tags(tmp_path: Path) -> None:
    import mlflow

    tags = environment_tags()
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags[TAG_COMMIT])
    assert f"mlflow={mlflow.__version__}" in tags[TAG_VERSIONS]
    assert "torch=" in tags[TAG_VERSIONS] and "ray=" in tags[TAG_VERSIONS]
    # MLflow's own columns: User, Source, Version
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL"
    assert tags.get("mlflow.source.git.commit") == (
        None if tags[TAG_COMMIT] == "unknown" else tags[TAG_COMMIT]
    )
    named = environment_tags(source="sparling sweep quickstart")
    assert named["mlflow.source.name"] == "sparling sweep quickstart"
    outside = environment_tags(tmp_path)  # not a git checkout
    assert outside[TAG_COMMIT] == "unknown" and "sparling.git_dirty" not in outside
    assert "mlflow.source.git.commit" not in outside
    assert run_name("sparling-st", 1) == "sparling-st seed=1"


def test_code_changes_compare_a_commit_with_the_code_of_now(tmp_path: Path) -> None:
    from pipelines.tracking.tags import code_changes, git_commit

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "sparling").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "sparling" / "train.py").write_text("a = 1\n")
    (tmp_path / "docs" / "notes.md").write_text("x\n")
    git("add", ".")
    git("commit", "-qm", "first")
    first = git_commit(tmp_path)
    assert code_changes(first, tmp_path) == []

    (tmp_path / "docs" / "notes.md").write_text("y\n")  # no code: no change
    git("commit", "-qam", "docs")
    assert code_changes(first, tmp_path) == []
    (tmp_path / "sparling" / "train.py").write_text("a = 2\n")  # uncommitted code counts
    assert code_changes(first, tmp_path) == ["sparling/train.py"]
    git("commit", "-qam", "code")
    assert code_changes(first, tmp_path) == ["sparling/train.py"]
    assert code_changes(git_commit(tmp_path), tmp_path) == []
    # what cannot be compared: an unknown commit, one not in this checkout, no checkout
    assert code_changes("unknown", tmp_path) is None
    assert code_changes("0" * 40, tmp_path) is None
    assert code_changes(first, tmp_path / "docs" / "nowhere") is None


def test_tag_contract_and_package_names() -> None:
    """The tag dicts the sweep driver writes, and ``from pipelines.tracking import X``."""
    import pipelines.tracking as package
    from pipelines.tracking import finder, logger, server, settings, tags

    assert tags.PROJECT_ROOT == REPO
    assert tags.parent_tags(3, ["train.lr"], "s.yaml") == {
        "sparling.expected_runs": "3",
        "sparling.swept_fields": '["train.lr"]',
        "sparling.sweep_file": "s.yaml",
    }
    child = tags.child_tags("abc", "sparling", "digit-circle", 2, {"b": 1, "a": "x"})
    assert child == {
        "sparling.kind": "run",
        "sparling.run_id": "abc",
        "sparling.method": "sparling",
        "sparling.domain": "digit-circle",
        "sparling.seed": "2",
        "sparling.swept": '{"a": "x", "b": 1}',
        "sparling.status": "running",
    }
    assert set(tags.STATUSES) == {"running", "finished", "failed"}
    assert all(hasattr(package, name) for name in package.__all__)
    assert package.Tracker is finder.Tracker and package.MetricLogger is logger.MetricLogger
    assert package.tracking_uri is server.tracking_uri
    assert package.load_settings is settings.load_settings and package.TAG_SWEEP is tags.TAG_SWEEP
    assert not hasattr(package, "run_ui")  # served by pipelines.ui


# -- the server without starting one -----------------------------------------------------------
def _server_for(work: Path, **kwargs: Any) -> LocalTrackingServer:
    return LocalTrackingServer.from_settings(load_settings(work, REPO_SETTINGS, env={}), **kwargs)


def test_stale_server_file_is_ignored(tmp_path: Path) -> None:
    server = _server_for(tmp_path)
    server.state_dir.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    info = {"pid": dead.pid, "port": 5999, "store_uri": server.store_uri}
    cases = [
        info,  # process gone
        {**info, "pid": os.getpid(), "pid_start": 1},  # pid reused by another process
        {**info, "pid": os.getpid(), "store_uri": "sqlite:////elsewhere.db"},  # another store
    ]
    for case in cases:
        (server.state_dir / SERVER_FILE).write_text(json.dumps(case))
        assert server._live_server() is None
    (server.state_dir / SERVER_FILE).write_text("{not json")
    assert server._live_server() is None
    assert not server.stop(force=True)  # nothing to stop, nothing killed


def test_start_timeout_names_the_log(tmp_path: Path) -> None:
    server = _server_for(tmp_path)
    server.start_timeout = 0.5  # far too short for MLflow to come up
    with pytest.raises(TrackingServerError, match=r"did not answer .* within 0 s.*server\.log"):
        server.start()
    assert server.pid is not None and not server.running  # the half-started server is gone
    assert not (server.state_dir / SERVER_FILE).exists()


def test_ui_refuses_other_hosts_and_prints_a_remote_server(tmp_path: Path) -> None:
    from pipelines.ui import run_ui

    with pytest.raises(TrackingConfigError, match="127.0.0.1 only"):
        run_ui(tmp_path, host="0.0.0.0")
    lines: list[str] = []
    run_ui(
        tmp_path,
        env={"MLFLOW_TRACKING_URI": "http://mlflow.example:5000"},
        out=lines.append,
    )
    assert lines[0].startswith("MLflow UI: http://mlflow.example:5000/#/experiments")


# -- one shared local server ---------------------------------------------------------------------
@dataclass
class LocalStore:
    settings: TrackingSettings
    server: LocalTrackingServer

    @property
    def uri(self) -> str:
        return self.server.uri


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStore]:
    work = tmp_path_factory.mktemp("work")
    settings = load_settings(work, REPO_SETTINGS, env={})
    server = LocalTrackingServer.from_settings(settings)
    server.start()
    holder = LocalStore(settings, server)
    yield holder
    assert holder.server.stop()  # the last lease: the server stops
    assert not holder.server.running and not server_healthy(holder.uri)
    assert not (settings.state_dir / SERVER_FILE).exists()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


@pytest.mark.integration
def test_server_on_loopback_is_reused_and_leased(
    store: LocalStore, capsys: pytest.CaptureFixture[str]
) -> None:
    server = store.server
    assert server.started and server.uri.startswith("http://127.0.0.1:")
    assert _listening_addresses(server.port or 0) == {"0100007F"}  # 127.0.0.1 only
    info = json.loads((store.settings.state_dir / SERVER_FILE).read_text())
    assert info["pid"] == server.pid and info["ready"] and info["store_uri"] == server.store_uri
    with capsys.disabled():
        print(f"\nlocal MLflow server started in {server.start_seconds:.1f} s")

    second = LocalTrackingServer.from_settings(store.settings)
    assert second.start() == server.uri
    assert not second.started and second.pid == server.pid
    assert len(list((store.settings.state_dir / "leases").glob("*.json"))) == 2
    assert not second.stop()  # another lease remains: the server keeps running
    assert server_healthy(server.uri)
    with tracking_uri(store.settings) as uri:
        assert uri == server.uri
    assert server_healthy(server.uri)


@pytest.mark.integration
def test_find_or_create_never_duplicates(store: LocalStore) -> None:
    tracker = Tracker(store.uri)
    exp = tracker.experiment("sparling-digit-circle")
    assert tracker.experiment("sparling-digit-circle") == exp
    assert (
        tracker.client.get_experiment(exp).tags[TAG_EXPERIMENT_KIND] == "custom_model_development"
    )

    parent = tracker.parent_run(exp, "sweep-a", {"sparling.domain": "digit-circle"})
    assert tracker.parent_run(exp, "sweep-a") == parent
    assert tracker.parent_run(exp, "sweep-b") != parent
    found = tracker.find_parent("sparling-digit-circle", "sweep-a")
    assert found is not None and found.info.run_id == parent and found.info.run_name == "sweep-a"
    sweeps = tracker.client.search_runs([exp], f"tags.`{TAG_SWEEP}` = 'sweep-a'")
    assert len(sweeps) == 1 and sweeps[0].data.tags[TAG_KIND] == "sweep"

    config = load_config(tiny_config())
    params = {**config.flat(), "notes": "x" * 7000, "db.password": "hunter2"}
    tags = {"sparling.method": "sparling", "sparling.seed": 0, **environment_tags()}
    key = config.run_id()
    child, existed = tracker.child_run(exp, parent, key, run_name("sparling", 0), params, tags)
    assert not existed
    moved = {**params, "data.root": "/elsewhere"}  # not part of the run's identity
    assert tracker.child_run(exp, parent, key, "ignored", moved, tags) == (child, True)
    run = tracker.client.get_run(child)
    assert run.info.run_name == "sparling seed=0"
    assert run.data.tags[TAG_PARENT] == parent and run.data.tags[TAG_RUN_ID] == key
    assert run.data.tags["sparling.seed"] == "0" and TAG_VERSIONS in run.data.tags
    assert run.data.params["seed"] == "0" and run.data.params["data.root"] == "null"
    assert run.data.params["db.password"] == REDACTED
    assert len(run.data.params["notes"]) == 6000 and run.data.params["notes"].endswith(
        "[truncated]"
    )

    # two processes creating the same new child at once end with one run
    barrier = threading.Barrier(2)
    ids: list[str] = []

    def create() -> None:
        own = Tracker(store.uri)
        barrier.wait()
        ids.append(own.child_run(exp, parent, "raced", "sparling seed=9", {"seed": 9})[0])

    threads = [threading.Thread(target=create) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    children = tracker.children(parent)
    assert sorted(r.data.tags[TAG_RUN_ID] for r in children) == sorted([key, "raced"])
    assert (found_child := tracker.find_child(parent, "raced")) and found_child.info.run_id == ids[
        0
    ]


def _sparling_sweep(
    store: LocalStore, experiment: str, sweep: str, expected: int
) -> tuple[Tracker, str, str, Callable[[str, int], str]]:
    """A sweep's tracker, experiment and parent run, and ``child(key, seed)``: a Sparling
    child of that parent with the standard child tags (its MLflow run id)."""
    from pipelines.tracking.tags import child_tags, parent_tags

    tracker = Tracker(store.uri)
    exp = tracker.experiment(experiment)
    parent = tracker.parent_run(exp, sweep, parent_tags(expected, [], "sweep.yaml"))

    def child(key: str, seed: int) -> str:
        tags = child_tags(key, "sparling", "digit-circle", seed, {})
        return tracker.child_run(exp, parent, key, run_name("sparling", seed), {}, tags)[0]

    return tracker, exp, parent, child


@pytest.mark.integration
def test_runs_of_an_earlier_config_are_superseded_and_left_out_of_reports(
    store: LocalStore,
) -> None:
    """A changed preset gives every run a new id: the old children under the same run
    names are superseded, naming the id that replaces them (a RUNNING one ended KILLED),
    and the report reads only the current ones; the config changed back, they are runs
    again."""
    from pipelines.report.collect import read_sweep
    from pipelines.tracking.tags import (
        TAG_SUPERSEDED,
        TAG_SUPERSEDED_BY,
        is_superseded,
    )

    tracker, _exp, parent, child = _sparling_sweep(
        store, "sparling-superseded", "sweep-superseded", 2
    )

    old0, old1, other = child("old0", 0), child("old1", 1), child("other7", 7)
    tracker.set_terminated(old0, "FINISHED")
    new0, new1 = child("new0", 0), child("new1", 1)
    planned = {run_name("sparling", 0): "new0", run_name("sparling", 1): "new1"}
    assert tracker.mark_superseded(parent, planned) == ["old0", "old1"]
    tags = {r: tracker.client.get_run(r).data.tags for r in (old0, old1, other, new0, new1)}
    assert tags[old0][TAG_KIND] == "superseded" and tags[old0][TAG_SUPERSEDED_BY] == "new0"
    assert tags[old1][TAG_SUPERSEDED_BY] == "new1"
    assert tags[old0][TAG_SUPERSEDED] == "an earlier config of run 'sparling seed=0', now run new0"
    # a name not planned now (a sweep run with --seeds) is left alone
    assert not is_superseded(tags[other]) and not is_superseded(tags[new0])
    assert tracker.client.get_run(old1).info.status == "KILLED"
    assert tracker.client.get_run(old0).info.status == "FINISHED"
    assert sorted(r.data.tags[TAG_RUN_ID] for r in tracker.current_children(parent)) == [
        "new0",
        "new1",
        "other7",
    ]
    assert tracker.find_child(parent, "old0") is None
    notes: list[str] = []
    sweep = read_sweep(store.uri, "sparling-superseded", "sweep-superseded", notes)
    assert sorted(r.run_id for r in sweep.runs) == ["new0", "new1", "other7"]
    assert "2 superseded runs left out (2 of earlier configs of this sweep's runs" in (
        " ".join(notes)
    ), notes
    # the config changed back: the old runs are current again, the new ones superseded
    back = {run_name("sparling", 0): "old0", run_name("sparling", 1): "old1"}
    assert tracker.mark_superseded(parent, back) == ["new0", "new1"]
    again = tracker.client.get_run(old0).data.tags
    assert again[TAG_KIND] == "run" and TAG_SUPERSEDED_BY not in again
    assert TAG_SUPERSEDED not in again
    found = tracker.find_child(parent, "old0")
    assert found is not None and found.info.run_id == old0


@pytest.mark.integration
def test_runs_trained_again_and_runs_tagged_the_earlier_ways_are_left_out_of_reports(
    store: LocalStore,
) -> None:
    """``--rerun changed`` (:meth:`Tracker.supersede`) and runs of an earlier config end in
    the same scheme, which the report filters in one place; records written the earlier
    ways (a run of an earlier config that kept ``sparling.kind=run`` with only
    ``sparling.superseded_by``; ``sparling.kind=superseded`` with the reason) are left out
    as well, and a sweep's next start rewrites the first kind."""
    from pipelines.report.collect import read_sweep
    from pipelines.tracking.tags import (
        TAG_SUPERSEDED,
        TAG_SUPERSEDED_BY,
        child_tags,
        is_superseded,
    )

    tracker, exp, parent, child = _sparling_sweep(store, "sparling-superseded-ways", "ways", 3)

    kept, first = child("k0", 0), child("k1", 1)
    tracker.set_terminated(first, "FINISHED")
    # trained again from scratch: every run of k1 set aside, then a new child of k1
    assert tracker.supersede("k1", "code changed since commit abc") == [first]
    second = child("k1", 1)
    assert second != first
    aside = tracker.client.get_run(first).data.tags
    assert aside[TAG_KIND] == "superseded" and TAG_SUPERSEDED_BY not in aside
    assert aside[TAG_SUPERSEDED] == "code changed since commit abc"
    # records written the earlier ways, straight through the client
    legacy = tracker.client.create_run(
        exp,
        tags={**child_tags("k2-old", "sparling", "digit-circle", 2, {}), TAG_PARENT: parent},
        run_name=run_name("sparling", 2),
    ).info.run_id
    tracker.client.set_tag(legacy, TAG_SUPERSEDED_BY, "k2")
    again_old = tracker.client.create_run(
        exp,
        tags={
            **child_tags("k3", "sparling", "digit-circle", 3, {}),
            TAG_PARENT: parent,
            TAG_KIND: "superseded",
            TAG_SUPERSEDED: "code changed",
        },
        run_name=run_name("sparling", 3),
    ).info.run_id
    assert is_superseded(tracker.client.get_run(legacy).data.tags)

    notes: list[str] = []
    sweep = read_sweep(store.uri, "sparling-superseded-ways", "ways", notes)
    assert sorted((r.run_id, r.mlflow_run_id) for r in sweep.runs) == sorted(
        [("k0", kept), ("k1", second)]
    )
    assert "3 superseded runs left out (1 of earlier configs of this sweep's runs, 2 trained " in (
        " ".join(notes)
    ), notes
    assert {r.info.run_id for r in tracker.current_children(parent)} == {kept, second}
    # the old-way child is no child of its key any more: a sweep planning it gets a new one
    assert tracker.find_child(parent, "k2-old") is None

    # a start planning these names: the old-way record is rewritten in the scheme of now,
    # the run trained again stays aside (its key is planned, but it was not an earlier
    # config), the one trained again the old way too
    planned = {run_name("sparling", s): k for s, k in ((0, "k0"), (1, "k1"), (2, "k2"), (3, "k3"))}
    assert tracker.mark_superseded(parent, planned) == ["k2-old"]
    rewritten = tracker.client.get_run(legacy).data.tags
    assert rewritten[TAG_KIND] == "superseded" and rewritten[TAG_SUPERSEDED_BY] == "k2"
    assert "an earlier config" in rewritten[TAG_SUPERSEDED]
    for run_id in (first, again_old):
        assert tracker.client.get_run(run_id).data.tags[TAG_KIND] == "superseded"
    assert {r.info.run_id for r in tracker.current_children(parent)} == {kept, second}


@pytest.mark.integration
def test_a_sweep_takes_over_or_links_the_run_trained_alone(store: LocalStore) -> None:
    tracker = Tracker(store.uri)
    tags = {"sparling.method": "sparling", "sparling.seed": "0"}
    sweep_exp = tracker.experiment("sparling-adopt")
    alone_exp = tracker.experiment("sparling-alone")

    # trained alone in the sweep's own experiment: the sweep's child is that very run
    here, existed = tracker.standalone_run(
        sweep_exp, "k-here", "sparling seed=0", {"seed": 0}, tags
    )
    assert not existed
    assert tracker.standalone_run(sweep_exp, "k-here", "x", {"seed": 0}, tags) == (here, True)
    assert [r.info.run_id for r in tracker.standalone_runs("k-here")] == [here]
    parent = tracker.parent_run(sweep_exp, "adopting")
    child, existed = tracker.child_run(
        sweep_exp, parent, "k-here", "sparling seed=0 M=0.1", {"seed": 0, "lr": 0.1}, tags
    )
    assert (child, existed) == (here, True)
    run = tracker.client.get_run(here)
    assert run.data.tags[TAG_PARENT] == parent and run.info.run_name == "sparling seed=0 M=0.1"
    assert run.data.params == {"seed": "0", "lr": "0.1"}
    assert tracker.standalone_runs("k-here") == []  # it is the sweep's now
    assert [r.info.run_id for r in tracker.runs_of("k-here")] == [here]
    # ... and training it alone again logs to the same run
    assert tracker.standalone_run(sweep_exp, "k-here", "x", {"seed": 0}, tags) == (here, True)

    # trained alone elsewhere: a new child with its metrics, linked to it both ways
    there, _ = tracker.standalone_run(alone_exp, "k-there", "sparling seed=0", {"seed": 0}, tags)
    for step in (16, 32):
        tracker.log_metrics(there, {"val/exact_match": step / 100, "train/loss": 1.0}, step)
    child, existed = tracker.child_run(sweep_exp, parent, "k-there", "n", {"seed": 0}, tags)
    assert not existed and child != there
    assert tracker.client.get_run(child).data.tags["sparling.trained_in"] == there
    assert tracker.client.get_run(there).data.tags["sparling.sweep_runs"] == child
    history = tracker.client.get_metric_history(child, "val/exact_match")
    assert sorted((m.step, m.value) for m in history) == [(16, 0.16), (32, 0.32)]
    # found again by key under its parent: nothing copied twice
    assert tracker.child_run(sweep_exp, parent, "k-there", "n", {"seed": 0}, tags) == (child, True)
    assert len(tracker.client.get_metric_history(child, "train/loss")) == 2
    # a second sweep's child is listed beside the first
    other = tracker.parent_run(sweep_exp, "another")
    second, _ = tracker.child_run(sweep_exp, other, "k-there", "n", {"seed": 0}, tags)
    assert tracker.client.get_run(there).data.tags["sparling.sweep_runs"] == f"{child},{second}"


def test_a_logged_model_left_unfinished_is_completed_and_listed_once(
    store: LocalStore, tmp_path: Path
) -> None:
    """A sweep's driver killed while it logged a run's model (the model listed among the
    run's outputs, never READY): the next sweep completes that model and lists it once."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    from pipelines.tracking.models import TAG_CHECKPOINT, log_exported_model

    client = Tracker(store.uri).client
    exp = Tracker(store.uri).experiment("sparling-unfinished-model")
    run_id = client.create_run(exp, run_name="sparling seed=0").info.run_id
    export = tmp_path / "model.safetensors"
    export.write_bytes(b"an export (not read here)")
    meta = {"run_id": "k-model", "checkpoint": "last", "samples": "64", "density": "0.5"}
    left = client.create_logged_model(exp, source_run_id=run_id, tags={TAG_CHECKPOINT: "last"})
    client.log_outputs(run_id, [LoggedModelOutput(left.model_id, 64)])

    assert log_exported_model(client, run_id, export, meta) == (left.model_id, False)
    assert client.get_logged_model(left.model_id).status == LoggedModelStatus.READY
    outputs = client.get_run(run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [left.model_id]
    assert log_exported_model(client, run_id, export, meta) == (left.model_id, True)


@pytest.mark.integration
def test_stale_running_children_are_marked_killed(store: LocalStore) -> None:
    tracker = Tracker(store.uri)
    exp = tracker.experiment("sparling-stale")
    parent = tracker.parent_run(exp, "sweep-stale")
    ids = {
        k: tracker.child_run(exp, parent, k, run_name("sparling", i), {"seed": i})[0]
        for i, k in enumerate(["k0", "k1", "k2", "k3"])
    }
    tracker.set_terminated(ids["k0"], "FINISHED")
    assert tracker.mark_stale(parent, keep={"k1"}) == ["k2", "k3"]
    status = {k: tracker.client.get_run(r).info.status for k, r in ids.items()}
    assert status == {"k0": "FINISHED", "k1": "RUNNING", "k2": "KILLED", "k3": "KILLED"}
    assert tracker.mark_stale(parent, keep={"k1"}) == []
    tracker.set_status(ids["k2"], "RUNNING")  # resumed
    assert tracker.client.get_run(ids["k2"]).info.status == "RUNNING"
    tracker.set_status(ids["k3"], "FAILED")
    assert tracker.client.get_run(ids["k3"]).info.end_time is not None
    with pytest.raises(TrackingError, match="status must be one of"):
        tracker.set_terminated(ids["k1"], "DONE")
    with pytest.raises(TrackingError, match="status must be RUNNING"):
        tracker.set_status(ids["k1"], "DONE")

    # what the driver logs at the end of a run
    tracker.set_tags(ids["k0"], {"sparling.status": "finished", "token": "abc"})
    tracker.log_metrics(ids["k0"], {"test_fpe": 0.1, "test_e2ee": 0.2}, step=48)
    run = tracker.client.get_run(ids["k0"])
    assert run.data.tags["sparling.status"] == "finished" and run.data.tags["token"] == REDACTED
    assert run.data.metrics == {"test_fpe": 0.1, "test_e2ee": 0.2}


def _writer(uri: str, run_id: str, steps: int, start: Any, out: Any) -> None:
    """One training worker: waits for the start signal, then logs ``steps`` validations."""
    errors: list[str] = []
    t0 = time.monotonic()
    try:
        logger = MetricLogger(uri, run_id)
        start.wait()
        t0 = time.monotonic()
        for step in range(steps):
            logger.log({"loss": 1.0 / (step + 1), "val_accuracy": step / steps}, step)
            if step % 5 == 4:
                logger.flush(timeout=120)  # many small requests, all processes at once
        logger.close(timeout=120)
    except Exception as e:  # reported to the test, which asserts there were none
        errors.append(f"{type(e).__name__}: {e}")
    out.put((run_id, errors, time.monotonic() - t0))


@pytest.mark.integration
def test_concurrent_writers_through_local_server(
    store: LocalStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """4 processes x 200 steps x 2 metrics into 4 child runs at once: no error, no loss."""
    tracker = Tracker(store.uri)
    exp = tracker.experiment("sparling-concurrency")
    parent = tracker.parent_run(exp, "sweep-concurrency")
    runs = [
        tracker.child_run(exp, parent, f"w{i}", run_name("sparling", i), {"seed": i})[0]
        for i in range(4)
    ]
    steps = 200
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(store.uri, r, steps, start, out)) for r in runs]
    for p in procs:
        p.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    start.set()
    results = [out.get(timeout=240) for _ in procs]
    wall = time.monotonic() - t0
    for p in procs:
        p.join(timeout=30)
    assert [errors for _, errors, _ in results] == [[], [], [], []]
    for run_id in runs:
        for key in ("loss", "val_accuracy"):
            history = tracker.client.get_metric_history(run_id, key)
            assert sorted(m.step for m in history) == list(range(steps)), (run_id, key)
    with capsys.disabled():
        print(
            f"\n4 writer processes x {steps} steps x 2 metrics (batches of 10): "
            f"{8 * steps} points in {wall:.1f} s, 0 errors, 0 lost"
        )


@pytest.mark.integration
def test_metric_logger_rides_out_a_server_restart(store: LocalStore, tmp_path: Path) -> None:
    tracker = Tracker(store.uri)
    exp = tracker.experiment("sparling-restart")
    parent = tracker.parent_run(exp, "sweep-restart")
    run, _ = tracker.child_run(exp, parent, "live", "sparling seed=0", {"seed": 0})
    crashed_run, _ = tracker.child_run(exp, parent, "crash", "sparling seed=1", {"seed": 1})
    spool = tmp_path / "metrics.spool.jsonl"
    logger = MetricLogger(store.uri, run, max_backoff=1.0)
    spooled = MetricLogger(store.uri, crashed_run, spool=spool, max_backoff=1.0)
    steps, stop_at = 150, 40
    halfway, server_down = threading.Event(), threading.Event()

    def train() -> None:  # a training loop: never waits on the server
        for step in range(steps):
            if step == stop_at:
                halfway.set()
                server_down.wait(60)
            logger.log({"loss": 1.0 / (step + 1)}, step)
            spooled.log({"loss": 1.0 / (step + 1)}, step)
            time.sleep(0.005)

    loop = threading.Thread(target=train)
    loop.start()
    assert halfway.wait(30)
    port, old_pid = store.server.port, store.server.pid
    assert store.server.stop(force=True)  # the server goes away mid-logging
    assert not server_healthy(store.uri)
    server_down.set()
    loop.join()
    assert logger.pending > 0 and spooled.pending > 0  # kept, not dropped
    with pytest.raises(TrackingError, match="could not be sent"):
        logger.flush(timeout=1)
    # the spooled logger's process "crashes": its sender stops, its buffer is gone
    with spooled._cond:
        spooled._stop = True
        spooled._cond.notify_all()
    assert spool.read_text().count("\n") >= spooled.pending

    # a stale server.json (the dead server's) is ignored; a new server takes the same port
    (store.settings.state_dir / SERVER_FILE).write_text(
        json.dumps({"pid": old_pid, "port": port, "store_uri": store.server.store_uri})
    )
    store.server = LocalTrackingServer.from_settings(store.settings, port=port)
    assert store.server.start() == f"http://127.0.0.1:{port}" and store.server.started

    logger.flush(timeout=120)  # the buffered points arrive
    assert logger.sent == steps
    assert sorted(m.step for m in tracker.client.get_metric_history(run, "loss")) == list(
        range(steps)
    )
    replay = MetricLogger(store.uri, crashed_run, spool=spool)  # the resumed worker
    assert replay.pending > 0
    replay.close(timeout=120)
    history = tracker.client.get_metric_history(crashed_run, "loss")
    assert sorted(m.step for m in history) == list(range(steps))
    assert spool.read_text() == ""

    # resume: the worker re-reports validations it had reported; only new steps are added
    resumed = MetricLogger(store.uri, run)
    queued = sum(resumed.log({"loss": 0.5}, step) for step in range(steps + 20))
    assert queued == 20 and resumed.skipped == steps
    resumed.close()
    history = tracker.client.get_metric_history(run, "loss")
    assert sorted(m.step for m in history) == list(range(steps + 20))  # no duplicates

    # artifacts go through the server into the local folder
    folder = tmp_path / "evaluation"
    folder.mkdir()
    (folder / "evaluation.json").write_text('{"fpe": 0.1}')
    resumed.log_artifacts(folder, "evaluation")
    stored = Path(store.settings.artifact_location or "") / exp / run / "artifacts"
    assert json.loads((stored / "evaluation" / "evaluation.json").read_text()) == {"fpe": 0.1}
    listed = tracker.client.list_artifacts(run, "evaluation")
    assert [a.path for a in listed] == ["evaluation/evaluation.json"]


@pytest.mark.integration
def test_metric_logger_values_and_refusals(store: LocalStore) -> None:
    tracker = Tracker(store.uri)
    exp = tracker.experiment("sparling-values")
    run, _ = tracker.child_run(exp, tracker.parent_run(exp, "values"), "v", "v", {})
    with MetricLogger(store.uri, run) as logger:  # a NaN loss is reported, not refused
        assert logger.log({"loss": float("nan"), "grad": float("inf"), "acc": 0.5}, 0) == 3
        assert logger.log({"loss": 1.0}, 0) == 0  # the same (key, step) again: dropped
    values = {k: tracker.client.get_metric_history(run, k)[0].value for k in ("loss", "grad")}
    # NaN round-trips; the SQL store keeps inf as the largest float
    assert values["loss"] != values["loss"] and values["grad"] >= 1.7e308
    with pytest.raises(TrackingError, match="cannot log to run 0123abc"):
        MetricLogger(store.uri, "0123abc")


# -- measurement (not run by default) ----------------------------------------------------------
def _direct_writer(uri: str, index: int, steps: int, out: Any) -> None:
    from mlflow import MlflowClient

    errors: list[str] = []
    ok = 0
    try:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("direct")
        exp_id = exp.experiment_id if exp else client.create_experiment("direct")
        run = client.create_run(exp_id, run_name=f"writer {index}")
        for step in range(steps):
            try:
                client.log_metric(run.info.run_id, "m", float(step), step=step)
                ok += 1
            except Exception as e:
                errors.append(str(e).splitlines()[0][:160])
    except Exception as e:
        errors.append("died: " + str(e).splitlines()[0][:160])
    out.put((index, ok, errors))


@pytest.mark.skipif(
    os.environ.get("SPARLING_MEASURE_SQLITE") != "1",
    reason="a measurement: SPARLING_MEASURE_SQLITE=1",
)
def test_measure_direct_sqlite_writers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """4 processes writing one fresh SQLite store directly (what the local server avoids)."""
    steps, writers = 200, 4
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    uri = f"sqlite:///{tmp_path}/direct.db"
    procs = [ctx.Process(target=_direct_writer, args=(uri, i, steps, out)) for i in range(writers)]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    lost = writers * steps - sum(ok for _, ok, _ in results)
    with capsys.disabled():
        print(f"\ndirect SQLite, {writers} processes x {steps}: {time.monotonic() - t0:.1f} s")
        for index, ok, errors in results:
            print(f"  writer {index}: {ok} logged, errors: {errors[:2]}")
        print(f"  lost {lost} of {writers * steps} points")


def test_system_metrics_of_a_process_on_its_run(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    from pipelines.tracking.system_metrics import system_metrics

    tracker = Tracker(store.uri)
    exp = tracker.experiment("system-metrics")
    run = tracker.client.create_run(exp).info.run_id
    tracking = {"uri": store.uri, "run_id": run, "system_metrics_interval": 0.2}
    with system_metrics(tracking) as monitor:
        assert monitor is not None
        time.sleep(1.5)
    logged = tracker.client.get_run(run).data.metrics
    for name in ("cpu_utilization_percentage", "system_memory_usage_megabytes"):
        assert f"system/{name}" in logged, sorted(logged)
    steps = [
        m.step for m in tracker.client.get_metric_history(run, "system/cpu_utilization_percentage")
    ]
    assert steps == list(range(len(steps))) and len(steps) >= 2
    assert 0 < logged["system/system_memory_usage_megabytes"]

    # turned off in mlflow.yaml, or without psutil: nothing logged, the run goes on
    quiet = tracker.client.create_run(exp).info.run_id
    with system_metrics({**tracking, "run_id": quiet, "system_metrics": False}) as monitor:
        assert monitor is None
    monkeypatch.setitem(sys.modules, "psutil", None)
    with system_metrics({**tracking, "run_id": quiet}) as monitor:
        assert monitor is None
        time.sleep(0.5)
    assert "needs psutil" in caplog.text
    assert not tracker.client.get_run(quiet).data.metrics
