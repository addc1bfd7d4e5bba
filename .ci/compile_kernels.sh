#!/usr/bin/env bash
# Compile every CUDA kernel for sm_80 and sm_90, fail on register spills, refresh
# kernels/REGISTERS.md.  See .ci/compile_kernels.py for the options.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/compile_kernels.py" "$@"
