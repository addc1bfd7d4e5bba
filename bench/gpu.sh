#!/usr/bin/env bash
# One command for a GPU machine: the GPU tests, the kernel, layer-sweep and training benchmarks on CuPy
# against PyTorch (where the script compares with it and torch imports), one-shot's study, and a short
# Nsight profile (nsys, else ncu); JSON under bench/results/<date>-<GPU name>/.  Each step has its own
# time limit (`timeout`), so a hung step cannot eat the whole budget; a failed step is reported and
# the others still run; the results are packed after every step, so a run cut short still returns
# what it finished.  Exit status: number of failed steps.
#
#   bash bench/gpu.sh [PYTHON] [STEP ...]     (default: python3 on PATH, every step; run from anywhere)
#
# Steps, in this order, with their limits (seconds) and what they took on the H200 (2026-12-04):
#   tests    120   pytest -m "gpu and not mpi" (cold: the width modules compile)  35–70
#   mpi       90   pytest -m "gpu and mpi": the pipelines with CuPy arrays on 2 ranks sharing the GPU
#   kernels   90   bench.steps --kernels-only (forward/adjoint/param_grad vs torch; the CPU
#                  training-step rows of bench.steps belong to CPU machines)        < 70
#   sweeps    60   bench.gpu_sweeps (one-launch layer sweeps vs per-layer launches vs torch)   36
#   training 150   bench.training, default sizes, each method warmed up untimed first
#   nsight    40   ncu or nsys on a short one-shot run (our kernels only)          21
#   profile   45   cProfile of 40 one-shot iterations at the paper's settings, 256 layers   ~5
#   tta       45   bench.time_to_accuracy --quick                                  18
#   study     30   bench.oneshot_study --quick                                     12
# = 670 s at most, plus about 10 s for the wheels.  The host-side MGRIT studies (solves, scaling, the
# performance model) run on NumPy and are left to CPU machines.
#
# A machine without network whose Python lacks some of gpubraid's dependencies: fill .whl/ here
# with bench/gpu_wheels.sh, send it along; bench/gpu_env.sh installs them under $GPUBRAID_ENV
# (default /tmp/gpubraid-env) and puts them first on the paths, nothing else is touched.  When $OUT
# is set (the device tool's folder of returned files), the results and the Nsight report are packed
# into $OUT/gpu-results.tgz.
set -u
cd "$(dirname "$0")/.."
PY=${1:-python3}
shift $(( $# > 0 ? 1 : 0 ))
STEPS=" ${*:-tests mpi kernels sweeps training nsight profile tta study} "
. bench/gpu_env.sh "$PY" || exit 1
MARK=$(mktemp)
fail=0
pack() {  # the results written since the start, into $OUT (the device tool's returned folder)
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        find bench/results -type f -newer "$MARK" -print0 | tar czf "$OUT/gpu-results.tgz" --null -T -
    fi
}
step() {  # step KEY LIMIT_S NAME CMD...: runs when KEY is among the steps asked for
    local key=$1 limit=$2 name=$3; shift 3
    [[ $STEPS == *" $key "* ]] || return 0
    local t0=$(date +%s)
    echo "== $name (limit ${limit}s)"
    if timeout "$limit" "$@"; then
        echo "== $name ok in $(( $(date +%s) - t0 )) s"
    else
        echo "== $name FAILED (status $?) after $(( $(date +%s) - t0 )) s"; fail=$((fail + 1))
    fi
    pack
}
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>/dev/null
$PY -c "import cupy; print('CuPy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')" \
    || { echo "no CuPy / GPU: nothing to do"; exit 1; }
step tests 120 "pytest -m 'gpu and not mpi'" $PY -m pytest -q -m "gpu and not mpi" -rfE --tb=short --timeout 60 -p no:cacheprovider tests
step mpi 90 "pytest -m 'gpu and mpi'"     $PY -m pytest -q -m "gpu and mpi" -rfE --tb=short --timeout 85 -p no:cacheprovider tests
step kernels 90 "steps (CuPy, torch)"     $PY -m bench.steps --kernels-only
step sweeps 60 "gpu_sweeps (CuPy, torch)" $PY -m bench.gpu_sweeps
step training 150 "training (CuPy, torch)" $PY -m bench.training
# Nsight: the NVTX phases of a short one-shot run (paper settings, 64 layers: two levels) and its kernels
NSIGHT=(-m gpubraid train peaks --layers 64 --final-time 1 --activation smoothrelu --method oneshot
        --iterations 5 --val-every 0 --no-progress)
PROFILE_DIR=$($PY -c "from bench.common import run_dir; print(run_dir())") || PROFILE_DIR=bench/results/tmp
mkdir -p "$PROFILE_DIR"
if command -v nsys > /dev/null; then
    step nsight 40 "nsight (nsys)" bash -c 'nsys profile -t cuda,nvtx -o "$0/oneshot" --force-overwrite true "${@}" &&
        nsys stats --report nvtx_sum,cuda_gpu_kern_sum "$0/oneshot.nsys-rep" | tee "$0/oneshot-nsys.txt"' \
        "$PROFILE_DIR" "$PY" "${NSIGHT[@]}"
elif command -v ncu > /dev/null; then
    step nsight 40 "nsight (ncu)" bash -c 'ncu --clock-control none --nvtx -k "regex:dense_|conv3x3|conv_param" --launch-count 8 \
        --section SpeedOfLight --section LaunchStats --section Occupancy "${@}" | tee "$0/oneshot-ncu.txt"' \
        "$PROFILE_DIR" "$PY" "${NSIGHT[@]}"
elif [[ $STEPS == *" nsight "* ]]; then
    echo "== nsight skipped: neither nsys nor ncu on PATH"
fi
# where one-shot's host time goes (the first GPU run found the coarsest solve there: 3.9 s of 5.5)
step profile 45 "profile (cProfile)" bash -c '"$1" -m cProfile -o "$0/oneshot.pstats" -m gpubraid train peaks --layers 256 \
    --final-time 1 --activation smoothrelu --method oneshot --iterations 40 --val-every 0 --no-progress > /dev/null &&
    "$1" -c "import pstats, sys; s = pstats.Stats(sys.argv[1]); s.sort_stats(\"tottime\").print_stats(25);
s.sort_stats(\"cumtime\").print_stats(\"gpubraid\", 40)" "$0/oneshot.pstats" > "$0/oneshot-profile.txt" &&
    rm "$0/oneshot.pstats" && head -40 "$0/oneshot-profile.txt"' "$PROFILE_DIR" "$PY"
step tta 45 "time_to_accuracy"            $PY -m bench.time_to_accuracy --quick
step study 30 "oneshot_study"             $PY -m bench.oneshot_study --quick
echo "== total $(( $(date +%s) - T0 )) s, $fail failed step(s); results in bench/results/<date>-<GPU name>/"
pack && [ -n "${OUT:-}" ] && echo "results packed into $OUT/gpu-results.tgz"
rm -f "$MARK"
exit $fail
