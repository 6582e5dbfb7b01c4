#!/usr/bin/env bash
# The CuPy path without a GPU, for .ci/run to call inside its virtual environment (after
# .ci/cudasim_and_ptx.sh has installed the `cudasim` extra):
#   1. every device-parametrized test case on "cuda" (-m cuda) and the stand-in's own tests
#      (-m standin), with tests/cupy_standin as `cupy` and the Numba-CUDA kernels on the
#      CUDA simulator (a pytest run of its own: both must be set before anything imports
#      cupy or numba);
#   2. `tinygrad-sgd compare` with tiny sizes, CPU against the stand-in "GPU".
# The stand-in's limits (what it cannot catch) are in docs/architecture.md. Exits non-zero
# when either fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export NUMBA_ENABLE_CUDASIM=1 TINYGRAD_SGD_CUPY_STANDIN=1

"$PYTHON" -m pytest -m "cuda or standin" -p no:cacheprovider
PYTHONPATH="tests/cupy_standin${PYTHONPATH:+:$PYTHONPATH}" \
    "$PYTHON" -m tinygrad_sgd compare --epochs 1 --hidden 16 --batch-size 128 --quiet
