#!/usr/bin/env bash
# Train (or resume) Sparling's DigitCircle result and its contrast
# (pipelines/sweeps/digit-circle-result.yaml) on this machine: the local executor (no Ray),
# two runs at a time with one thread each, in the sweep file's order. Runs
# live in results/digit-circle/runs/<run id>/, each keeping its last checkpoint there and
# resuming from it when this script runs again (on this machine, or on a fresh clone that
# has the committed checkpoint); finished runs are skipped. MLflow tracks every run (the
# local store under results/digit-circle/mlflow/), and the report comes at the end:
#
#   bash scripts/digit-circle-result.sh [--deadline SECONDS]
#   .venv/bin/sparling report digit-circle-result --work-dir results/digit-circle
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0
defaults=()
[[ " $* " == *" --parallel"* ]] || defaults+=(--parallel 2)
[[ " $* " == *" --threads"* ]] || defaults+=(--threads 1)
exec .venv/bin/sparling sweep pipelines/sweeps/digit-circle-result.yaml \
  --work-dir results/digit-circle --executor local "${defaults[@]}" "$@"
