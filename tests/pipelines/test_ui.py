"""``sparling ui`` in a real browser, on what real sweeps logged: what a person looks for.

Two sweeps run first, as a user runs them (``sparling sweep --executor local``, tracked by
the local MLflow server, with ``train/`` points every step and system metrics every
second so that a tiny run has some): ``ui-demo`` (Sparling and L1, which finishes and
logs its report to the parent) and ``ui-broken`` (one run whose checkpoint is truncated
after a first, untracked pass, so that the tracked rerun fails). Then ``run_ui`` starts as
its own process (as ``sparling ui`` runs) and headless Chromium (Debian's ``chromium``
package, driven by Playwright; no browser is ever downloaded) checks:

- the runs table: the sweep's parent with its children nested; each child's Dataset
  (the training set by name and hash), Source (the sweep file), User and Models (the
  exported model) cells filled;
- the chart view: one section per metric group (``val``, ``train``, ``test``,
  ``schedule``) and the system metrics, each with charts;
- the parent's artifacts: the sweep report, rendered;
- the failed sweep: its parent's status "Failed".

Each view is saved as a screenshot into ``$SPARLING_UI_SCREENSHOTS`` (a folder; default:
the test's temporary folder). ``bash scripts/ui_screenshots.sh`` runs this test with it
set to ``docs/img``, which is where the images in ``docs/mlflow.md`` come from. Then the UI
is stopped with Ctrl-C (SIGINT) and the server must be gone.
"""

from __future__ import annotations

import getpass
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, run_sweep_cli, tiny_config

from pipelines.tracking.procs import server_healthy
from pipelines.tracking.server import SERVER_FILE, LocalTrackingServer
from pipelines.tracking.settings import load_settings
from pipelines.tracking.tags import UI_QUERY
from pipelines.ui import HEADLESS_CHROMIUM_ARGS

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS_ENV = "SPARLING_UI_SCREENSHOTS"
CHROMIUM_ARGS = list(HEADLESS_CHROMIUM_ARGS)
UI_PROCESS = (  # what `sparling ui` runs
    "import sys; from pathlib import Path; from pipelines.ui import run_ui; "
    "run_ui(Path(sys.argv[1]))"
)
NAME_COLUMN = "attributes.`Run Name`"
DEMO, BROKEN = "ui-demo", "ui-broken"
CHILDREN = ("sparling seed=0", "l1 seed=0")
#: oldest first keeps the children under their parent
ORDER = "orderByKey=attributes.start_time&orderByAsc=true"
#: the chart sections the runs' metric names make (``val/exact_match`` -> ``val``)
SECTIONS = ("val", "train", "test", "schedule", "System metrics")


def _require_browser() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: apt-get install -y chromium")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is absent: pip install playwright")


class _Lines:
    """A process's output lines, read by a thread (so waiting on them can time out)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout

        def read() -> None:
            for line in stream:
                self.lines.put(line)

        threading.Thread(target=read, daemon=True).start()

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in: {self.seen}") from None
            self.seen.append(line.rstrip())
            if match := re.search(pattern, line):
                return match


@dataclass
class Logged:
    """What the two sweeps left in the work dir's MLflow store."""

    work: Path
    demo_file: Path
    train_set: str  # the training set's name, as the Dataset column shows it
    experiments: dict[str, str]  # sweep name -> experiment id
    parents: dict[str, str]  # sweep name -> parent run id


def _sweep_file(path: Path, name: str, methods: list[str], seeds: list[int]) -> Path:
    base = tiny_config(val_interval=8)  # 6 validations: a line on every chart
    path.write_text(
        yaml.safe_dump({"name": name, "base": base, "methods": methods, "seeds": seeds})
    )
    return path


def _run_sweeps(tmp: Path) -> Logged:
    from mlflow import MlflowClient

    from pipelines.tracking.server import tracking_uri

    work = tmp / "work"
    work.mkdir()
    # the work dir's own settings (found first): a train/ point every step, system
    # metrics every second
    (work / "mlflow.yaml").write_text(
        yaml.safe_dump({"logging": {"train_every_steps": 1, "system_metrics_interval": 1}})
    )
    local = ("--executor", "local", "--quiet")
    demo = _sweep_file(tmp / "demo.yaml", DEMO, ["sparling", "l1"], [0])
    done = run_sweep_cli(demo, work, *local, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    broken = _sweep_file(tmp / "broken.yaml", BROKEN, ["sparling"], [3])
    first = run_sweep_cli(broken, work, *local, "--no-tracking", "--no-report", timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    finished = {p.parent for p in (work / "runs").glob("*/result.json")}
    (run_dir,) = [d for d in finished if json.loads((d / "config.json").read_text())["seed"] == 3]
    state = run_dir / "checkpoints" / "last" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    (run_dir / "evaluation.json").unlink()  # so that the sweep resumes it
    failed = run_sweep_cli(broken, work, *local, "--no-report", timeout=900)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]

    settings = load_settings(work)
    experiments, parents = {}, {}
    with tracking_uri(settings) as uri:
        client = MlflowClient(uri)
        for name in (DEMO, BROKEN):
            exp = client.get_experiment_by_name(settings.experiment_for(sweep=name))
            assert exp is not None, name
            (parent,) = [
                r
                for r in client.search_runs([exp.experiment_id])
                if r.data.tags.get("sparling.kind") == "sweep"
            ]
            experiments[name], parents[name] = exp.experiment_id, parent.info.run_id
        child = client.search_runs(
            [experiments[DEMO]], f"tags.`mlflow.parentRunId` = '{parents[DEMO]}'"
        )[0]
        assert child.inputs is not None, child.info.run_id
        (train,) = [
            i.dataset.name for i in child.inputs.dataset_inputs if "train" in i.dataset.name
        ]
    return Logged(work, demo, train, experiments, parents)


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], _Lines, Logged]]:
    _require_browser()
    logged = _run_sweeps(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARLING_MLFLOW"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", UI_PROCESS, str(logged.work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines = _Lines(proc)
    try:
        uri = lines.wait_for(r"MLflow UI: (http://127\.0\.0\.1:\d+)/", timeout=180)[1]
        yield uri, proc, lines, logged
    finally:
        if proc.poll() is None:  # the test failed before stopping it: Ctrl-C, then kill
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # never leave a server behind, whatever happened to the UI process
        LocalTrackingServer.from_settings(load_settings(logged.work, env={})).stop(force=True)


class _Browser:
    """One headless Chromium page on the UI, with the steps the test takes on it."""

    def __init__(self, page: Any, uri: str, shots: Path) -> None:
        self.page, self.uri, self.shots = page, uri, shots

    def goto(self, route: str, wait_for: str) -> None:
        sep = "&" if "?" in route else "?"
        self.page.goto(f"{self.uri}/#/{route}{sep}{UI_QUERY}")
        self.page.get_by_text(wait_for, exact=True).first.wait_for()
        close = self.page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
        if close.count():  # the assistant's side panel hides half of the page
            close.first.click()

    def shot(self, name: str) -> Path:
        self.page.evaluate("document.activeElement && document.activeElement.blur()")
        self.page.wait_for_timeout(800)  # let animations settle
        path = self.shots / name
        self.page.screenshot(path=str(path))
        return path

    def expand(self, parent: str, child: str) -> None:
        """Show the children nested under ``parent``'s row (collapsed at first)."""
        if not self.page.get_by_text(child, exact=True).first.is_visible():
            row = self.page.locator('[role="row"]', has_text=parent)
            row.locator(f"[col-id={NAME_COLUMN!r}] button").first.click()
        self.page.get_by_text(child, exact=True).first.wait_for()

    def show_columns(self, *titles: str) -> None:
        self.page.get_by_role("button", name="Columns").click()
        tree = self.page.locator('[data-testid="column-selector-tree"]')
        for title in titles:
            node = tree.locator(f'.du-bois-light-tree-treenode:has(span[title="{title}"])')
            node.locator(".du-bois-light-tree-checkbox").first.click()
        self.page.keyboard.press("Escape")

    def table(self) -> dict[str, dict[str, str]]:
        """The runs table as shown: run name -> {column title: cell text}. AG Grid draws
        the pinned name column and the other columns as separate rows with one row index."""
        cells = self.page.locator(".ag-row").evaluate_all(
            """rows => rows.map(r => [r.getAttribute('row-index'),
                 Array.from(r.querySelectorAll('[col-id]')).map(
                     c => [c.getAttribute('col-id'), c.innerText.trim()])])"""
        )
        heads = dict(
            self.page.locator(".ag-header-cell").evaluate_all(
                "els => els.map(e => [e.getAttribute('col-id'), e.innerText.trim()])"
            )
        )
        by_index: dict[str, dict[str, str]] = {}
        for index, row in cells:
            for col, text in row:
                by_index.setdefault(index, {})[heads.get(col) or col] = text
        # the name cell also holds the run's colour swatch ("#5f7281\nui-demo")
        return {row.get("Run Name", "").split("\n")[-1]: row for row in by_index.values()}

    def chart_sections(
        self, until: Callable[[dict[str, int]], bool], timeout: float = 60
    ) -> dict[str, int]:
        """The chart view's sections (title -> how many charts it says it holds), once
        ``until`` holds for them (the view fills in as the metrics arrive) or ``timeout``
        seconds have passed."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.page.locator("body").inner_text()
            found = {m[1]: int(m[2]) for m in re.finditer(r"(?m)^(.+)\n\((\d+)\)$", text)}
            if until(found) or time.monotonic() > deadline:
                return found
            self.page.wait_for_timeout(500)


def _check_ui(uri: str, logged: Logged, shots: Path) -> list[Path]:
    """Every check in the browser; the screenshots go to ``shots``."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    demo, broken = logged.experiments[DEMO], logged.experiments[BROKEN]
    saved: list[Path] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 640})
            page.set_default_timeout(60_000)
            ui_page = _Browser(page, uri, shots)

            # -- the runs table: children nested, their context columns filled ----------
            ui_page.goto(f"experiments/{demo}/runs?{ORDER}", DEMO)
            ui_page.show_columns("User", "val/exact_match")
            ui_page.expand(DEMO, CHILDREN[0])
            table = ui_page.table()
            for child in CHILDREN:
                row = table[child]
                assert row["Dataset"].startswith(logged.train_set), row
                assert row["Source"] == logged.demo_file.name, row  # the sweep file
                assert row["User"] == getpass.getuser(), row
                assert row["Models"] == child, row  # the exported model, by the run's name
                assert re.fullmatch(r"[01](\.\d+)?", row["val/exact_match"]), row
            assert table[DEMO]["Source"] == logged.demo_file.name, table[DEMO]
            saved.append(ui_page.shot("mlflow-ui-runs.png"))

            # -- the chart view: one section per metric group, each with charts --------
            page.locator("label:has(input[value=CHART])").click()
            sections = ui_page.chart_sections(until=lambda found: set(SECTIONS) <= set(found))
            for section in SECTIONS:
                assert sections.get(section, 0) > 0, sections
            page.get_by_placeholder("Search metric charts").fill("val/")
            assert ui_page.chart_sections(until=lambda found: list(found) == ["val"])
            saved.append(ui_page.shot("mlflow-ui-charts.png"))

            # -- the parent's artifacts: the sweep report, rendered ---------------------
            ui_page.goto(f"experiments/{demo}/runs/{logged.parents[DEMO]}/artifacts", "report")
            page.get_by_text("report", exact=True).first.click()  # the folder
            page.get_by_text("per_seed_table.json", exact=True).first.wait_for()
            page.get_by_text("report.md", exact=True).first.click()
            page.get_by_text(f"Sweep report: {DEMO}").first.wait_for()
            saved.append(ui_page.shot("mlflow-ui-report.png"))

            # -- the failed sweep: its parent says so ----------------------------------
            ui_page.goto(f"experiments/{broken}/runs/{logged.parents[BROKEN]}", BROKEN)
            about = page.locator("body").inner_text()
            assert re.search(r"Status\s+Failed", about), about[:2000]
            saved.append(ui_page.shot("mlflow-ui-failed.png"))
        finally:
            browser.close()
    return saved


def test_ui_shows_what_a_user_looks_for(
    ui: tuple[str, subprocess.Popen[str], _Lines, Logged],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    uri, proc, lines, logged = ui
    shots = Path(os.environ.get(SCREENSHOTS_ENV) or tmp_path / "screenshots")
    saved = _check_ui(uri, logged, shots)
    with capsys.disabled():
        print("\nMLflow UI screenshots: " + ", ".join(map(str, saved)))

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 0
    lines.wait_for(r"stopping the MLflow UI", timeout=5)
    assert not server_healthy(uri)
    assert not (logged.work / "mlflow" / SERVER_FILE).exists()
