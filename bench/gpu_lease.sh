#!/usr/bin/env bash
# The sweeps this project runs on a borrowed GPU machine (no Ray or MLflow there), in one run:
#
#   OUT=/some/dir bash bench/gpu_lease.sh        # on the GPU machine, .whl/ carried
#
# contrast-gpu (Sparling, ST, L1 at the CPU run's 120,000-sample budget) and
# sensitivity-gpu (21 runs), through the local executor (`sparling sweep --executor local
# --no-tracking`), PARALLEL runs at once on the one GPU, each sweep stopped at DEADLINE
# seconds; the run folders come back packed as $OUT/<sweep>-<n>.tgz. Then, here:
#   for f in *.tgz; do tar xzf $f -C sparling-work; done
#   sparling sweep pipelines/sweeps/sensitivity-gpu.yaml && sparling report sensitivity-gpu
set -u
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
{ date -u; nvidia-smi 2>&1 | head -15; nproc; python3 -c "import torch; print(torch.__version__)"; } \
    >"$OUT/log.txt" 2>&1
for sweep in contrast-gpu sensitivity-gpu; do
    python3 -m pipelines.cli sweep "pipelines/sweeps/$sweep.yaml" --work-dir /tmp/work \
        --executor local --no-tracking --device cuda --parallel "${PARALLEL:-10}" \
        --threads "${THREADS:-1}" --deadline "${DEADLINE:-220}" --pack "$OUT/$sweep" \
        2>&1 | tee -a "$OUT/log.txt"
done
date -u >>"$OUT/log.txt"
