"""Numba-CUDA kernels against the NumPy reference on the CUDA simulator (see conftest.py).

Same contract as tests/test_kernels.py, on device arrays: every optimizer in a plain and
an all-options configuration, the accumulation kernels, the two-pass reductions and the
dispatcher's routing.
"""

import math

import numpy as np
import pytest

from tinygrad_sgd import kernels
from tinygrad_sgd.kernels import harness, reference

SIZE = 300  # > 32 threads x 4 blocks: every thread runs the grid-stride loop more than once
STEPS = 3

CASES = [
    ("sgd", dict(lr=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3)),
    ("adam", dict(lr=1e-2)),
    ("adam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, amsgrad=True)),
    ("adam", dict(lr=1e-2, weight_decay=0.05, amsgrad=True, maximize=True)),
    ("rmsprop", dict(lr=1e-3)),
    ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01, maximize=True)),
    ("adagrad", dict(lr=0.05)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, maximize=True)),
]


def _ids(case):
    kind, hyper = case
    return "-".join([kind] + [k for k, v in hyper.items() if k != "lr" and v])


def _compare_runs(cuda, kind, hyper, *, module, extras, dtype=np.float32, size=SIZE, steps=STEPS):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(size).astype(dtype)
    state = harness.init_state(kind, p, hyper, initial_accumulator_value=0.1)
    d_p = cuda.to_device(p)
    d_state = {name: cuda.to_device(buf) for name, buf in state.items()}
    for step in range(1, steps + 1):
        g = ((p - 0.3) + 0.1 * rng.standard_normal(size)).astype(dtype)
        extra = {}
        if extras:
            extra = dict(grad_scale=0.75, noise=(0.01 * rng.standard_normal(size)).astype(dtype))
        harness.update(reference, kind, p, g, state, step, hyper, **extra)
        d_extra = {k: cuda.to_device(v) if k == "noise" else v for k, v in extra.items()}
        harness.update(module, kind, d_p, cuda.to_device(g), d_state, step, hyper, **d_extra)
    # The simulator evaluates the kernel's float32 arithmetic with NumPy float32 scalars.
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(d_p.copy_to_host(), p, rtol=rtol, atol=0)
    for name, buf in state.items():
        np.testing.assert_allclose(d_state[name].copy_to_host(), buf, rtol=rtol, atol=0, err_msg=name)
    assert not np.allclose(p, np.random.default_rng(0).standard_normal(size).astype(dtype))


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_cuda_kernel_matches_reference_in_place_on_device_arrays(cuda, kcuda, case):
    kind, hyper = case
    _compare_runs(cuda, kind, hyper, module=kcuda, extras=len(hyper) > 1)


def test_dispatcher_sends_device_arrays_to_the_cuda_kernels(cuda, kcuda):
    _compare_runs(cuda, "adam", dict(lr=1e-2, amsgrad=True), module=kernels, extras=True)


def test_float64_buffers(cuda, kcuda):
    _compare_runs(cuda, "rmsprop", dict(lr=1e-3, momentum=0.9, centered=True), module=kcuda, extras=True,
                  dtype=np.float64, steps=2)


def test_mixing_host_and_device_arrays_is_an_error(cuda):
    p = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="param is on the CPU but grad is on the GPU"):
        kernels.sgd_update(p, cuda.to_device(p), lr=0.1)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_accumulation_of_micro_batches_on_device(cuda, kcuda, k):
    rng = np.random.default_rng(k)
    X = rng.standard_normal((16, 40)).astype(np.float32)
    y = rng.standard_normal(16).astype(np.float32)
    w = rng.standard_normal(40).astype(np.float32)
    full = (X.T @ (X @ w - y) / np.float32(16)).astype(np.float32)
    d_acc = cuda.to_device(np.full(40, np.nan, np.float32))
    for j, (Xj, yj) in enumerate(zip(np.split(X, k), np.split(y, k))):
        gj = (Xj.T @ (Xj @ w - yj) / np.float32(len(yj))).astype(np.float32)
        kcuda.accumulate_grad(d_acc, cuda.to_device(gj), first=j == 0)
    kcuda.average_accumulated(d_acc, k)
    np.testing.assert_allclose(d_acc.copy_to_host(), full, rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(full).max())


def test_sum_of_squares_two_pass_reduction(cuda, kcuda):
    x = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    exact = math.fsum(float(v) ** 2 for v in x)
    got = kcuda.sum_of_squares(cuda.to_device(x))
    assert got == pytest.approx(exact, rel=1e-6)  # float32 tree sum
    assert kcuda.sum_of_squares(cuda.to_device(np.zeros(0, np.float32))) == 0.0


@pytest.mark.parametrize("max_norm", [None, 2.5])
def test_per_sample_stats_on_device(cuda, kcuda, max_norm):
    rng = np.random.default_rng(9)
    G = (rng.standard_normal((5, 70)) * 0.4 + 0.1).astype(np.float32)
    mean = np.empty(70, np.float32)
    ref = reference.per_sample_grad_stats(G, mean, max_norm=max_norm)
    d_mean = cuda.to_device(np.zeros(70, np.float32))
    got = kcuda.per_sample_grad_stats(cuda.to_device(G), d_mean, max_norm=max_norm)
    np.testing.assert_allclose(d_mean.copy_to_host(), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.norms, ref.norms, rtol=1e-6)
    assert got.num_clipped == ref.num_clipped == (0 if max_norm is None else np.count_nonzero(ref.norms > max_norm))
    for field in ("mean_sq_norm", "trace_cov", "variance_of_mean", "grad_sq_norm", "noise_scale"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), rel=1e-5), field
