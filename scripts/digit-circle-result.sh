#!/usr/bin/env bash
# Train (or resume) the runs of Sparling's DigitCircle result and its contrast
# (pipelines/sweeps/digit-circle-{result,contrast}.yaml) on this machine's CPU: two runs at a time,
# one thread each, without Ray, into results/digit-circle/runs/<run id>/. Each run keeps
# its last checkpoint there and resumes from it when this script is run again, on this
# machine or on a fresh clone that has the committed checkpoint. Finished runs are
# evaluated on their test split and skipped on later calls. Sparling's three seeds come
# first, then the contrast seed by seed (every method's seed 0 before any seed 1).
#
#   bash scripts/digit-circle-result.sh [--deadline SECONDS] [--parallel N]
#
# Then log them to MLflow and build the tables and figures, for each of the two files:
#   .venv/bin/sparling sweep pipelines/sweeps/digit-circle-result.yaml --work-dir results/digit-circle
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export OMP_NUM_THREADS=1
exec .venv/bin/python bench/gpu_sweep.py --seeds-first \
  pipelines/sweeps/digit-circle-result.yaml pipelines/sweeps/digit-circle-contrast.yaml \
  --work-dir results/digit-circle --device cpu --parallel 2 --threads 1 "$@"
