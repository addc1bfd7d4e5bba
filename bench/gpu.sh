#!/usr/bin/env bash
# One command for a GPU machine: the GPU tests, the kernel, layer-sweep and training benchmarks on CuPy
# against PyTorch (where the script compares with it and torch imports), one-shot's study, and a short
# Nsight profile when nsys or ncu runs there; JSON under bench/results/<date>-<GPU name>/, in under
# 10 minutes on one H100/H200.  Each step has its own time limit (`timeout`), so a hung step cannot
# eat the whole budget; a failed step is reported and the others still run.  Exit status: number
# of failed steps.
#
#   bash bench/gpu.sh [PYTHON]        (default: python3 on PATH; run from anywhere)
#
# A machine without network whose Python lacks some of gpubraid's dependencies: fill .whl/ here
# with bench/gpu_wheels.sh, send it along; they are installed under $GPUBRAID_ENV (default
# /tmp/gpubraid-env) and put first on the paths, nothing else is touched.  When $OUT is set (the
# device tool's folder of returned files), the results and the Nsight report are packed into
# $OUT/gpu-results.tgz.
#
# Budget (seconds, worst case): wheels 30 | pytest -m gpu 120 | steps 90 | oneshot_study 60 |
#   gpu_sweeps 60 | training 75 | time_to_accuracy 75 | model 20 | nsight 45   = 575 s < 10 min.
# Sizes: the --quick sizes of every script (seconds on a CPU; on the GPU dominated by kernel
# launches and CuPy's first-call compilation), except steps.py which runs its full size sweep
# (it is the GPU kernel benchmark; ~1 min).  The host-side MGRIT studies (solves, scaling) run on
# NumPy and are left to CPU machines.
set -u
cd "$(dirname "$0")/.."
PY=${1:-python3}
export GPUBRAID_BACKEND=cupy              # TrainConfig backend "auto" and the benches pick CuPy
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
if compgen -G ".whl/*.whl" > /dev/null; then
    ENV_DIR=${GPUBRAID_ENV:-/tmp/gpubraid-env}
    timeout 30 $PY -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --prefix "$ENV_DIR" .whl/*.whl || { echo "installing .whl/ into $ENV_DIR failed"; exit 1; }
    SITE=$($PY -c "import sys, sysconfig; print(sysconfig.get_path('purelib', vars={'base': sys.argv[1], 'platbase': sys.argv[1]}))" "$ENV_DIR")
    export PYTHONPATH="$SITE:$PYTHONPATH" PATH="$ENV_DIR/bin:$PATH" LD_LIBRARY_PATH="$ENV_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "wheels of .whl/ installed under $ENV_DIR"
fi
MARK=$(mktemp)
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
step 120 "pytest -m gpu"     $PY -m pytest -q -m gpu tests
step 90 "steps (CuPy, torch)" $PY -m bench.steps
step 60 "oneshot_study"       $PY -m bench.oneshot_study --quick
step 60 "gpu_sweeps (CuPy, torch)" $PY -m bench.gpu_sweeps
step 75 "training"            $PY -m bench.training --quick
step 75 "time_to_accuracy"    $PY -m bench.time_to_accuracy --quick
STEPS_JSON=$(ls -t bench/results/*/steps.json 2>/dev/null | head -1)
step 20 "model" $PY -m bench.perf_model ${STEPS_JSON:+--steps-gpu "$STEPS_JSON"}
# Nsight: the NVTX phases of a short one-shot run (paper settings, 64 layers: two levels) and its kernels
NSIGHT=(-m gpubraid train peaks --layers 64 --final-time 1 --activation smoothrelu --method oneshot
        --iterations 5 --val-every 0 --no-progress)
PROFILE_DIR=$($PY -c "from bench.common import run_dir; print(run_dir())") || PROFILE_DIR=bench/results/tmp
mkdir -p "$PROFILE_DIR"
if command -v nsys > /dev/null; then
    step 45 "nsight (nsys)" bash -c 'nsys profile -t cuda,nvtx -o "$0/oneshot" --force-overwrite true "${@}" &&
        nsys stats --report nvtx_sum,cuda_gpu_kern_sum "$0/oneshot.nsys-rep" | tee "$0/oneshot-nsys.txt"' \
        "$PROFILE_DIR" "$PY" "${NSIGHT[@]}"
elif command -v ncu > /dev/null; then
    step 45 "nsight (ncu)" bash -c 'ncu --nvtx --launch-count 6 --section SpeedOfLight "${@}" | tee "$0/oneshot-ncu.txt"' \
        "$PROFILE_DIR" "$PY" "${NSIGHT[@]}"
else
    echo "== nsight skipped: neither nsys nor ncu on PATH"
fi
echo "== total $(( $(date +%s) - T0 )) s, $fail failed step(s); results in bench/results/<date>-<GPU name>/"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    find bench/results -type f -newer "$MARK" -print0 | tar czf "$OUT/gpu-results.tgz" --null -T - \
        && echo "results packed into $OUT/gpu-results.tgz"
fi
rm -f "$MARK"
exit $fail
