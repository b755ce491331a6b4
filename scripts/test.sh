#!/usr/bin/env bash
# The whole test suite: environment, lint, format check, type check, then pytest
# (unit and integration tests, in three processes; the 20 slowest are listed). Extra
# arguments go to pytest: e.g. `-n 0` runs every test in one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
echo "== ruff check";  .venv/bin/ruff check .
echo "== ruff format"; .venv/bin/ruff format --check .
echo "== mypy";        .venv/bin/mypy
echo "== pytest"
# Ray's own worker processes inherit these; keeping the BLAS pools at one thread per
# process stops the two cores of a small machine from being oversubscribed.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} RAY_USAGE_STATS_ENABLED=0
# Three test processes (pytest-xdist): most integration tests wait on start-ups (Ray, the
# MLflow server, a subprocess importing torch), so three overlap well even on 2 cores. The
# tests that start a multi-node Ray cluster of their own share one process, one after
# another (xdist_group "cluster", --dist loadgroup). One process, in order:
#   bash scripts/test.sh -n 0      (or -p no:xdist)
parallel=(-n 3 --dist loadgroup)
for arg in "$@"; do
  if [ "$arg" = no:xdist ] || [ "$arg" = -pno:xdist ]; then parallel=(); fi
done
.venv/bin/python -m pytest -q --durations=20 "${parallel[@]}" "$@"
