#!/usr/bin/env bash
# Train (or resume) Sparling on spoken digits with Non-sparse and Retrained beside it
# (pipelines/sweeps/audio-digits-result.yaml) on this machine: the local executor (no Ray),
# two runs at a time with one thread each (`--parallel 1` to leave a core free), in the
# sweep file's order. Runs live in results/audio-digits/runs/<run id>/, each keeping its
# last checkpoint there and resuming from it when this script runs again; finished runs
# are skipped. MLflow tracks every run (the local store under results/audio-digits/mlflow/),
# and the report comes at the end:
#
#   SPARLING_AUDIO_ROOT=data/fsdd bash scripts/audio-digits-result.sh [--deadline SECONDS]
#   .venv/bin/sparling report audio-digits-result --work-dir results/audio-digits
#
# The recordings: $SPARLING_AUDIO_ROOT, else data/fsdd when it is there
# (`.venv/bin/sparling data fetch fsdd --to data/fsdd` downloads the Free Spoken Digit
# Dataset, checksum-checked).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${SPARLING_AUDIO_ROOT:-}" ]; then
  if [ -d data/fsdd ]; then
    export SPARLING_AUDIO_ROOT=data/fsdd
  else
    echo "no recordings: set SPARLING_AUDIO_ROOT to an FSDD or AudioMNIST folder, or run" >&2
    echo "  .venv/bin/sparling data fetch fsdd --to data/fsdd" >&2
    exit 2
  fi
fi
bash scripts/env.sh
export OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0
defaults=()
[[ " $* " == *" --parallel"* ]] || defaults+=(--parallel 2)
[[ " $* " == *" --threads"* ]] || defaults+=(--threads 1)
exec .venv/bin/sparling sweep pipelines/sweeps/audio-digits-result.yaml \
  --work-dir results/audio-digits --executor local "${defaults[@]}" "$@"
