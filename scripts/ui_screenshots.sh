#!/usr/bin/env bash
# The MLflow UI's browser test (tests/pipelines/test_ui.py), with its screenshots saved
# into docs/img/ (mlflow-ui-runs.png, -charts.png, -report.png, -failed.png), the images
# of docs/mlflow.md. It runs two tiny sweeps, opens the UI in headless Chromium (Debian's
# chromium package) and checks what each image shows; a few minutes on 2 cores.
#
#   bash scripts/ui_screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export SPARLING_UI_SCREENSHOTS="$PWD/docs/img" OMP_NUM_THREADS=1
exec .venv/bin/python -m pytest -q -n 0 -p no:cacheprovider tests/pipelines/test_ui.py "$@"
