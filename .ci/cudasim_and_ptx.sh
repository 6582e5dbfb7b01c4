#!/usr/bin/env bash
# GPU-kernel checks that need no GPU, for .ci/run to call inside its virtual environment
# (after `pip install -e ".[test]"`):
#   1. the Numba-CUDA kernels against the NumPy reference on Numba's CUDA simulator
#      (a pytest run of its own: NUMBA_ENABLE_CUDASIM must be set before numba is imported);
#   2. every CUDA kernel compiled to sm_90 PTX, with no float64 instruction in the float32
#      kernels (TINYGRAD_SGD_REQUIRE_PTX=1 makes a missing NVVM a failure, not a skip).
# Exits non-zero when either fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

# The `cudasim` extra (setup.cfg): NVIDIA's numba-cuda package (numba's built-in CUDA
# target is deprecated) and NVVM/NVRTC pinned to 13.0 (newer 13.x emit PTX a 13.0 driver
# rejects).
"$PYTHON" -m pip install --quiet -e ".[cudasim]"

NUMBA_ENABLE_CUDASIM=1 "$PYTHON" -m pytest tests/cudasim -p no:cacheprovider
TINYGRAD_SGD_REQUIRE_PTX=1 "$PYTHON" -m pytest tests/test_kernels_ptx.py -p no:cacheprovider
