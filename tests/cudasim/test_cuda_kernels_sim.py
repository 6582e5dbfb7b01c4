"""Numba-CUDA multi-tensor kernels against the optimizers' reference on the CUDA simulator
(see conftest.py).

Same contract as tests/test_kernels.py, on device arrays: every optimizer in a plain and an
all-options configuration over a list of tensors of several shapes (one launch serves them
all; the chunk size is lowered so that each block takes several chunk rows, and a tensor
spans several rows), tensors sharing memory, the multi-tensor sum of squares, the two-pass
per-sample reductions and the dispatcher's routing.
"""

import math

import numpy as np
import pytest

from tinygrad_sgd import kernels
from tinygrad_sgd.kernels import host, reference
from tinygrad_sgd.optim import functional

SHAPES = [(300,), (7, 11), (), (0,), (45,)]
STEPS = 3
SIM_CHUNK = 50  # 300 elements -> 6 chunk rows; 4 simulated blocks take rows b, b + 4, ...

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


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(host, "CHUNK", SIM_CHUNK)


def _ids(case):
    kind, hyper = case
    return "-".join([kind] + [k for k, v in hyper.items() if k != "lr" and v])


def _device_update(module, kind, params, grads, state, step, hyper, grad_scale):
    """One multi-tensor kernel call on device lists (``module``: the dispatcher or cuda.py's
    launch through it); SGD's buffers exist from the start, filled at the first step."""
    h = {**functional._DEFAULTS[kind], **hyper}
    if kind == "sgd":
        module.sgd_update(params, grads, state.get("momentum_buffer"), first_step=step == 1, grad_scale=grad_scale, **h)
    elif kind == "adam":
        module.adam_update(params, grads, state["exp_avg"], state["exp_avg_sq"], state.get("max_exp_avg_sq"),
                           step=step, grad_scale=grad_scale, **h)
    elif kind == "rmsprop":
        module.rmsprop_update(params, grads, state["square_avg"], state.get("momentum_buffer"), state.get("grad_avg"),
                              grad_scale=grad_scale, **h)
    else:
        module.adagrad_update(params, grads, state["sum"], step=step, grad_scale=grad_scale, **h)


def _compare_runs(cuda, kind, hyper, *, scaled, dtype=np.float32, steps=STEPS):
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    start = [p.copy() for p in ps]
    state = functional.init_state(kind, ps, hyper, initial_accumulator_value=0.1)
    d_ps = [cuda.to_device(p) for p in ps]
    d_state = {name: [cuda.to_device(np.zeros_like(p) if b is None else b) for p, b in zip(ps, bufs)]
               for name, bufs in state.items()}
    for step in range(1, steps + 1):
        gs = [((p - 0.3) + 0.1 * rng.standard_normal(p.shape)).astype(dtype) for p in ps]
        scale = 0.75 if scaled else 1.0
        functional.update(kind, ps, gs, state, step, hyper, fused=False, grad_scale=scale)
        _device_update(kernels, kind, d_ps, [cuda.to_device(g) for g in gs], d_state, step, hyper, scale)
    # The simulator evaluates the kernel's float32 arithmetic with NumPy float32 scalars.
    rtol = 1e-5 if dtype == np.float32 else 1e-13
    for d_p, p in zip(d_ps, ps):
        np.testing.assert_allclose(d_p.copy_to_host(), p, rtol=rtol, atol=rtol * 1e-2)
    for name, bufs in state.items():
        for d_b, b in zip(d_state[name], bufs):
            np.testing.assert_allclose(d_b.copy_to_host(), b, rtol=rtol, atol=rtol * 1e-2, err_msg=name)
    assert not np.allclose(ps[0], start[0])


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_one_launch_updates_every_tensor_like_the_reference(cuda, kcuda, case, monkeypatch):
    launches = []
    original = kcuda.launch.__enter__

    def counting(self):
        launches.append(self.rows)
        return original(self)

    monkeypatch.setattr(kcuda.launch, "__enter__", counting)
    kind, hyper = case
    _compare_runs(cuda, kind, hyper, scaled=len(hyper) > 1)
    rows = len(host.chunk_rows([math.prod(s) for s in SHAPES]))
    assert launches == [rows] * STEPS  # one launch per step for all five tensors


def test_float64_arrays(cuda, kcuda):
    _compare_runs(cuda, "rmsprop", dict(lr=1e-3, momentum=0.9, centered=True), scaled=True, dtype=np.float64,
                  steps=2)


def test_tensors_sharing_memory_are_updated_one_after_the_other(cuda, kcuda):
    base = cuda.to_device(np.linspace(-1, 1, 80).astype(np.float32))
    params = [base[:60], base[20:]]
    grads = [cuda.to_device(np.ones(60, np.float32)), cuda.to_device(np.full(60, 2.0, np.float32))]
    expected = np.linspace(-1, 1, 80).astype(np.float32)
    expected[:60] -= np.float32(0.1)
    expected[20:] -= np.float32(0.2)
    kernels.sgd_update(params, grads, lr=0.1)
    np.testing.assert_allclose(base.copy_to_host(), expected, rtol=1e-6)


def test_mixing_host_and_device_arrays_is_an_error(cuda):
    p = np.ones(4, np.float32)
    with pytest.raises(TypeError, match=r"grads\[0\] is a .*, but params\[0\] is a NumPy array"):
        kernels.sgd_update([p], [cuda.to_device(p)], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\] is a ndarray, but params\[0\] is a CUDA array"):
        kernels.sgd_update([cuda.to_device(p)], [p], lr=0.1)


def test_multi_tensor_sum_of_squares(cuda, kcuda):
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(n).astype(np.float32) for n in (1000, 3, 0, 77)]
    exact = math.fsum(float(v) ** 2 for x in xs for v in x)
    got = kernels.sum_of_squares([cuda.to_device(x) for x in xs])
    assert got == pytest.approx(exact, rel=1e-6)  # float32 tree sums
    assert got == pytest.approx(reference.sum_of_squares(xs), rel=1e-6)


@pytest.mark.parametrize("max_norm", [None, 2.5])
def test_per_sample_stats_on_device(cuda, kcuda, max_norm):
    rng = np.random.default_rng(9)
    G = (rng.standard_normal((5, 70)) * 0.4 + 0.1).astype(np.float32)
    mean = np.empty(70, np.float32)
    ref = reference.per_sample_grad_stats(G, mean, max_norm=max_norm)
    d_mean = cuda.to_device(np.zeros(70, np.float32))
    got = kernels.per_sample_grad_stats(cuda.to_device(G), d_mean, max_norm=max_norm)
    np.testing.assert_allclose(d_mean.copy_to_host(), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.norms, ref.norms, rtol=1e-6)
    assert got.num_clipped == ref.num_clipped == (0 if max_norm is None else np.count_nonzero(ref.norms > max_norm))
    for field in ("mean_sq_norm", "trace_cov", "variance_of_mean", "grad_sq_norm", "noise_scale"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), rel=1e-5), field
