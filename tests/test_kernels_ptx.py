"""Every CUDA kernel compiles to PTX for sm_90, and the float32 kernels contain no float64
instruction (a stray Python float in a kernel makes Numba compute in double precision,
1/32-1/64 speed on most GPUs). No GPU is needed: ``cuda.compile_ptx`` only needs NVVM,
which pip's ``nvidia-nvvm==13.0.*`` wheel provides (newer 13.x emit PTX that a 13.0 driver
rejects).

Skips when NVVM is missing (the plain ``pip install -e .[test]`` environment) or under the
CUDA simulator; ``.ci/cudasim_and_ptx.sh`` installs the wheels and sets
``TINYGRAD_SGD_REQUIRE_PTX=1``, which turns that skip into a failure.
"""

import os
import re
import time
import types

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("PTX compilation needs the real CUDA target, not the simulator", allow_module_level=True)

cuda = pytest.importorskip("numba.cuda")
kcuda = pytest.importorskip("tinygrad_sgd.kernels.cuda")

REQUIRED = os.environ.get("TINYGRAD_SGD_REQUIRE_PTX") == "1"
CC = (9, 0)
# A float64 *instruction* (add.f64, cvt.f64.f32, ld.param.f64, ...); the mnemonic sits right
# after the tab that starts a PTX instruction line.
F64_INSTRUCTION = re.compile(r"^\s*[a-z][\w.]*\.f64\b", re.MULTILINE)


def _nvvm_available():
    try:
        from numba.cuda.cudadrv import nvvm

        return nvvm.is_available()
    except Exception:  # numba-cuda may lay the module out differently
        return False


@pytest.fixture(scope="module")
def compile_ptx():
    if not _nvvm_available():
        if REQUIRED:
            pytest.fail("TINYGRAD_SGD_REQUIRE_PTX=1 but NVVM is not available "
                        "(pip install 'nvidia-nvvm==13.0.*' 'nvidia-cuda-nvrtc==13.0.*')")
        pytest.skip("NVVM not installed (pip install 'nvidia-nvvm==13.0.*' 'nvidia-cuda-nvrtc==13.0.*')")
    dispatcher = pytest.importorskip("numba.cuda.dispatcher")
    # Device functions (the element bodies shared with cpu.py, _tree_sum) are compiled for
    # "the current device" when a kernel that calls them is typed, which needs a GPU. Here
    # the current device is the sm_90 target we compile for anyway.
    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=CC)
    try:
        yield lambda fn, argtypes: cuda.compile_ptx(fn, argtypes, cc=CC)[0]
    finally:
        dispatcher.get_current_device = saved


def test_every_float32_kernel_compiles_to_sm90_ptx_without_f64(compile_ptx):
    cases = kcuda.ptx_cases(np.float32)
    assert {name for name, _, _ in cases} == {
        "sgd", "adam", "rmsprop", "adagrad", "sumsq_chunks_partial", "sumsq_rows_partial", "sum_rows",
        "mean_and_spread_partial"}
    start = time.perf_counter()
    for name, fn, argtypes in cases:
        ptx = compile_ptx(fn, argtypes)
        assert ".target sm_90" in ptx, name
        assert ".entry" in ptx, name
        bad = F64_INSTRUCTION.findall(ptx)
        assert not bad, f"{name}: float64 instructions in the float32 kernel: {sorted(set(bad))[:5]}"
        assert "sqrt.rn.f32" in ptx or name not in ("adam", "rmsprop", "adagrad"), name
        if name in ("sgd", "adam", "rmsprop", "adagrad", "sumsq_chunks_partial"):
            # multi-tensor: the tensors are reached through the pointer table (64-bit addresses)
            assert "ld.global.u64" in ptx or "ld.u64" in ptx or "ld.global.nc.u64" in ptx, name
    print(f"compiled {len(cases)} float32 kernels to PTX in {time.perf_counter() - start:.1f} s")


def test_f64_check_catches_a_float_literal(compile_ptx):
    # The check above must be able to fail: a bare 0.1 in a kernel is a float64 constant
    # (0.5 would be folded back to float32).
    def leaky(x):
        i = cuda.grid(1)
        if i < x.size:
            x[i] = x[i] * 0.1

    import numba

    ptx = compile_ptx(leaky, (numba.float32[::1],))
    assert F64_INSTRUCTION.search(ptx)


def test_float64_kernels_compile(compile_ptx):
    for name, fn, argtypes in kcuda.ptx_cases(np.float64):
        if name in ("adam", "sum_rows"):  # two representatives keep the run short
            ptx = compile_ptx(fn, argtypes)
            assert F64_INSTRUCTION.search(ptx), name
