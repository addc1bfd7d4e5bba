# Sourced from the repository root on a GPU machine (bench/gpu.sh does; so can a one-off command):
#
#   . bench/gpu_env.sh [PYTHON]
#
# Makes CuPy the backend TrainConfig's "auto" and the benches pick, one BLAS/OpenMP thread, unbuffered
# Python output, this checkout first on PYTHONPATH; and where .whl/ holds wheels (bench/gpu_wheels.sh,
# for a machine without network), installs them under $GPUBRAID_ENV (default /tmp/gpubraid-env) and puts
# that first on the paths (mpich's libmpi lands in its lib/, for mpi4py).  Returns non-zero when the
# wheels do not install.
_PY=${1:-python3}
export GPUBRAID_BACKEND=cupy
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
if compgen -G ".whl/*.whl" > /dev/null; then
    ENV_DIR=${GPUBRAID_ENV:-/tmp/gpubraid-env}
    timeout 30 $_PY -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --prefix "$ENV_DIR" .whl/*.whl || { echo "installing .whl/ into $ENV_DIR failed"; return 1; }
    _SITE=$($_PY -c "import sys, sysconfig; print(sysconfig.get_path('purelib', vars={'base': sys.argv[1], 'platbase': sys.argv[1]}))" "$ENV_DIR")
    export PYTHONPATH="$_SITE:$PYTHONPATH" PATH="$ENV_DIR/bin:$PATH" LD_LIBRARY_PATH="$ENV_DIR/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "wheels of .whl/ installed under $ENV_DIR"
fi
