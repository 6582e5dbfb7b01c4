"""Fused multi-tensor kernels (tinygrad_sgd.kernels) against the optimizers' readable
reference (the ``_single_tensor_*`` functions) and against torch.

* every optimizer and option combination: 300 float32 steps of the Numba CPU kernel on a
  list of tensors (shapes that split into several chunk rows, an empty one, a scalar)
  against the reference, parameters and every state array within 1e-5 relative;
* the parallel split over chunks (multithreaded) and float64;
* a few combinations against torch.optim on the same data (float32, ~1e-5);
* the chunk table, shared-memory parameters, per-sample gradient statistics (the clipped
  mean, the unbiased noise estimators, checked by Monte Carlo), the float64-accumulated
  sum of squares, argument errors, and lazy imports.

The CUDA kernels run the same comparisons under the CUDA simulator (tests/cudasim/) and,
with a GPU and CuPy, in the GPU case at the bottom of this file.
"""

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import kernels
from tinygrad_sgd.kernels import cpu, host, reference
from tinygrad_sgd.optim import functional

STEPS = 300
SHAPES = [(37,), (5, 7), (), (0, 3), (host.CHUNK + 3,)]  # odd sizes, a scalar, an empty one, two chunk rows
TOLERANCE = 1e-5

SGD_MOMENTUM = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                dict(momentum=0.9, nesterov=True)]
CASES = (
    [("sgd", dict(lr=0.05, weight_decay=wd, maximize=mx, **mom), sc)
     for mom, wd, mx, sc in itertools.product(SGD_MOMENTUM, [0.0, 0.01], [False, True], [False, True])]
    + [("adam", dict(lr=1e-2, weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx), sc)
       for wd, dec, ams, mx, sc in itertools.product([0.0, 0.05], [False, True], [False, True], [False, True],
                                                     [False, True]) if wd or not dec]
    + [("rmsprop", dict(lr=1e-3, weight_decay=wd, momentum=mom, centered=c, maximize=mx), sc)
       for wd, mom, c, mx, sc in itertools.product([0.0, 0.01], [0.0, 0.9], [False, True], [False, True],
                                                   [False, True])]
    + [("adagrad", dict(lr=0.05, lr_decay=lrd, weight_decay=wd, maximize=mx), sc)
       for lrd, wd, mx, sc in itertools.product([0.0, 0.01], [0.0, 0.01], [False, True], [False, True])]
)


def _case_id(case):
    kind, hyper, scaled = case
    flags = [f"{k}={v}" for k, v in hyper.items() if k != "lr" and v not in (0.0, False)]
    return "-".join([kind] + flags + (["grad_scale"] if scaled else []))


def _gradient(rng, p, step, maximize=False):
    """A gradient that depends on the parameters (a noisy quadratic with its optimum at 0.3)
    so that errors would feed back, plus a drift. With ``maximize`` it is the gradient of
    the negated quadratic, whose maximum the update then climbs to (not away from)."""
    g = (p - 0.3) * np.linspace(0.5, 2.0, p.size).reshape(p.shape) + 0.1 * rng.standard_normal(p.shape) \
        + 0.01 * math.sin(step)
    return np.asarray(-g if maximize else g).astype(p.dtype)


def _run_both(kind, hyper, scaled, *, dtype=np.float32, steps=STEPS, shapes=SHAPES, seed=0):
    """The same gradients into the reference and the kernels, ``steps`` times; returns
    ``{"reference": (params, state), "fused": (params, state)}``."""
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    init = dict(initial_accumulator_value=0.1) if kind == "adagrad" else {}
    runs = {}
    for name in ("reference", "fused"):
        params = [p.copy() for p in p0]
        runs[name] = (params, functional.init_state(kind, params, hyper, **init))
    for step in range(1, steps + 1):
        # computed from the reference's parameters and fed to both: identical inputs
        grads = [_gradient(rng, p, step, hyper.get("maximize", False)) for p in runs["reference"][0]]
        scale = 0.7 + 0.2 * math.cos(step) if scaled else 1.0
        for name in ("reference", "fused"):
            params, state = runs[name]
            functional.update(kind, params, grads, state, step, hyper, fused=name == "fused", grad_scale=scale)
    return runs


def _assert_close(runs, rtol=TOLERANCE):
    """Every array within ``rtol`` relative to its largest entry (entries that cross zero
    have no relative error of their own)."""
    (p_ref, s_ref), (p_fused, s_fused) = runs["reference"], runs["fused"]
    pairs = list(zip(p_fused, p_ref, ["param"] * len(p_ref)))
    assert s_fused.keys() == s_ref.keys()
    for name in s_ref:
        pairs += list(zip(s_fused[name], s_ref[name], [name] * len(p_ref)))
    for a, b, name in pairs:
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * (np.abs(b).max() if b.size else 0), err_msg=name)


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fused_cpu_matches_reference_float32(case):
    kind, hyper, scaled = case
    runs = _run_both(kind, hyper, scaled)
    assert all(np.isfinite(p).all() for p in runs["reference"][0])
    _assert_close(runs)


FULL_OPTIONS = [
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01, maximize=True)),
    ("adam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, amsgrad=True)),
    ("adam", dict(lr=1e-2, weight_decay=0.05, amsgrad=True, maximize=True)),
    ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01, maximize=True)),
]


@pytest.mark.parametrize("kind, hyper", FULL_OPTIONS)
def test_multithreaded_cpu_path_matches_reference(kind, hyper, monkeypatch):
    # Small lists run single-threaded (cpu.PARALLEL_MIN_SIZE); force the prange split of
    # the chunk rows over the threads.
    monkeypatch.setattr(cpu, "PARALLEL_MIN_SIZE", 0)
    _assert_close(_run_both(kind, hyper, True, steps=10))
    _assert_close(_run_both(kind, hyper, True, steps=10, shapes=[(3,)] * 40 + [(1001,)]))  # many small tensors


@pytest.mark.parametrize("kind, hyper", FULL_OPTIONS[::2] + FULL_OPTIONS[-1:])
def test_fused_cpu_matches_reference_in_float64(kind, hyper):
    runs = _run_both(kind, hyper, True, dtype=np.float64, steps=50)
    _assert_close(runs, rtol=1e-12)
    assert runs["fused"][0][0].dtype == np.float64


def test_the_updates_really_move_parameters_and_options_matter():
    # Guards against a comparison that passes because nothing happens: every option
    # changes the trajectory.
    base = _run_both("adam", dict(lr=1e-2), False, steps=20)["fused"][0][0]
    start = np.random.default_rng(0).standard_normal(37).astype(np.float32)
    assert np.max(np.abs(base - start)) > 0.05
    for option in (dict(amsgrad=True), dict(weight_decay=0.05), dict(weight_decay=0.05, decoupled_weight_decay=True)):
        other = _run_both("adam", dict(lr=1e-2, **option), False, steps=20)["fused"][0][0]
        assert not np.allclose(other, base, rtol=1e-6), option


@pytest.mark.parametrize("kind", functional.OPTIMIZERS)
def test_maximize_is_minimizing_the_negated_gradient(kind):
    hyper = dict(lr=0.01, weight_decay=0.01) | (dict(momentum=0.9) if kind in ("sgd", "rmsprop") else {})
    rng = np.random.default_rng(8)
    p0, g = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    results = []
    for maximize, grad in ((True, g), (False, -g)):
        p = [p0.copy()]
        state = functional.init_state(kind, p, hyper)
        for step in (1, 2):
            functional.update(kind, p, [grad], state, step, dict(hyper, maximize=maximize), fused=True)
        results.append(p[0])
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], p0)


def test_grad_scale_equals_a_pre_scaled_gradient():
    rng = np.random.default_rng(4)
    p0, g = (rng.standard_normal(50).astype(np.float32) for _ in range(2))
    a, b = [p0.copy()], [p0.copy()]
    ma, mb = [np.zeros(50, np.float32)], [np.zeros(50, np.float32)]
    kernels.sgd_update(a, [g], ma, lr=0.1, momentum=0.9, first_step=True, grad_scale=0.5)
    kernels.sgd_update(b, [g * np.float32(0.5)], mb, lr=0.1, momentum=0.9, first_step=True)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(ma[0], g * np.float32(0.5))  # first step: buffer = gradient
    np.testing.assert_array_equal(ma[0], mb[0])


def test_updates_are_in_place_and_leave_the_gradients_alone():
    rng = np.random.default_rng(6)
    ps = [rng.standard_normal(s).astype(np.float32) for s in ((20,), (4, 5))]
    gs = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
    g_before, p_before, ids = [g.copy() for g in gs], [p.copy() for p in ps], [id(p) for p in ps]
    for g in gs:
        g.flags.writeable = False  # the kernels read gradients only
    ms, vs = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    assert kernels.adam_update(ps, gs, ms, vs, step=1, lr=0.1, weight_decay=0.1) is None
    assert [id(p) for p in ps] == ids
    for g, before, p, p0, m, v in zip(gs, g_before, ps, p_before, ms, vs):
        np.testing.assert_array_equal(g, before)
        # First Adam step moves every coordinate by ~lr against the sign of the gradient.
        np.testing.assert_allclose(p - p0, -0.1 * np.sign(g + np.float32(0.1) * p0), rtol=1e-4)
        assert np.all(m != 0) and np.all(v > 0)


def test_parameters_sharing_memory_are_updated_one_after_the_other():
    base = np.linspace(-1, 1, 8).astype(np.float32)
    params = [base[:6], base[2:]]  # overlapping views: one parallel pass would race
    grads = [np.ones(6, np.float32), np.full(6, 2.0, np.float32)]
    expected = base.copy()
    expected[:6] -= 0.1
    expected[2:] -= 0.2
    kernels.sgd_update(params, grads, lr=0.1)
    np.testing.assert_allclose(base, expected, rtol=1e-6)


def test_chunk_rows_split_large_tensors_and_skip_empty_ones():
    rows = host.chunk_rows([3, 0, 2 * host.CHUNK + 1, 5])
    np.testing.assert_array_equal(rows, [[0, 0, 3], [2, 0, host.CHUNK], [2, host.CHUNK, 2 * host.CHUNK],
                                         [2, 2 * host.CHUNK, 2 * host.CHUNK + 1], [3, 0, 5]])
    assert host.chunk_rows([]).shape == (0, 3)


def test_tables_are_reused_while_the_arrays_live_and_rebuilt_after():
    ps = [np.ones(4, np.float32), np.ones(3, np.float32)]
    ms = [np.zeros_like(p) for p in ps]
    first = host.tables(cpu, ps, [np.ones_like(p) for p in ps], [ms], ("ms",))
    again = host.tables(cpu, ps, [np.ones_like(p) for p in ps], [ms], ("ms",))
    assert first[0] is again[0] and first[1] is again[1]   # the cached tables
    ms[1] = np.zeros(3, np.float32)                       # a replaced state array: new tables
    third = host.tables(cpu, ps, [np.ones_like(p) for p in ps], [ms], ("ms",))
    assert third[0][2, 1] == ms[1].ctypes.data


# ---- against torch.optim -------------------------------------------------------------------

TORCH_CASES = [
    ("sgd", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01), "SGD", {}),
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True), "SGD", {}),
    ("adam", dict(lr=1e-2, weight_decay=0.05, amsgrad=True), "Adam", {}),
    ("adam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True), "AdamW", {}),
    ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01), "RMSprop", {}),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01), "Adagrad", dict(initial_accumulator_value=0.1)),
]


def _torch_kwargs(kind, hyper):
    kw = dict(hyper)
    if kind == "adam":
        kw["betas"] = (kw.pop("beta1", 0.9), kw.pop("beta2", 0.999))
        kw.pop("decoupled_weight_decay", None)  # AdamW is its own class
    return kw


@pytest.mark.parametrize("kind, hyper, torch_name, torch_extra", TORCH_CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(TORCH_CASES)])
def test_fused_cpu_matches_torch_optim(kind, hyper, torch_name, torch_extra):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    ps = [rng.standard_normal(s).astype(np.float32) for s in ((37,), (4, 6))]
    tps = [torch.nn.Parameter(torch.tensor(p.copy())) for p in ps]
    opt = getattr(torch.optim, torch_name)(tps, **_torch_kwargs(kind, hyper), **torch_extra)
    state = functional.init_state(kind, ps, hyper,
                                  initial_accumulator_value=torch_extra.get("initial_accumulator_value", 0.0))
    for step in range(1, 201):
        gs = [_gradient(rng, p, step, hyper.get("maximize", False)) for p in ps]
        for tp, g in zip(tps, gs):
            tp.grad = torch.tensor(g.copy())
        opt.step()
        functional.update(kind, ps, gs, state, step, hyper, fused=True)
    # torch's CPU kernels contract a*b+c into fused multiply-adds and use a 1-ulp sqrt, so
    # the two float32 trajectories differ by rounding only.
    for p, tp in zip(ps, tps):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    for name, buffers in state.items():
        for buf, tp in zip(buffers, tps):
            np.testing.assert_allclose(buf, opt.state[tp][name].numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


# ---- per-sample gradients --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("max_norm", [None, 3.0])
def test_per_sample_stats_match_reference_and_direct_formulas(dtype, max_norm):
    rng = np.random.default_rng(7)
    G = (rng.standard_normal((12, 301)) * 0.2 + 0.05).astype(dtype)
    G[3] *= 0.0  # a zero gradient must not produce a division by zero when clipping
    fused_mean, ref_mean = np.empty(301, dtype), np.empty(301, dtype)
    fused = kernels.per_sample_grad_stats(G, fused_mean, max_norm=max_norm)
    ref = reference.per_sample_grad_stats(G, ref_mean, max_norm=max_norm)
    # (float64: the mean is a float64 sum in both, in the same order up to cancellation)
    np.testing.assert_allclose(fused_mean, ref_mean, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-15)
    for field in ("norms", "mean_sq_norm", "trace_cov", "variance_of_mean", "grad_sq_norm", "noise_scale"):
        np.testing.assert_allclose(getattr(fused, field), getattr(ref, field), rtol=1e-10, err_msg=field)
    assert fused.num_clipped == ref.num_clipped

    # Independent formulas (np.var with ddof=1 is the unbiased per-coordinate variance).
    g64 = G.astype(np.float64)
    norms = np.linalg.norm(g64, axis=1)
    np.testing.assert_allclose(fused.norms, norms, rtol=1e-12)
    if max_norm is not None:
        g64 = g64 * np.minimum(1.0, max_norm / np.where(norms > 0, norms, 1.0))[:, None]
        assert np.all(np.linalg.norm(g64, axis=1) <= max_norm * (1 + 1e-12))
        assert fused.num_clipped == np.count_nonzero(norms > max_norm) > 0
    mean = g64.mean(axis=0)
    trace = np.var(g64, axis=0, ddof=1).sum()
    np.testing.assert_allclose(fused_mean, mean, rtol=1e-6 if dtype == np.float32 else 1e-12, atol=1e-15)
    np.testing.assert_allclose(fused.trace_cov, trace, rtol=1e-10)
    np.testing.assert_allclose(fused.variance_of_mean, trace / 12, rtol=1e-10)
    np.testing.assert_allclose(fused.grad_sq_norm, mean @ mean - trace / 12, rtol=1e-10)
    np.testing.assert_allclose(fused.noise_scale, trace / (mean @ mean - trace / 12), rtol=1e-10)


def test_noise_estimators_are_unbiased_and_noise_scale_is_consistent():
    # g_b = G + sigma * z_b: tr(Sigma) = P sigma^2, |G|^2 known. Average the estimators over
    # many small batches (B = 4, where the naive |G_B|^2 is biased by tr(Sigma)/B = 3x |G|^2).
    rng = np.random.default_rng(11)
    P, B, sigma, trials = 24, 4, 0.5, 3000
    G = rng.standard_normal(P) * 0.25
    true_trace, true_sq = P * sigma**2, G @ G
    traces, sqs, naive = [], [], []
    mean = np.empty(P)
    for _ in range(trials):
        batch = G + sigma * rng.standard_normal((B, P))
        s = kernels.per_sample_grad_stats(batch, mean)
        traces.append(s.trace_cov)
        sqs.append(s.grad_sq_norm)
        naive.append(s.mean_sq_norm)
    for values, truth in ((traces, true_trace), (sqs, true_sq)):
        values = np.asarray(values)
        stderr = values.std(ddof=1) / math.sqrt(trials)
        assert abs(values.mean() - truth) < 4 * stderr, (values.mean(), truth, stderr)
    assert np.mean(naive) - true_sq > 10 * np.std(naive) / math.sqrt(trials)  # the bias is real
    # One large batch: B_simple = tr(Sigma) / |G|^2 to within sampling error.
    big = G + sigma * rng.standard_normal((4096, P))
    s = kernels.per_sample_grad_stats(big, np.empty(P))
    assert s.noise_scale == pytest.approx(true_trace / true_sq, rel=0.15)


def test_per_sample_stats_single_sample_and_pure_noise():
    mean = np.empty(5, np.float32)
    s = kernels.per_sample_grad_stats(np.ones((1, 5), np.float32), mean)
    np.testing.assert_array_equal(mean, np.ones(5, np.float32))
    assert math.isnan(s.trace_cov) and math.isnan(s.noise_scale) and s.mean_sq_norm == pytest.approx(5.0)
    # Pure noise around zero: the |G|^2 estimate is not positive often; the scale is then inf.
    batch = np.array([[1.0, 0.0], [-1.0, 0.0]])
    s = kernels.per_sample_grad_stats(batch, np.empty(2))
    assert s.grad_sq_norm < 0 and s.noise_scale == math.inf


# ---- global norm ---------------------------------------------------------------------------


def test_sum_of_squares_of_a_list_accumulates_in_float64():
    rng = np.random.default_rng(2)
    xs = [rng.standard_normal(100_003).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)]
    exact = math.fsum(float(v) * float(v) for x in xs for v in x.ravel())
    assert kernels.sum_of_squares(xs) == pytest.approx(exact, rel=1e-13)
    assert reference.sum_of_squares(xs) == pytest.approx(exact, rel=1e-13)
    # float32 squares of 1e20 overflow; the float64 accumulator does not.
    assert kernels.sum_of_squares([np.full(3, 1e20, np.float32)]) == pytest.approx(3e40, rel=1e-6)
    assert kernels.sum_of_squares([np.zeros(0, np.float32)]) == 0.0 and kernels.sum_of_squares([]) == 0.0
    frozen = np.ones(4, np.float32)
    frozen.flags.writeable = False  # a reduction reads only
    assert kernels.sum_of_squares([frozen]) == 4.0


# ---- errors --------------------------------------------------------------------------------


def _adam_lists(dtype=np.float32):
    return [[np.ones(8, dtype), np.ones((2, 3), dtype)] for _ in range(4)]


@pytest.mark.parametrize("change, error, match", [
    (lambda b: b[1].__setitem__(1, np.ones(9, np.float32)), ValueError, r"grads\[1\] has shape \(9,\)"),
    (lambda b: b[2].__setitem__(0, np.ones(8, np.float64)), TypeError, r"exp_avgs\[0\] has dtype float64"),
    (lambda b: b[3].__setitem__(1, np.ones((3, 2), np.float32).T), ValueError,
     r"exp_avg_sqs\[1\] must be C-contiguous"),
    (lambda b: b[0].__setitem__(0, np.ones(8, np.int32)), TypeError, "params\\[0\\] has dtype int32"),
    (lambda b: b[1].__setitem__(0, [1.0] * 8), TypeError, r"grads\[0\] is a list"),
    (lambda b: b[2].pop(), ValueError, "exp_avgs has 1 entries but params has 2"),
])
def test_bad_arrays_raise_before_anything_changes(change, error, match):
    lists = _adam_lists()
    change(lists)
    snapshot = [[np.array(a, copy=True) for a in arrays] for arrays in lists]
    with pytest.raises(error, match=match):
        kernels.adam_update(*lists, step=1)
    for before, after in zip(snapshot, lists):
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, error, match", [
    (lambda p: kernels.adam_update([p], [p.copy()], [p.copy()], [p.copy()], step=0), ValueError, "step must be >= 1"),
    (lambda p: kernels.adam_update([p], [p.copy()], [p.copy()], [p.copy()], step=1.0), TypeError,
     "step must be an int"),
    (lambda p: kernels.adam_update([p], [p.copy()], [p.copy()], [p.copy()], step=1, amsgrad=True), ValueError,
     "max_exp_avg_sqs is required"),
    (lambda p: kernels.adam_update([p], [p.copy()], [p.copy()], [p.copy()], step=1, beta1=1.0), ValueError, "betas"),
    (lambda p: kernels.sgd_update([p], [p.copy()], lr=0.1, momentum=0.9), ValueError,
     "momentum_buffers is required"),
    (lambda p: kernels.sgd_update([p], [p.copy()], [p.copy()], lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     ValueError, "nesterov"),
    (lambda p: kernels.sgd_update([p], [p.copy()], lr=float("nan")), ValueError, "lr must be finite"),
    (lambda p: kernels.sgd_update([p], [p.copy()], lr=0.1, grad_scale=float("inf")), ValueError,
     "grad_scale must be finite"),
    (lambda p: kernels.sgd_update(p, [p.copy()], lr=0.1), TypeError, "params must be a list"),
    (lambda p: kernels.rmsprop_update([p], [p.copy()], [p.copy()], centered=True), ValueError,
     "grad_avgs is required"),
    (lambda p: kernels.adagrad_update([p], [p.copy()], None, step=1), ValueError, "state_sums is required"),
    (lambda p: kernels.per_sample_grad_stats(np.ones((2, 3), np.float32), p), ValueError, "mean_out must have shape"),
    (lambda p: kernels.per_sample_grad_stats(np.ones((2, 8), np.float32), p, max_norm=0.0), ValueError,
     "max_norm must be > 0"),
    (lambda p: kernels.per_sample_grad_stats(p, p), ValueError, "per_sample_grads must be 2-D"),
])
def test_bad_arguments_raise_clear_errors_before_anything_changes(call, error, match):
    p = np.ones(8, np.float32)
    with pytest.raises(error, match=match):
        call(p)
    np.testing.assert_array_equal(p, np.ones(8, np.float32))


def test_importing_kernels_is_lazy():
    # numba.cuda (and the CUDA kernels) load only when a GPU array reaches the dispatcher.
    code = ("import sys, numpy as np; import tinygrad_sgd.kernels as k; "
            "assert 'numba.cuda' not in sys.modules and 'tinygrad_sgd.kernels.cuda' not in sys.modules; "
            "assert k.sum_of_squares([np.ones(3, np.float32)]) == 3.0; "
            "assert 'numba.cuda' not in sys.modules and 'tinygrad_sgd.kernels.cuda' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- GPU (skipped without CuPy and a GPU) --------------------------------------------------

GPU_CASES = [c for c in CASES if c[2]][::3]  # a spread of combinations, all with grad_scale


@pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES, ids=[_case_id(c) for c in GPU_CASES])
def test_fused_gpu_matches_reference_on_cupy_arrays(case):
    import cupy

    kind, hyper, _ = case
    rng = np.random.default_rng(0)
    ps = [rng.standard_normal(s).astype(np.float32) for s in ((10_001,), (3, 7), (host.CHUNK + 5,))]
    gps = [cupy.asarray(p) for p in ps]
    state = functional.init_state(kind, ps, hyper, initial_accumulator_value=0.1)
    gstate = functional.init_state(kind, gps, hyper, initial_accumulator_value=0.1)
    for step in range(1, 101):
        gs = [_gradient(rng, p, step, hyper.get("maximize", False)) for p in ps]
        functional.update(kind, ps, gs, state, step, hyper, fused=False, grad_scale=0.8)
        functional.update(kind, gps, [cupy.asarray(g) for g in gs], gstate, step, hyper, fused=True, grad_scale=0.8)
    cupy.cuda.get_current_stream().synchronize()
    # NVVM contracts a*b+c into fused multiply-adds: rounding-level differences only.
    for gp, p in zip(gps, ps):
        np.testing.assert_allclose(cupy.asnumpy(gp), p, rtol=1e-5, atol=1e-6)
    for name in state:
        for gb, b in zip(gstate[name], state[name]):
            np.testing.assert_allclose(cupy.asnumpy(gb), b, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU")
def test_gpu_reductions_match_reference():
    import cupy

    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(1_000_003).astype(np.float32), rng.standard_normal(77).astype(np.float32)]
    assert kernels.sum_of_squares([cupy.asarray(x) for x in xs]) == pytest.approx(reference.sum_of_squares(xs),
                                                                                   rel=1e-5)
    G = rng.standard_normal((16, 5000)).astype(np.float32)
    mean, gmean = np.empty(5000, np.float32), cupy.empty(5000, cupy.float32)
    ref = reference.per_sample_grad_stats(G, mean, max_norm=60.0)
    got = kernels.per_sample_grad_stats(cupy.asarray(G), gmean, max_norm=60.0)
    np.testing.assert_allclose(cupy.asnumpy(gmean), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.norms, ref.norms, rtol=1e-5)
    assert got.num_clipped == ref.num_clipped
    assert got.trace_cov == pytest.approx(ref.trace_cov, rel=1e-4)
