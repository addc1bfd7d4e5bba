#!/usr/bin/env bash
# One command for a GPU machine: the GPU tests and every benchmark on CuPy (and PyTorch where the
# script compares with it and torch imports), JSON under bench/results/<date>-<GPU name>/, in under 9 minutes on one
# H100.  Each step has its own time limit (`timeout`), so a hung step cannot eat the whole budget;
# a failed step is reported and the others still run.  Exit status: number of failed steps.
#
#   bash bench/gpu.sh [PYTHON]        (default: python3 on PATH; run from anywhere)
#
# Budget (seconds, worst case):          pytest -m gpu 90 | steps 90 | oneshot_study 60 |
#   training 90 | time_to_accuracy 90 | solves 45 | scaling 45 | model 20   = 530 s < 540 s.
# Sizes: the --quick sizes of every script (seconds on a CPU; on the GPU dominated by kernel
# launches and CuPy's first-call compilation), except steps.py which runs its full size sweep
# (it is the GPU kernel benchmark; ~1 min).  solves.py and scaling.py build their problems on the
# NumPy backend (host-side MGRIT studies); they run here so the machine's result set is complete.
set -u
cd "$(dirname "$0")/.."
PY=${1:-python3}
export GPUBRAID_BACKEND=cupy              # TrainConfig backend "auto" and the benches pick CuPy
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
fail=0
step() {  # step LIMIT_S NAME CMD...
    local limit=$1 name=$2; shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s)"
    if timeout "$limit" "$@"; then
        echo "== $name ok in $(( $(date +%s) - t0 )) s"
    else
        echo "== $name FAILED (status $?) after $(( $(date +%s) - t0 )) s"; fail=$((fail + 1))
    fi
}
T0=$(date +%s)
$PY -c "import cupy; print('CuPy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')" \
    || { echo "no CuPy / GPU: nothing to do"; exit 1; }
step 90 "pytest -m gpu"      $PY -m pytest -q -m gpu tests/runtime/test_cuda.py
step 90 "steps (CuPy, torch)" $PY -m bench.steps
step 60 "oneshot_study"       $PY -m bench.oneshot_study --quick
step 90 "training"            $PY -m bench.training --quick
step 90 "time_to_accuracy"    $PY -m bench.time_to_accuracy --quick
GPUBRAID_BACKEND=numpy step 45 "solves (NumPy)"   $PY -m bench.solves --quick
GPUBRAID_BACKEND=numpy step 45 "scaling (NumPy)"  $PY -m bench.scaling --quick
STEPS_JSON=$(ls -t bench/results/*/steps.json 2>/dev/null | head -1)
step 20 "model" $PY -m bench.perf_model ${STEPS_JSON:+--steps-gpu "$STEPS_JSON"}
echo "== total $(( $(date +%s) - T0 )) s, $fail failed step(s); results in bench/results/<date>-<GPU name>/"
exit $fail
