#!/usr/bin/env bash
# Everything this project measures on a GPU, in one short run (the GPU figures of
# docs/performance.md, section 6, and the tuning probes of docs/results.md), for a
# borrowed GPU machine that has torch but not this project installed:
#
#   OUT=DIR PROBE_OUT=DIR bash bench/gpu_session.sh   # on the GPU machine: all of it in DIR
#
# 1. bench/bench_gpu.py: the paper preset's training step (fp32, TF32, bf16; batch 10 and
#    the largest batch that fits), its fraction of the measured peak, decoding.
# 2. bench/probe_train.py, four at once: how far the fast preset's DigitCircle Sparling run
#    gets in PROBE_SECONDS under different settings (g width, validation interval, d_T,
#    batch), to choose the CPU configuration before spending CPU hours on it. The probe
#    records go to PROBE_OUT (default results/digit-circle-probes/, where the committed
#    ones are), their log to $OUT/probes.log.
# Wheels in .whl/ (pydantic, rapidfuzz: not in the GPU image) are installed to /tmp/site.
set -u
OUT=${OUT:-bench/results/gpu-session}
PROBE_OUT=${PROBE_OUT:-results/digit-circle-probes}
DEVICE=${DEVICE:-cuda}
BENCH_SECONDS=${BENCH_SECONDS:-5}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-200}
PROBE_SECONDS=${PROBE_SECONDS:-270}
mkdir -p "$OUT" "$PROBE_OUT"
OUT=$(cd "$OUT" && pwd)
PROBE_OUT=$(cd "$PROBE_OUT" && pwd)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PY=${PY:-python3}
cd bench
{ date -u; nvidia-smi 2>&1 | head -15; $PY -c "import torch, sparling; print(torch.__version__)"; } \
    >"$OUT/log.txt" 2>&1
timeout "$BENCH_TIMEOUT" $PY bench_gpu.py --device "$DEVICE" --seconds "$BENCH_SECONDS" \
    --out "$OUT/gpu.json" --markdown "$OUT/gpu.md" ${BENCH_ARGS:-} >>"$OUT/log.txt" 2>&1
echo "bench_gpu exit $?" >>"$OUT/log.txt"

probe() {  # name, then --set arguments
    local name=$1
    shift
    local sets=()
    for s in "$@"; do sets+=(--set "$s"); done
    timeout $((PROBE_SECONDS + 150)) $PY probe_train.py --device "$DEVICE" --threads 2 \
        --seconds "$PROBE_SECONDS" --eval-samples "${EVAL_SAMPLES:-500}" "${sets[@]}" \
        --out "$PROBE_OUT/probe_$name.json" >>"$OUT/probes.log" 2>&1
    echo "probe $name exit $?" >>"$OUT/probes.log"
}
common=(optim.warmup_samples=3000 schedule.threshold_decay=1.0e-5 ${PROBE_SETS:-})
probe a "${common[@]}" val_interval=2000 data.val_size=500 &
probe b "${common[@]}" val_interval=2000 data.val_size=500 model.overrides.width=16 &
probe c "${common[@]}" val_interval=1000 data.val_size=300 model.overrides.width=16 \
    schedule.threshold_decay=2.0e-5 &
probe d "${common[@]}" val_interval=1000 data.val_size=300 model.overrides.width=16 \
    schedule.threshold_decay=2.0e-5 batch_size=16 &
wait
date -u >>"$OUT/log.txt"
