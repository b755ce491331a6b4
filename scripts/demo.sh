#!/usr/bin/env bash
# The main job: set up the environment and run the end-to-end demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/env.sh
export RAY_USAGE_STATS_ENABLED=0
.venv/bin/sparling demo "$@"
