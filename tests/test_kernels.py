"""Fused kernels (tinygrad_sgd.kernels) against their NumPy reference and against torch.

* every optimizer and option combination: 500 float32 steps of the Numba CPU kernel
  against kernels/reference.py, parameters and every state buffer within 1e-6 relative;
* a few combinations against torch.optim on the same data (float32, ~1e-5);
* gradient accumulation: k micro-batches == one batch, k in {1, 2, 4, 8};
* per-sample gradient statistics: the clipped mean, the unbiased noise estimators
  (checked by Monte Carlo) and the noise scale;
* the float64-accumulated sum of squares, argument errors, and lazy imports.

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
from tinygrad_sgd.kernels import cpu, harness, reference

STEPS = 500
SIZE = 37  # not a multiple of any vector width

# Option combinations per optimizer: the full product of the options that change the code
# path. "extras" toggles grad_scale + gradient noise (the shared gradient preamble).
SGD_MOMENTUM = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                dict(momentum=0.9, nesterov=True)]
CASES = (
    [("sgd", dict(lr=0.05, weight_decay=wd, maximize=mx, **mom), ex)
     for mom, wd, mx, ex in itertools.product(SGD_MOMENTUM, [0.0, 0.01], [False, True], [False, True])]
    + [("adam", dict(lr=1e-2, weight_decay=wd, decoupled_weight_decay=dec, amsgrad=ams, maximize=mx), ex)
       for wd, dec, ams, mx, ex in itertools.product([0.0, 0.05], [False, True], [False, True], [False, True],
                                                     [False, True]) if wd or not dec]
    + [("rmsprop", dict(lr=1e-3, weight_decay=wd, momentum=mom, centered=c, maximize=mx), ex)
       for wd, mom, c, mx, ex in itertools.product([0.0, 0.01], [0.0, 0.9], [False, True], [False, True],
                                                   [False, True])]
    + [("adagrad", dict(lr=0.05, lr_decay=lrd, weight_decay=wd, maximize=mx), ex)
       for lrd, wd, mx, ex in itertools.product([0.0, 0.01], [0.0, 0.01], [False, True], [False, True])]
)


def _case_id(case):
    kind, hyper, extras = case
    flags = [f"{k}={v}" for k, v in hyper.items() if k != "lr" and v not in (0.0, False)]
    return "-".join([kind] + flags + (["scale+noise"] if extras else []))


def _gradient(rng, p, step, maximize=False):
    """A gradient that depends on the parameters (a noisy quadratic with its optimum at 0.3)
    so that errors would feed back, plus a drift. With ``maximize`` it is the gradient of
    the negated quadratic, whose maximum the update then climbs to (not away from)."""
    g = (p - 0.3) * np.linspace(0.5, 2.0, p.size) + 0.1 * rng.standard_normal(p.size) + 0.01 * math.sin(step)
    return (-g if maximize else g).astype(p.dtype)


def _run_both(kind, hyper, extras, *, dtype=np.float32, steps=STEPS, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(size).astype(dtype)
    init = dict(initial_accumulator_value=0.1) if kind == "adagrad" else {}
    runs = {}
    for name in ("reference", "fused"):
        p = p0.copy()
        runs[name] = (p, harness.init_state(kind, p, hyper, **init))
    for step in range(1, steps + 1):
        # The gradient is computed from the reference's parameters and fed to both, so
        # the two runs see identical inputs at every step.
        g = _gradient(rng, runs["reference"][0], step, hyper.get("maximize", False))
        extra = {}
        if extras:
            extra = dict(grad_scale=0.7 + 0.2 * math.cos(step),
                         noise=(0.01 * rng.standard_normal(size)).astype(dtype))
        for name, module in (("reference", reference), ("fused", kernels)):
            p, state = runs[name]
            harness.update(module, kind, p, g, state, step, hyper, **extra)
    return runs


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_fused_cpu_matches_reference_for_500_float32_steps(case):
    kind, hyper, extras = case
    runs = _run_both(kind, hyper, extras)
    (p_ref, s_ref), (p_fused, s_fused) = runs["reference"], runs["fused"]
    assert p_fused.dtype == np.float32
    assert np.all(np.isfinite(p_ref))
    np.testing.assert_allclose(p_fused, p_ref, rtol=1e-6, atol=0)
    assert s_fused.keys() == s_ref.keys() == set(harness.needed_state(kind, hyper))
    for name in s_ref:
        np.testing.assert_allclose(s_fused[name], s_ref[name], rtol=1e-6, atol=0, err_msg=name)


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
    # Small buffers run single-threaded (cpu.PARALLEL_MIN_SIZE); force the prange split
    # over threads for the small case and also run one buffer above the threshold.
    monkeypatch.setattr(cpu, "PARALLEL_MIN_SIZE", 0)
    runs = _run_both(kind, hyper, True, steps=20, size=1001)
    np.testing.assert_allclose(runs["fused"][0], runs["reference"][0], rtol=1e-6, atol=0)
    monkeypatch.setattr(cpu, "PARALLEL_MIN_SIZE", 1000)  # one buffer just above the threshold
    runs = _run_both(kind, hyper, True, steps=5, size=1003)
    np.testing.assert_allclose(runs["fused"][0], runs["reference"][0], rtol=1e-6, atol=0)
    for name in runs["reference"][1]:
        np.testing.assert_allclose(runs["fused"][1][name], runs["reference"][1][name], rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind, hyper", [
    ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True, amsgrad=True)),
    ("rmsprop", dict(lr=1e-3, momentum=0.9, centered=True, weight_decay=0.01)),
    ("adagrad", dict(lr=0.05, lr_decay=0.01, weight_decay=0.01)),
])
def test_fused_cpu_matches_reference_in_float64(kind, hyper):
    runs = _run_both(kind, hyper, True, dtype=np.float64, steps=50)
    np.testing.assert_allclose(runs["fused"][0], runs["reference"][0], rtol=1e-13, atol=0)
    assert runs["fused"][0].dtype == np.float64


def test_the_updates_really_move_parameters_and_options_matter():
    # Guards against a comparison that passes because nothing happens: every option
    # changes the trajectory.
    base = _run_both("adam", dict(lr=1e-2), False, steps=20)["fused"][0]
    start = np.random.default_rng(0).standard_normal(SIZE).astype(np.float32)
    assert np.max(np.abs(base - start)) > 0.05
    for option in (dict(amsgrad=True), dict(weight_decay=0.05), dict(weight_decay=0.05, decoupled_weight_decay=True)):
        other = _run_both("adam", dict(lr=1e-2, **option), False, steps=20)["fused"][0]
        assert not np.allclose(other, base, rtol=1e-6), option


@pytest.mark.parametrize("kind", harness.OPTIMIZERS)
def test_maximize_is_minimizing_the_negated_gradient(kind):
    # (_run_both feeds maximize runs the gradient of the negated objective, so this is
    # the check that maximize actually negates.)
    hyper = dict(lr=0.01, weight_decay=0.01) | (dict(momentum=0.9) if kind in ("sgd", "rmsprop") else {})
    rng = np.random.default_rng(8)
    p0, g = rng.standard_normal(16).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    results = []
    for maximize, grad in ((True, g), (False, -g)):
        p = p0.copy()
        state = harness.init_state(kind, p, hyper)
        for step in (1, 2):
            harness.update(kernels, kind, p, grad, state, step, dict(hyper, maximize=maximize))
        results.append(p)
    np.testing.assert_array_equal(results[0], results[1])
    assert not np.array_equal(results[0], p0)


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
    p = rng.standard_normal(SIZE).astype(np.float32)
    tp = torch.nn.Parameter(torch.tensor(p.copy()))
    opt = getattr(torch.optim, torch_name)([tp], **_torch_kwargs(kind, hyper), **torch_extra)
    state = harness.init_state(kind, p, hyper, initial_accumulator_value=torch_extra.get("initial_accumulator_value",
                                                                                          0.0))
    for step in range(1, 201):
        g = _gradient(rng, p, step, hyper.get("maximize", False))
        tp.grad = torch.tensor(g.copy())
        opt.step()
        harness.update(kernels, kind, p, g, state, step, hyper)
    # torch's CPU kernels contract a*b+c into fused multiply-adds and use a 1-ulp sqrt, so
    # the two float32 trajectories differ by rounding only.
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)
    torch_state = opt.state[tp]
    names = {"momentum_buffer": "momentum_buffer", "m": "exp_avg", "v": "exp_avg_sq", "v_max": "max_exp_avg_sq",
             "square_avg": "square_avg", "grad_avg": "grad_avg", "state_sum": "sum"}
    for name, buf in state.items():
        np.testing.assert_allclose(buf, torch_state[names[name]].numpy(), rtol=1e-5, atol=1e-7, err_msg=name)


# ---- gradient accumulation -----------------------------------------------------------------

def _least_squares(batch=64, dim=33, seed=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, dim)).astype(np.float32)
    y = rng.standard_normal(batch).astype(np.float32)
    w = rng.standard_normal(dim).astype(np.float32)
    return X, y, w


def _mean_gradient(X, y, w):
    """Gradient of 0.5 * mean_b (x_b.w - y_b)^2, i.e. X^T (Xw - y) / B, in float32."""
    return (X.T @ (X @ w - y) / np.float32(X.shape[0])).astype(np.float32)


@pytest.mark.parametrize("module", [kernels, reference], ids=["fused", "reference"])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_micro_batches_equal_one_batch(module, k):
    X, y, w = _least_squares()
    full = _mean_gradient(X, y, w)
    exact = (X.astype(np.float64).T @ (X.astype(np.float64) @ w - y) / X.shape[0])
    acc = np.full_like(full, np.nan)  # first=True must overwrite, whatever was there
    for j, (Xj, yj) in enumerate(zip(np.split(X, k), np.split(y, k))):
        module.accumulate_grad(acc, _mean_gradient(Xj, yj, w), first=j == 0)
    module.average_accumulated(acc, k)
    scale = np.max(np.abs(exact))
    # Both are float32 roundings of the same float64 value: a few ulps of the gradient's scale.
    np.testing.assert_allclose(acc, exact, rtol=0, atol=8 * np.finfo(np.float32).eps * scale)
    np.testing.assert_allclose(acc, full, rtol=0, atol=8 * np.finfo(np.float32).eps * scale)
    if k == 1:
        np.testing.assert_array_equal(acc, full)


def test_unequal_micro_batches_weighted_by_size():
    X, y, w = _least_squares(batch=50)
    full = _mean_gradient(X, y, w)
    acc = np.zeros_like(full)
    bounds = [0, 20, 35, 50]
    for j in range(3):
        Xj, yj = X[bounds[j]:bounds[j + 1]], y[bounds[j]:bounds[j + 1]]
        kernels.accumulate_grad(acc, _mean_gradient(Xj, yj, w), first=j == 0, scale=len(yj))
    kernels.average_accumulated(acc, 50)
    np.testing.assert_allclose(acc, full, rtol=0, atol=16 * np.finfo(np.float32).eps * np.max(np.abs(full)))


def test_accumulate_and_average_match_reference_bitwise():
    rng = np.random.default_rng(0)
    gs = [rng.standard_normal(1001).astype(np.float32) for _ in range(5)]
    out = {}
    for name, module in (("fused", kernels), ("reference", reference)):
        acc = np.empty(1001, np.float32)
        for j, g in enumerate(gs):
            module.accumulate_grad(acc, g, first=j == 0, scale=0.3)
        module.average_accumulated(acc, 7)
        out[name] = acc
    np.testing.assert_array_equal(out["fused"], out["reference"])


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

def test_sum_of_squares_accumulates_in_float64():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(100_003).astype(np.float32)
    exact = math.fsum(float(v) * float(v) for v in x)
    assert kernels.sum_of_squares(x) == pytest.approx(exact, rel=1e-13)
    assert reference.sum_of_squares(x) == pytest.approx(exact, rel=1e-13)
    # float32 squares of 1e20 overflow; the float64 accumulator does not.
    assert kernels.sum_of_squares(np.full(3, 1e20, np.float32)) == pytest.approx(3e40, rel=1e-6)
    assert kernels.sum_of_squares(np.zeros(0, np.float32)) == 0.0


# ---- the gradient preamble, in-place semantics --------------------------------------------

def test_grad_scale_and_noise_equal_a_pre_scaled_noisy_gradient():
    rng = np.random.default_rng(4)
    p0, g, z = (rng.standard_normal(50).astype(np.float32) for _ in range(3))
    a, b = p0.copy(), p0.copy()
    ma, mb = np.zeros(50, np.float32), np.zeros(50, np.float32)
    kernels.sgd_update(a, g, ma, lr=0.1, momentum=0.9, first_step=True, grad_scale=0.5, noise=z)
    kernels.sgd_update(b, g * np.float32(0.5) + z, mb, lr=0.1, momentum=0.9, first_step=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ma, g * np.float32(0.5) + z)  # first step: buffer = gradient
    np.testing.assert_array_equal(ma, mb)


def test_updates_are_in_place_and_leave_the_gradient_alone():
    rng = np.random.default_rng(6)
    p = rng.standard_normal(20).astype(np.float32)
    g = rng.standard_normal(20).astype(np.float32)
    g_before, p_before = g.copy(), p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    assert kernels.adam_update(p, g, m, v, step=1, lr=0.1, weight_decay=0.1) is None
    np.testing.assert_array_equal(g, g_before)
    # First Adam step moves every coordinate by ~lr against the sign of the gradient.
    np.testing.assert_allclose(p - p_before, -0.1 * np.sign(g + np.float32(0.1) * p_before), rtol=1e-4)
    assert np.all(m != 0) and np.all(v > 0)


# ---- errors --------------------------------------------------------------------------------

def _adam_buffers(n=8, dtype=np.float32):
    return [np.ones(n, dtype) for _ in range(4)]


@pytest.mark.parametrize("change, error, match", [
    (lambda b: b.__setitem__(1, np.ones(9, np.float32)), ValueError, "grad has shape"),
    (lambda b: b.__setitem__(2, np.ones(8, np.float64)), TypeError, "m has dtype float64"),
    (lambda b: b.__setitem__(0, np.ones((2, 4), np.float32)), ValueError, "param must be 1-D"),
    (lambda b: b.__setitem__(3, np.ones(16, np.float32)[::2]), ValueError, "v must be C-contiguous"),
    (lambda b: b.__setitem__(0, np.ones(8, np.int32)), TypeError, "param must be float32 or float64"),
    (lambda b: b.__setitem__(1, [1.0] * 8), TypeError, "grad must be a NumPy or CUDA array"),
])
def test_bad_buffers_raise_before_anything_changes(change, error, match):
    buffers = _adam_buffers()
    change(buffers)
    snapshot = [np.array(b, copy=True) for b in buffers]
    with pytest.raises(error, match=match):
        kernels.adam_update(*buffers, step=1)
    for before, after in zip(snapshot, buffers):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("call, error, match", [
    (lambda p: kernels.adam_update(p, p.copy(), p.copy(), p.copy(), step=0), ValueError, "step must be >= 1"),
    (lambda p: kernels.adam_update(p, p.copy(), p.copy(), p.copy(), step=1.0), TypeError, "step must be an int"),
    (lambda p: kernels.adam_update(p, p.copy(), p.copy(), p.copy(), step=1, amsgrad=True), ValueError,
     "v_max is required"),
    (lambda p: kernels.adam_update(p, p.copy(), p.copy(), p.copy(), step=1, beta1=1.0), ValueError, "betas"),
    (lambda p: kernels.sgd_update(p, p.copy(), lr=0.1, momentum=0.9), ValueError, "momentum_buffer is required"),
    (lambda p: kernels.sgd_update(p, p.copy(), p.copy(), lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
     ValueError, "nesterov"),
    (lambda p: kernels.sgd_update(p, p.copy(), lr=float("nan")), ValueError, "lr must be finite"),
    (lambda p: kernels.rmsprop_update(p, p.copy(), p.copy(), centered=True), ValueError, "grad_avg is required"),
    (lambda p: kernels.adagrad_update(p, p.copy(), None, step=1), ValueError, "state_sum is required"),
    (lambda p: kernels.sgd_update(p, p.copy(), lr=0.1, noise=np.ones(3, np.float32)), ValueError, "noise has shape"),
    (lambda p: kernels.average_accumulated(p, 0), ValueError, "count must be a positive"),
    (lambda p: kernels.accumulate_grad(p, p.astype(np.float64)), TypeError, "grad has dtype float64"),
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
            "assert k.sum_of_squares(np.ones(3, np.float32)) == 3.0; "
            "assert 'numba.cuda' not in sys.modules and 'tinygrad_sgd.kernels.cuda' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- GPU (skipped without CuPy and a GPU) --------------------------------------------------

GPU_CASES = [c for c in CASES if c[2]][::3]  # a spread of combinations, all with scale + noise


@pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("case", GPU_CASES, ids=[_case_id(c) for c in GPU_CASES])
def test_fused_gpu_matches_reference_on_cupy_arrays(case):
    import cupy

    kind, hyper, _ = case
    rng = np.random.default_rng(0)
    p = rng.standard_normal(10_001).astype(np.float32)
    gp = cupy.asarray(p)
    state = harness.init_state(kind, p, hyper, initial_accumulator_value=0.1)
    gstate = {k: cupy.asarray(v) for k, v in state.items()}
    for step in range(1, 101):
        g = _gradient(rng, p, step, hyper.get("maximize", False))
        noise = (0.01 * rng.standard_normal(p.size)).astype(np.float32)
        harness.update(reference, kind, p, g, state, step, hyper, grad_scale=0.8, noise=noise)
        harness.update(kernels, kind, gp, cupy.asarray(g), gstate, step, hyper, grad_scale=0.8,
                       noise=cupy.asarray(noise))
    cupy.cuda.get_current_stream().synchronize()
    # NVVM contracts a*b+c into fused multiply-adds: rounding-level differences only.
    np.testing.assert_allclose(cupy.asnumpy(gp), p, rtol=1e-5, atol=1e-6)
    for name in state:
        np.testing.assert_allclose(cupy.asnumpy(gstate[name]), state[name], rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.skipif(not tg.gpu_available(), reason="no CUDA GPU")
def test_gpu_reductions_match_reference():
    import cupy

    rng = np.random.default_rng(1)
    x = rng.standard_normal(1_000_003).astype(np.float32)
    assert kernels.sum_of_squares(cupy.asarray(x)) == pytest.approx(reference.sum_of_squares(x), rel=1e-5)
    G = rng.standard_normal((16, 5000)).astype(np.float32)
    mean, gmean = np.empty(5000, np.float32), cupy.empty(5000, cupy.float32)
    ref = reference.per_sample_grad_stats(G, mean, max_norm=60.0)
    got = kernels.per_sample_grad_stats(cupy.asarray(G), gmean, max_norm=60.0)
    np.testing.assert_allclose(cupy.asnumpy(gmean), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.norms, ref.norms, rtol=1e-5)
    assert got.num_clipped == ref.num_clipped
    assert got.trace_cov == pytest.approx(ref.trace_cov, rel=1e-4)
