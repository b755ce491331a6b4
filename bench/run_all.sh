#!/usr/bin/env bash
# Every CPU benchmark of docs/performance.md in one go, on a quiet machine (about an hour
# on the 2-core EPYC). Results: bench/results/*.json; the log: bench/results/run_all.log.
#
#     bash bench/run_all.sh            # all
#     bash bench/run_all.sh sparsity   # some: sparsity decode train data sweep checkpoint
#
# Sizes are chosen to fit an hour; each script's --help says what its options change.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
LOG=bench/results/run_all.log
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(sparsity decode train data sweep checkpoint)
say() { echo "=== $(date -u +%H:%M:%S) $* (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$LOG"; }
for p in "${parts[@]}"; do
  say "start $p"
  case "$p" in
    sparsity) $PY bench/bench_sparsity.py ;;
    decode) $PY bench/bench_decode.py --seconds 5 --min-reps 2 ;;
    train)
      # DigitCircle and audio at the presets' batches; LaTeX at batch 4 (its fast preset
      # needs ~27 GB at batch 32; FLOPs per sample do not depend on the batch)
      $PY bench/bench_train_step.py --domains digit-circle audio-digits --threads 1 2 --seconds 20 --min-steps 2
      $PY bench/bench_train_step.py --domains latex-ocr --batch 4 --threads 1 2 --seconds 20 \
        --min-steps 2 --no-reference --out bench/results/train_step_latex.json ;;
    data) $PY bench/bench_data.py && $PY bench/bench_data_pipeline.py ;;
    sweep) $PY bench/bench_sweep.py --runs 2 --samples 6000 --preset fast ;;
    checkpoint) $PY bench/bench_checkpoint_io.py ;;
    *) echo "unknown part $p (accepted: sparsity decode train data sweep checkpoint)" >&2; exit 2 ;;
  esac 2>&1 | tee -a "$LOG"
  say "end $p"
done
