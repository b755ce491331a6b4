"""Screenshot a sweep in the MLflow UI (for the README): headless Debian Chromium.

.venv/bin/sparling ui &                       # prints the address
.venv/bin/python scripts/ui_screenshot.py http://127.0.0.1:PORT quickstart docs/img/mlflow-ui.png
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow import MlflowClient
from playwright.sync_api import sync_playwright

from pipelines.ui import HEADLESS_CHROMIUM_ARGS


def main(uri: str, sweep: str, out: str) -> None:
    exp = MlflowClient(uri).get_experiment_by_name(f"sparling-{sweep}")
    if exp is None:
        raise SystemExit(f"no experiment sparling-{sweep} at {uri}")
    query = "workflowType=machine_learning&orderByKey=attributes.start_time&orderByAsc=true"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium", args=list(HEADLESS_CHROMIUM_ARGS)
        )
        page = browser.new_page(viewport={"width": 1280, "height": 700})
        page.set_default_timeout(60_000)
        page.goto(f"{uri}/#/experiments/{exp.experiment_id}/runs?{query}")
        page.get_by_text(sweep, exact=True).first.wait_for()
        close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
        if close.count():  # the assistant side panel hides half of the table
            close.first.click()
        row = page.locator('[role="row"]', has_text=sweep)
        row.locator("[col-id='attributes.`Run Name`'] button").first.click()
        # the run and, in the Models column, its logged model bear the name
        page.get_by_text("sparling seed=0", exact=True).first.wait_for()
        page.wait_for_timeout(800)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=out)
        browser.close()
    print(out)


if __name__ == "__main__":
    main(*sys.argv[1:4])
