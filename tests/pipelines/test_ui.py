"""``sparling ui`` in a real browser: a sweep with four child runs shows up, nested.

Starts ``run_ui`` as its own process (as ``sparling ui`` runs), logs a sweep to it, opens
the UI in headless Chromium (Debian's ``chromium`` package, driven by Playwright; no
browser is ever downloaded), checks the parent and child run names and an artifact, saves
a screenshot of the runs table (``/tmp/sparling-mlflow-ui.png``, or where
``$SPARLING_UI_SCREENSHOT`` says), then stops the UI with Ctrl-C (SIGINT) and checks that
the server is gone.

The screenshot is of this test's made-up sweep, and never written into the repository
(a test edits no tracked file). The README's ``docs/img/mlflow-ui.png`` is of a real
``quickstart`` sweep, taken by ``scripts/ui_screenshot.py`` (see its docstring).
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from pipelines.tracking.finder import Tracker
from pipelines.tracking.logger import MetricLogger
from pipelines.tracking.procs import server_healthy
from pipelines.tracking.server import SERVER_FILE, LocalTrackingServer
from pipelines.tracking.settings import load_settings
from pipelines.tracking.tags import (
    TAG_DOMAIN,
    TAG_METHOD,
    TAG_SEED,
    UI_QUERY,
    environment_tags,
    run_name,
)
from pipelines.ui import HEADLESS_CHROMIUM_ARGS

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
#: where the screenshot goes (outside the repository: a test must not edit tracked files)
SCREENSHOT = Path(os.environ.get("SPARLING_UI_SCREENSHOT", "/tmp/sparling-mlflow-ui.png"))
CHROMIUM_ARGS = list(HEADLESS_CHROMIUM_ARGS)
UI_PROCESS = (  # what `sparling ui` runs
    "import sys; from pathlib import Path; from pipelines.ui import run_ui; "
    "run_ui(Path(sys.argv[1]))"
)
NAME_COLUMN = "attributes.`Run Name`"
METHODS = ("sparling", "sparling-st")
SEEDS = (0, 1)


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


@pytest.fixture
def ui(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], _Lines, Path]]:
    _require_browser()
    work = tmp_path / "work"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SPARLING_MLFLOW"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-u", "-c", UI_PROCESS, str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,  # no mlflow.yaml there: the built-in defaults
    )
    lines = _Lines(proc)
    try:
        uri = lines.wait_for(r"MLflow UI: (http://127\.0\.0\.1:\d+)/", timeout=180)[1]
        yield uri, proc, lines, work
    finally:
        if proc.poll() is None:  # the test failed before stopping it: Ctrl-C, then kill
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # never leave a server behind, whatever happened to the UI process
        LocalTrackingServer.from_settings(load_settings(work, env={})).stop(force=True)


def _log_sweep(uri: str, tmp_path: Path) -> tuple[str, str]:
    """A sweep parent with one child per method and seed, a few points and an artifact."""
    tracker = Tracker(uri)
    exp = tracker.experiment("sparling-digit-circle")
    parent = tracker.parent_run(exp, "demo-sweep", {TAG_DOMAIN: "digit-circle"})
    report = tmp_path / "evaluation"
    report.mkdir()
    (report / "evaluation.json").write_text('{"fpe": 0.12, "fne": 0.08, "ce": 0.05}\n')
    first = ""
    for method in METHODS:
        for seed in SEEDS:
            tags = {TAG_METHOD: method, TAG_SEED: seed, TAG_DOMAIN: "digit-circle"}
            child, _ = tracker.child_run(
                exp,
                parent,
                f"{method}-{seed}",
                run_name(method, seed),
                {"bottleneck.name": method, "seed": seed},
                {**tags, **environment_tags()},
            )
            first = first or child
            with MetricLogger(uri, child) as logger:
                for i in range(6):  # validations: accuracy rises while the density falls
                    accuracy = 0.9 * (1 - 0.6**i) + 0.03 * seed - 0.05 * (method != "sparling")
                    density = 0.5 * 0.75**i
                    logger.log(
                        {"val/exact_match": round(accuracy, 3), "schedule/density": density},
                        2000 * i,
                    )
                logger.log_artifacts(report, "evaluation")
            tracker.set_terminated(child)
    tracker.set_terminated(parent)
    return exp, first


def _tidy_table(page: Any) -> None:
    """Cosmetics for the screenshot (failures only warn): close the chat side panel, show
    the metric columns instead of empty dataset/source/model ones, widen the name column."""
    from playwright.sync_api import Error as PlaywrightError

    try:
        close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
        if close.count():
            close.first.click(timeout=5_000)
        page.get_by_role("button", name="Columns").click(timeout=5_000)
        tree = page.locator('[data-testid="column-selector-tree"]')
        for label in ("Dataset", "Source", "Models", "Metrics (2)"):
            node = tree.locator(f'.du-bois-light-tree-treenode:has(span[title="{label}"])')
            node.locator(".du-bois-light-tree-checkbox").first.click(timeout=5_000)
        page.keyboard.press("Escape")
        header = page.locator(f".ag-header-cell[col-id={NAME_COLUMN!r}] .ag-header-cell-resize")
        box = header.first.bounding_box(timeout=5_000)
        if box is not None:  # drag the column's right edge
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + 2, y)
            page.mouse.down()
            page.mouse.move(box["x"] + 72, y, steps=5)
            page.mouse.up()
    except PlaywrightError as e:
        warnings.warn(f"MLflow UI screenshot left untidied: {e}", stacklevel=1)


def test_ui_shows_the_sweep_and_its_runs(
    ui: tuple[str, subprocess.Popen[str], _Lines, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from playwright.sync_api import sync_playwright

    uri, proc, lines, work = ui
    exp, first_child = _log_sweep(uri, tmp_path)
    names = [run_name(m, s) for m in METHODS for s in SEEDS]
    oldest_first = "orderByKey=attributes.start_time&orderByAsc=true"  # keeps the nesting

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 560})
            page.set_default_timeout(60_000)
            page.goto(f"{uri}/#/experiments/{exp}/runs?{UI_QUERY}&{oldest_first}")
            page.get_by_text("demo-sweep", exact=True).wait_for()
            _tidy_table(page)
            if not page.get_by_text(names[0], exact=True).is_visible():
                # children are collapsed under their parent: expand the sweep's row
                row = page.locator('[role="row"]', has_text="demo-sweep")
                row.locator(f"[col-id={NAME_COLUMN!r}] button").first.click()
            for name in names:
                page.get_by_text(name, exact=True).wait_for()
            page.evaluate("document.activeElement && document.activeElement.blur()")
            page.wait_for_timeout(500)  # let the row animation settle
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

            # the artifact a worker logged is listed on the run's page
            page.goto(f"{uri}/#/experiments/{exp}/runs/{first_child}/artifacts?{UI_QUERY}")
            page.get_by_text("evaluation", exact=True).first.click()  # the folder
            page.get_by_text("evaluation.json").first.wait_for()
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nMLflow UI screenshot: {SCREENSHOT}")

    proc.send_signal(signal.SIGINT)  # Ctrl-C
    assert proc.wait(timeout=60) == 0
    lines.wait_for(r"stopping the MLflow UI", timeout=5)
    assert not server_healthy(uri)
    assert not (work / "mlflow" / SERVER_FILE).exists()
