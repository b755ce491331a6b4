#!/usr/bin/env bash
# The whole test suite: environment, lint, format check, type check, then pytest
# (unit and integration tests; the 20 slowest are listed). Extra arguments go to pytest.
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
.venv/bin/python -m pytest -q --durations=20 "$@"
