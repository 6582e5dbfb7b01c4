#!/usr/bin/env bash
# One command for a lent GPU: everything a GPU check needs, in one run, into one results file.
#
#     bash benchmarks/gpu_check.sh [RESULTS_FILE]      (default: gpu-check-<UTC time>.txt)
#
# Steps (each with its own time limit; a failing step is recorded and the next one runs):
#   install       pip install -e ".[gpu,test]" (GPU_CHECK_INSTALL=0 skips it, for a machine
#                 without network that already has CuPy and numba-cuda)
#   environment   nvidia-smi, then `tinygrad-sgd doctor` (versions, GPUs, driver, compute
#                 capability, extras, a smoke test per device)
#   device tests  every device-parametrized test case on the real GPU (pytest -m cuda), and
#                 the CuPy cases of tests/test_kernels.py
#   compare       `tinygrad-sgd compare` for 20 epochs (MLP: drift report), then the CNN at
#                 batch 64 (GPU epoch against CPU epoch)
#   optimizer     benchmarks/optimizer_update.py, kernel table with its GPU rows
#   bandwidth     benchmarks/gpu_bandwidth.py: fused Adam as a % of the copy bandwidth
#   examples      benchmarks/example_models.py --device cuda, when the script exists and
#                 has that option
# Budget: about 8 minutes on one H200-class GPU. docs/gpu-testing.md says how to read the
# results file. Exit status: 0 when every step passed, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${1:-gpu-check-$(date -u +%Y%m%dT%H%M%SZ).txt}"
PYTHON="${PYTHON:-python3}"
unset NUMBA_ENABLE_CUDASIM TINYGRAD_SGD_CUPY_STANDIN  # the real GPU, never the simulator or the stand-in
export PYTHONUNBUFFERED=1
: > "$RESULTS"
SUMMARY=()
FAILED=0

say() { echo "$*" | tee -a "$RESULTS"; }

# step NAME SECONDS COMMAND...: run COMMAND with a time limit, output into the results file.
step() {
    local name=$1 limit=$2; shift 2
    say ""
    say "=== $name: $(printf '%q ' "$@")"
    local started=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$RESULTS"
    local status=${PIPESTATUS[0]}
    local took=$((SECONDS - started))
    [[ $status -eq 124 ]] && say "=== $name: TIMED OUT after ${limit} s"
    say "=== $name: exit status $status, ${took} s"
    local verdict=FAILED
    [[ $status -eq 0 ]] && verdict=ok
    SUMMARY+=("$(printf '%-13s %-6s %4d s' "$name" "$verdict" "$took")")
    [[ $status -eq 0 ]] || FAILED=1
}

say "tinygrad_sgd GPU check, $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
git diff --quiet 2>/dev/null || COMMIT="$COMMIT (with local changes)"
say "commit $COMMIT"

if [[ "${GPU_CHECK_INSTALL:-1}" == "1" ]]; then
    step install 300 "$PYTHON" -m pip install --quiet -e ".[gpu,test]"
fi
if command -v nvidia-smi > /dev/null; then
    step nvidia-smi 30 nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.max.memory \
        --format=csv
fi
# Without a usable GPU every later step would pass on the CPU alone: say so in the summary.
step gpu-present 60 "$PYTHON" -c "import tinygrad_sgd as tg, sys; sys.exit(0 if tg.gpu_available() else \
'no CUDA GPU usable through CuPy: the steps below run on the CPU only')"
step doctor 120 "$PYTHON" -m tinygrad_sgd doctor
step device-tests 240 "$PYTHON" -m pytest -m cuda -p no:cacheprovider -q -rs
step kernel-tests 120 "$PYTHON" -m pytest tests/test_kernels.py -k "cupy or gpu" -p no:cacheprovider -q -rs
step compare-mlp 180 "$PYTHON" -m tinygrad_sgd compare --epochs 20 --quiet
step compare-cnn 180 "$PYTHON" -m tinygrad_sgd compare --model cnn --batch-size 64 --epochs 3 --quiet
step optimizer 240 "$PYTHON" benchmarks/optimizer_update.py --skip-api --only Adam "SGD momentum" --rounds 11
step bandwidth 120 "$PYTHON" benchmarks/gpu_bandwidth.py
# skip NAME REASON: a step that cannot run here, said in the results and the summary.
skip() {
    say ""
    say "=== $1: skipped: $2"
    SUMMARY+=("$(printf '%-13s %-6s %s' "$1" "skip" "$2")")
}

if [[ ! -f benchmarks/example_models.py ]]; then
    skip examples "benchmarks/example_models.py is not in this checkout"
elif "$PYTHON" benchmarks/example_models.py --help 2>/dev/null | grep -q -- "--device"; then
    step examples 300 "$PYTHON" benchmarks/example_models.py --device cuda --rounds 3
else  # its batches are wrapped on the CPU (Tensor.from_array): a default device would not move them
    skip examples "benchmarks/example_models.py has no --device option yet"
fi

say ""
say "=== summary (results in $RESULTS)"
for line in "${SUMMARY[@]}"; do say "$line"; done
exit "$FAILED"
