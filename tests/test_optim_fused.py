"""The fused optimizers (``fused=True``/``None``): one multi-tensor kernel call per group
updates every parameter in place, reading each gradient where backward left it, against the
reference update (``fused=False``) through the public optimizer API.

* every optimizer and option combination, 100 training steps through autograd, float32:
  fused within 1e-5 relative of the reference (float64: 1e-12); with gradient accumulation
  (k = 1, 2, 4, 8), global-norm clipping and weight decay passed as one ``grad_scale``;
* parameters that skip steps (per-parameter step counts diverge), several groups and two
  dtypes in one group: still the reference's numbers and state;
* one kernel call per step for all parameters of a group, at most 4 Python hops from
  ``step()`` to the compiled loop;
* what an update touches: ``p.data`` keeps its identity (a user's ``w = lin.weight.data``
  follows), kept ``.grad`` tensors, arrays and views keep their values, parameters that
  share memory get the same result on both paths, the version counter is bumped;
* checkpoints: bit-for-bit resume, fused and reference state_dicts interchangeable;
* ``p.data`` rebound to another dtype, device or shape; sparse gradients, float16,
  no Numba: reference fallback or a clear error before any change.
"""

import inspect

import numpy as np
import pytest

import tinygrad_sgd as tg
from tinygrad_sgd import kernels
from tinygrad_sgd.optim import optimizer as optimizer_module
from tinygrad_sgd.sparse import SparseRowGrad

DENSE = ["SGD", "Adam", "AdamW", "RMSprop", "Adagrad"]
KERNEL = {"SGD": "sgd_update", "Adam": "adam_update", "AdamW": "adam_update", "RMSprop": "rmsprop_update",
          "Adagrad": "adagrad_update"}
LOOP = {"SGD": "sgd_loop", "Adam": "adam_loop", "AdamW": "adam_loop", "RMSprop": "rmsprop_loop",
        "Adagrad": "adagrad_loop"}
TOLERANCE = 1e-5  # float32, relative to the largest entry, worst step of 100


def combinations():
    """Every combination of each optimizer's switches (values chosen so each one matters)."""
    out = []
    for momentum, dampening, nesterov in [(0.0, 0.0, False), (0.9, 0.0, False), (0.9, 0.3, False), (0.9, 0.0, True)]:
        for wd in (0.0, 0.1):
            for maximize in (False, True):
                out.append(("SGD", dict(lr=0.05, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                        weight_decay=wd, maximize=maximize)))
    for name in ("Adam", "AdamW"):
        for amsgrad in (False, True):
            for wd in (0.0, 0.1):
                for maximize in (False, True):
                    out.append((name, dict(lr=0.02, betas=(0.85, 0.99), amsgrad=amsgrad, weight_decay=wd,
                                           maximize=maximize)))
    for centered in (False, True):
        for momentum in (0.0, 0.5):
            for wd in (0.0, 0.1):
                for maximize in (False, True):
                    out.append(("RMSprop", dict(lr=0.003, centered=centered, momentum=momentum, weight_decay=wd,
                                                maximize=maximize)))
    for lr_decay in (0.0, 0.01):
        for wd in (0.0, 0.1):
            for initial in (0.0, 0.5):
                for maximize in (False, True):
                    out.append(("Adagrad", dict(lr=0.2, lr_decay=lr_decay, weight_decay=wd,
                                                initial_accumulator_value=initial, maximize=maximize)))
    return out


COMBINATIONS = combinations()
IDS = [name + "-" + ",".join(f"{k}={v}" for k, v in kw.items() if k != "lr") for name, kw in COMBINATIONS]
ONE_EACH = [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
            ("Adam", dict(lr=0.02, amsgrad=True, weight_decay=0.1)),
            ("AdamW", dict(lr=0.02, weight_decay=0.1)),
            ("RMSprop", dict(lr=0.003, centered=True, momentum=0.5, weight_decay=0.1)),
            ("Adagrad", dict(lr=0.2, lr_decay=0.01, weight_decay=0.1))]


def relative_deviation(a, b):
    """Per step, the largest deviation relative to the largest entry (the measure of
    test_optim_reference.py); the worst step."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max()


def least_squares(seed=0):
    r = np.random.default_rng(seed)
    X = r.standard_normal((32, 5)) / np.sqrt(5)
    y = X @ r.standard_normal(5) + 0.1 * r.standard_normal(32)
    return X, y, r.standard_normal(5), np.array([0.5])


def the_params(*opts):
    return [p for opt in opts for g in opt.param_groups for p in g["params"]]


# ----------------------------------------------------------------------------- fused == reference


def train_least_squares(name, kw, fused, dtype, steps, device="cpu"):
    """Weights and bias in two groups (the bias at a tenth of the rate), trained by autograd."""
    X, y, w0, b0 = least_squares()
    w = tg.Tensor(w0, dtype=dtype, device=device, requires_grad=True)
    b = tg.Tensor(b0, dtype=dtype, device=device, requires_grad=True)
    opt = getattr(tg.optim, name)([{"params": [w]}, {"params": [b], "lr": kw["lr"] / 10}], fused=fused, **kw)
    assert opt.fused is fused
    Xt, yt = tg.Tensor(X, dtype=dtype, device=device), tg.Tensor(y, dtype=dtype, device=device)
    sign = -1.0 if kw.get("maximize") else 1.0
    trajectory = []
    for _ in range(steps):
        opt.zero_grad()
        (sign * ((Xt @ w + b - yt) ** 2).mean()).backward()
        opt.step()
        trajectory.append(np.concatenate([tg.backend.to_numpy(w.data), tg.backend.to_numpy(b.data)]))
    return np.array(trajectory), opt, (w, b)


@pytest.mark.parametrize("name,kw", COMBINATIONS, ids=IDS)
def test_fused_matches_reference_float32(name, kw, monkeypatch):
    calls = count_calls(monkeypatch, name)
    fused, opt, (w, _) = train_least_squares(name, kw, True, tg.float32, 100)
    assert len(calls) == 200  # the fused path really ran: one call per group and step
    monkeypatch.undo()
    reference, _, _ = train_least_squares(name, kw, False, tg.float32, 100)
    assert fused.dtype == np.float32
    assert np.abs(reference[-1] - reference[0]).max() > 1e-2    # and the run moved
    deviation = relative_deviation(fused, reference)
    assert deviation < TOLERANCE, f"max relative deviation {deviation:.2e}"


def train_accumulated(name, kw, fused, k, clip, steps=40):
    """k micro-batches per step, each a mean over its 8 samples, backward adding into
    .grad; the step applies the average and the clipping coefficient as one grad_scale."""
    X, y, w0, b0 = least_squares(2)
    X, y = np.concatenate([X] * 8), np.concatenate([y] * 8) + np.random.default_rng(5).standard_normal(256) * 0.3
    w = tg.Tensor(w0, requires_grad=True)
    b = tg.Tensor(b0, requires_grad=True)
    opt = getattr(tg.optim, name)([w, b], fused=fused, **kw)
    sign = -1.0 if kw.get("maximize") else 1.0
    trajectory, norms = [], []
    for step in range(steps):
        opt.zero_grad()
        for j in range(k):
            rows = slice((step * k + j) * 8 % 256, (step * k + j) * 8 % 256 + 8)
            (sign * ((tg.Tensor(X[rows]) @ w + b - tg.Tensor(y[rows])) ** 2).mean()).backward()
        kept = [w.grad.data.copy(), b.grad.data.copy()]
        scale, norm = tg.nn.utils.grad_scale_for_step([w, b], accumulated=k, max_norm=clip, fused=fused)
        opt.step(grad_scale=scale)
        np.testing.assert_array_equal(w.grad.data, kept[0])  # the sums in .grad are left alone
        np.testing.assert_array_equal(b.grad.data, kept[1])
        trajectory.append(np.concatenate([w.detach().numpy(), b.detach().numpy()]))
        norms.append(norm)
    return np.array(trajectory), np.array(norms)


@pytest.mark.parametrize("clip", [None, 0.05], ids=["no-clip", "clip"])
@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_matches_reference_with_accumulation_and_clipping(name, kw, k, clip):
    fused, fused_norms = train_accumulated(name, kw, True, k, clip)
    reference, reference_norms = train_accumulated(name, kw, False, k, clip)
    assert relative_deviation(fused, reference) < TOLERANCE
    np.testing.assert_allclose(fused_norms, reference_norms, rtol=TOLERANCE)
    if clip is not None:
        assert (reference_norms > clip).any()  # clipping acted


def test_accumulation_with_grad_scale_equals_one_big_batch():
    """k micro-batch means summed in .grad and stepped with grad_scale=1/k give the update
    of one batch of k*b samples (up to float32 rounding), on both paths."""
    X, y, w0, _ = least_squares(3)
    for fused in (True, False):
        runs = []
        for k in (1, 4):
            w = tg.Tensor(w0, requires_grad=True)
            opt = tg.optim.SGD([w], lr=0.1, momentum=0.9, fused=fused)
            for _ in range(5):
                opt.zero_grad()
                for j in range(k):
                    rows = slice(j * 32 // k, (j + 1) * 32 // k)
                    ((tg.Tensor(X[rows]) @ w - tg.Tensor(y[rows])) ** 2).mean().backward()
                opt.step(grad_scale=1.0 / k)
            runs.append(w.detach().numpy())
        np.testing.assert_allclose(runs[0], runs[1], rtol=1e-5)


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_matches_reference_float64(name, kw, device):
    fused, _, _ = train_least_squares(name, kw, True, tg.float64, 50, device)
    reference, _, _ = train_least_squares(name, kw, False, tg.float64, 50, device)
    np.testing.assert_allclose(fused, reference, rtol=1e-12, atol=1e-14)


SHAPES = [(4, 3), (3,), (2, 4), (2,), (5,)]


def train_with_gaps(name, kw, fused, steps=60):
    """Five parameters in two groups; parameter 4 is float64 (a second pack in its group),
    parameter 1 gets a gradient only every third step and parameter 3 never before step 20,
    so per-parameter step counts diverge. Gradients are drawn, not computed, so both runs
    see the very same numbers."""
    r = np.random.default_rng(0)
    params = [tg.Tensor(r.standard_normal(s), dtype=tg.float64 if i == 4 else tg.float32, requires_grad=True)
              for i, s in enumerate(SHAPES)]
    opt = getattr(tg.optim, name)([{"params": params[:2]}, {"params": params[2:], "lr": kw["lr"] / 2}],
                                  fused=fused, **kw)
    draw = np.random.default_rng(1)
    trajectory, states = [], []
    for k in range(steps):
        opt.zero_grad()
        for i, p in enumerate(params):
            g = draw.standard_normal(p.shape) * 0.5 + 0.1
            if (i == 1 and k % 3) or (i == 3 and k < 20):
                continue
            p.grad = tg.Tensor(g, dtype=p.dtype)
        opt.step()
        trajectory.append(np.concatenate([p.detach().numpy().ravel() for p in params]))
        sd = opt.state_dict()["state"]
        states.append(np.concatenate([np.ravel(v) for i in sorted(sd) for _, v in sorted(sd[i].items())]))
    return np.array(trajectory), states, opt, params


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_matches_reference_when_parameters_skip_steps(name, kw):
    fused, fused_state, opt, params = train_with_gaps(name, kw, True)
    reference, reference_state, ref_opt, _ = train_with_gaps(name, kw, False)
    assert relative_deviation(fused, reference) < 1e-6
    for a, b in zip(fused_state, reference_state):  # every state entry, after every step
        assert a.shape == b.shape
        assert relative_deviation(a[None], b[None]) < 1e-6
    if name != "SGD":  # SGD keeps no step count
        steps = [opt.state[p]["step"] for p in params]
        assert steps == [ref_opt.state[p]["step"] for p in ref_opt.param_groups[0]["params"]
                         + ref_opt.param_groups[1]["params"]]
        assert steps == [60, 20, 60, 40, 60]


def test_parameter_without_any_gradient_is_left_alone():
    a, b = tg.Tensor(np.ones(3), requires_grad=True), tg.Tensor(np.ones(3), requires_grad=True)
    opt = tg.optim.Adam([a, b], lr=0.1, fused=True)
    for _ in range(3):
        opt.zero_grad(set_to_none=False)
        (a * a).sum().backward()
        opt.step()
    assert b not in opt.state and b.grad is None
    np.testing.assert_array_equal(b.detach().numpy(), 1.0)
    assert opt.state[a]["step"] == 3


# ----------------------------------------------------------------------------- one call per step


def count_calls(monkeypatch, name):
    calls = []
    original = getattr(kernels, KERNEL[name])

    def spy(params, *args, **kw):
        calls.append(sum(p.size for p in params))
        return original(params, *args, **kw)

    monkeypatch.setattr(kernels, KERNEL[name], spy)
    return calls


def mlp(device="cpu"):
    tg.manual_seed(0)
    return tg.nn.Sequential(tg.nn.Linear(6, 8), tg.nn.ReLU(), tg.nn.Linear(8, 8), tg.nn.ReLU(),
                            tg.nn.Linear(8, 3)).to(device)


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_one_kernel_call_per_step_for_all_parameters(name, kw, device, monkeypatch):
    model = mlp(device)
    opt = getattr(tg.optim, name)(model.parameters(), **kw)
    assert opt.fused  # fused=None chose the kernels
    calls = count_calls(monkeypatch, name)
    x = tg.randn(5, 6, device=device)
    for _ in range(3):
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
    total = sum(p.data.size for p in model.parameters())
    assert calls == [total] * 3


def test_parameters_at_different_step_counts_take_separate_calls(monkeypatch):
    model = mlp()
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    calls = count_calls(monkeypatch, "Adam")
    model(tg.randn(5, 6)).sum().backward()
    model[2].weight.grad = None  # a parameter in the middle without gradient
    opt.step()
    sizes = [p.data.size for p in model.parameters()]
    assert calls == [sum(sizes) - sizes[2]]
    calls.clear()
    opt.zero_grad()
    model(tg.randn(5, 6)).sum().backward()
    opt.step()  # parameter 2 is at step 1, the others at step 2: two calls
    assert sorted(calls) == sorted([sum(sizes) - sizes[2], sizes[2]])


@pytest.mark.parametrize("name", DENSE)
def test_at_most_four_python_hops_from_step_to_the_compiled_loop(name, monkeypatch):
    """step() -> _update_group -> adam() -> _fused_adam -> kernels.adam_update -> loop."""
    from tinygrad_sgd.kernels import cpu

    depths = []
    original = getattr(cpu, LOOP[name])

    def spy(*args):
        frames = [f.function for f in inspect.stack()]
        depths.append(frames.index("step"))
        return original(*args)

    monkeypatch.setattr(cpu, LOOP[name], spy)
    model = mlp()
    kw = dict(lr=0.01, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.01)
    opt = getattr(tg.optim, name)(model.parameters(), **kw)
    model(tg.randn(5, 6)).sum().backward()
    opt.step()
    assert depths and max(depths) <= 5, depths  # the spy's own frame plus at most 4 hops


def test_small_updates_run_on_one_thread_and_restore_the_setting(monkeypatch):
    """Below cpu.PARALLEL_MIN_SIZE elements the kernel loop runs single-threaded (a parallel
    region after BLAS calls waits for the scheduler); the thread setting is restored."""
    numba = pytest.importorskip("numba")
    from tinygrad_sgd.kernels import cpu

    seen = []
    original = cpu.sgd_loop

    def spy(*args):
        seen.append(numba.get_num_threads())
        return original(*args)

    monkeypatch.setattr(cpu, "sgd_loop", spy)
    model = mlp()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    before = numba.get_num_threads()
    model(tg.randn(2, 6)).sum().backward()
    opt.step()
    monkeypatch.setattr(cpu, "PARALLEL_MIN_SIZE", 0)
    opt.step()
    assert seen == [1, before] and numba.get_num_threads() == before


# ----------------------------------------------------------------------------- what an update touches


def _kw(name):
    return dict(lr=0.1, momentum=0.9) if name in ("SGD", "RMSprop") else dict(lr=0.1)


@pytest.mark.parametrize("fused", [None, True, False], ids=["fused-None", "fused-True", "fused-False"])
@pytest.mark.parametrize("name", DENSE)
def test_kept_gradients_keep_their_values_across_steps(name, fused):
    """A user keeps each step's .grad Tensor, its array and a row view of it; later steps
    never write into them (gradients are read-only inputs to every update). The gradient
    comes from Linear (whose backward once wrote into optimizer memory) and from an
    elementwise op."""
    tg.manual_seed(0)
    lin = tg.nn.Linear(3, 2)
    scale = tg.Tensor(np.ones(2), requires_grad=True)
    opt = getattr(tg.optim, name)([lin.weight, lin.bias, scale], fused=fused, **_kw(name))
    kept = []
    for step in range(4):
        opt.zero_grad()
        x = tg.Tensor(np.full((1, 3), step + 1.0))
        (lin(x) * scale).sum().backward()
        grads = (lin.weight.grad, lin.weight.grad.data, lin.weight.grad.data[0], scale.grad, scale.grad.data)
        kept.append((grads, [np.array(g.data if isinstance(g, tg.Tensor) else g, copy=True) for g in grads]))
        opt.step()
    for grads, values in kept:
        for g, v in zip(grads, values):
            np.testing.assert_array_equal(g.data if isinstance(g, tg.Tensor) else g, v)
    firsts = [values[2][0] for _, values in kept]
    assert len(set(np.round(firsts, 5))) == 4  # the four steps really had different gradients


@pytest.mark.parametrize("fused", [None, True, False], ids=["fused-None", "fused-True", "fused-False"])
@pytest.mark.parametrize("name", DENSE)
def test_parameter_arrays_keep_their_identity_and_a_users_alias_follows(name, fused):
    tg.manual_seed(0)
    lin = tg.nn.Linear(3, 2)
    w = lin.weight.data                      # the user's alias, taken before the optimizer exists
    arrays = [p.data for p in lin.parameters()]
    opt = getattr(tg.optim, name)(lin.parameters(), fused=fused, **_kw(name))
    versions = [p._version for p in lin.parameters()]
    for _ in range(3):
        opt.zero_grad()
        (lin(tg.Tensor(np.ones((2, 3)))) ** 2).sum().backward()
        before = w.copy()
        opt.step()
        assert not np.array_equal(w, before)  # the alias moved with the parameter
    assert all(p.data is a for p, a in zip(lin.parameters(), arrays))
    assert [p._version for p in lin.parameters()] == [v + 3 for v in versions]


@pytest.mark.parametrize("name", DENSE)
def test_parameters_sharing_memory_behave_the_same_on_both_paths(name):
    """Two Tensors over one array (Tensor.from_array twice): each update is applied to the
    shared memory, one after the other in list order, on either path."""
    def run(fused):
        base = np.linspace(-1.0, 1.0, 6).astype(np.float32)
        a = tg.Tensor.from_array(base, requires_grad=True)
        b = tg.Tensor.from_array(base, requires_grad=True)
        c = tg.Tensor.from_array(base[2:], requires_grad=True)   # an overlapping view
        opt = getattr(tg.optim, name)([a, b, c], fused=fused, **_kw(name))
        for _ in range(5):
            opt.zero_grad()
            ((a * a).sum() + (b * 3.0).sum() + (c * c * c).sum()).backward()
            opt.step()
            assert np.shares_memory(a.data, base) and np.shares_memory(c.data, base)
        return base.copy()

    fused, reference = run(True), run(False)
    np.testing.assert_allclose(fused, reference, rtol=1e-6, atol=1e-7)
    assert not np.allclose(reference, np.linspace(-1.0, 1.0, 6))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_a_step_between_forward_and_backward_makes_backward_raise(fused):
    """The step changes the weight in place (version counter); the graph saved the old one."""
    tg.manual_seed(0)
    lin = tg.nn.Linear(3, 2)
    opt = tg.optim.SGD(lin.parameters(), lr=0.1, fused=fused)
    x = tg.Tensor(np.ones((4, 3)), requires_grad=True)
    (lin(x) ** 2).sum().backward()
    loss = (lin(x) ** 2).sum()   # recorded with the current weight
    opt.step()                   # the weight changes in place before this loss's backward
    before = x.grad.data.copy()
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()
    np.testing.assert_array_equal(x.grad.data, before)   # raised before any gradient changed


def test_zero_grad_set_to_none_false_zeroes_the_gradient_in_place():
    for fused in (True, False):
        lin = tg.nn.Linear(3, 2)
        opt = tg.optim.Adam(lin.parameters(), lr=0.1, fused=fused)
        (lin(tg.Tensor(np.ones((2, 3)))) ** 2).sum().backward()
        grad, array = lin.weight.grad, lin.weight.grad.data
        opt.step()
        opt.zero_grad(set_to_none=False)
        assert lin.weight.grad is grad and grad.data is array and not array.any()
        (lin(tg.Tensor(np.ones((2, 3)))) ** 2).sum().backward()
        assert grad.data is array and array.any()  # backward accumulated into it


def test_a_gradient_assigned_by_the_user_is_used_and_left_alone():
    for fused in (True, False):
        w = tg.Tensor(np.ones(4), requires_grad=True)
        opt = tg.optim.SGD([w], lr=0.5, momentum=0.9, fused=fused)
        g = np.arange(4, dtype=np.float64)          # float64 and a strided view: a copy feeds the kernel
        w.grad = tg.Tensor.from_array(g[::1])
        opt.step()
        np.testing.assert_allclose(w.detach().numpy(), 1.0 - 0.5 * np.arange(4))
        np.testing.assert_array_equal(g, np.arange(4))


class Run:
    """A model, an optimizer and a stream of batches that depends only on the step number."""

    def __init__(self, name, kw, fused):
        self.model = mlp()
        self.opt = getattr(tg.optim, name)([{"params": list(self.model.parameters())[:4]},
                                            {"params": list(self.model.parameters())[4:], "lr": kw["lr"] / 2}],
                                           fused=fused, **kw)
        r = np.random.default_rng(7)
        self.xs = r.standard_normal((30, 4, 6))
        self.ys = r.integers(0, 3, (30, 4))

    def train(self, start, stop):
        loss_fn = tg.nn.CrossEntropyLoss()
        for k in range(start, stop):
            self.opt.zero_grad()
            loss_fn(self.model(tg.Tensor(self.xs[k])), tg.Tensor(self.ys[k])).backward()
            self.opt.step()
        return self

    def weights(self):
        return [p.detach().numpy().copy() for p in self.model.parameters()]

    def set_weights(self, weights):
        for p, w in zip(self.model.parameters(), weights):
            p.data[...] = w


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_resume_is_bit_for_bit(name, kw, npz_roundtrip):
    expected = Run(name, kw, True).train(0, 20).weights()
    first = Run(name, kw, True).train(0, 9)
    saved, weights = npz_roundtrip(first.opt.state_dict()), first.weights()
    second = Run(name, kw, True)
    second.set_weights(weights)
    second.opt.load_state_dict(saved)
    second.train(9, 20)
    for got, want in zip(second.weights(), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_fused_and_reference_checkpoints_are_interchangeable(name, kw, npz_roundtrip):
    fused, reference = Run(name, kw, True).train(0, 8), Run(name, kw, False).train(0, 8)
    sd_fused, sd_reference = fused.opt.state_dict(), reference.opt.state_dict()
    assert sd_fused["param_groups"] == sd_reference["param_groups"]
    assert sd_fused["state"].keys() == sd_reference["state"].keys()
    for i, entries in sd_fused["state"].items():
        assert entries.keys() == sd_reference["state"][i].keys()
        for key, value in entries.items():
            other = sd_reference["state"][i][key]
            assert type(value) is type(other)
            if isinstance(value, np.ndarray):
                assert value.dtype == other.dtype and value.shape == other.shape
                np.testing.assert_allclose(value, other, rtol=1e-5, atol=1e-7)
            else:
                assert value == other
    # each checkpoint continues in the other implementation as in its own
    for source in (fused, reference):
        saved, weights = npz_roundtrip(source.opt.state_dict()), source.weights()
        continued = {}
        for target_fused in (True, False):
            run = Run(name, kw, target_fused)
            run.set_weights(weights)
            run.opt.load_state_dict(saved)
            continued[target_fused] = np.concatenate([w.ravel() for w in run.train(8, 20).weights()])
        assert relative_deviation(continued[True][None], continued[False][None]) < 1e-6


def test_a_state_entry_replaced_by_the_user_is_used():
    def run(fused):
        run = Run("Adam", dict(lr=0.01), fused).train(0, 5)
        first = next(iter(run.model.parameters()))
        run.opt.state[first]["exp_avg"] = np.full(first.shape, 0.5, dtype=np.float32)  # a new array
        run.train(5, 10)
        return np.concatenate([w.ravel() for w in run.weights()])

    fused, reference = run(True), run(False)
    assert relative_deviation(fused[None], reference[None]) < TOLERANCE
    untouched = np.concatenate([w.ravel() for w in Run("Adam", dict(lr=0.01), True).train(0, 10).weights()])
    assert relative_deviation(fused[None], untouched[None]) > 1e-3  # the replacement mattered


# ----------------------------------------------------------------------------- rebinding


@pytest.mark.parametrize("name,kw", ONE_EACH, ids=[n for n, _ in ONE_EACH])
def test_rebinding_data_is_followed(name, kw):
    def run(fused):
        X, y, w0, b0 = least_squares(1)
        w = tg.Tensor(w0, requires_grad=True)
        b = tg.Tensor(b0, requires_grad=True)
        opt = getattr(tg.optim, name)([w, b], fused=fused, **kw)
        Xt, yt = tg.Tensor(X), tg.Tensor(y)
        for k in range(30):
            if k == 10:
                old = w.data
                w.data = np.full(5, 0.25, dtype=np.float32)  # the user rebinds (same shape and dtype)
                old_values = old.copy()
            opt.zero_grad()
            ((Xt @ w + b - yt) ** 2).mean().backward()
            opt.step()
        np.testing.assert_array_equal(old, old_values)  # the old array is not written any more
        return np.concatenate([w.detach().numpy(), b.detach().numpy()])

    fused, reference = run(True), run(False)
    assert relative_deviation(fused[None], reference[None]) < TOLERANCE


def test_module_to_float64_after_creating_the_optimizer_casts_the_state():
    def run(fused):
        model = mlp()
        opt = tg.optim.Adam(model.parameters(), lr=0.01, fused=fused)
        x = tg.Tensor(np.random.default_rng(3).standard_normal((5, 6)))
        for k in range(10):
            if k == 5:
                model.to(tg.float64)
                x = x.double()
            opt.zero_grad()
            (model(x) ** 2).mean().backward()
            opt.step()
        return opt, model, np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])

    opt, model, fused = run(True)
    _, _, reference = run(False)
    for p in model.parameters():
        assert p.dtype == np.float64 and opt.state[p]["exp_avg"].dtype == np.float64
    assert relative_deviation(fused[None], reference[None]) < TOLERANCE


def test_module_to_device_after_creating_the_optimizer(device):
    model = mlp()
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = tg.randn(5, 6)
    model(x).sum().backward()
    opt.step()
    model.to(device)
    opt.zero_grad()
    model(x.to(device)).sum().backward()
    opt.step()
    for p in model.parameters():
        assert tg.backend.device_of(opt.state[p]["momentum_buffer"]) == p.device


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_rebinding_to_another_shape_raises_and_changes_nothing(fused):
    w = tg.Tensor(np.ones((2, 3)), requires_grad=True)
    v = tg.Tensor(np.ones(2), requires_grad=True)
    opt = tg.optim.SGD([v, w], lr=0.1, momentum=0.9, fused=fused)
    v.grad, w.grad = tg.Tensor(np.ones(2)), tg.Tensor(np.ones((2, 3)))
    opt.step()
    w.data = np.ones((3, 2), dtype=np.float32)
    w.grad = tg.Tensor(np.ones((3, 2)))
    buffers = {id(p): opt.state[p]["momentum_buffer"].copy() for p in (v, w)}
    with pytest.raises(ValueError, match=r"momentum_buffer.*parameter 1 of param_groups\[0\].*\(2, 3\)"):
        opt.step()
    np.testing.assert_array_equal(w.detach().numpy(), 1.0)
    np.testing.assert_array_equal(v.detach().numpy(), np.float32(0.9))
    for p in (v, w):  # the momentum was not advanced either
        np.testing.assert_array_equal(opt.state[p]["momentum_buffer"], buffers[id(p)])


def test_rebinding_to_float16():
    for fused in (True, None):
        w = tg.Tensor(np.ones(3), requires_grad=True)
        opt = tg.optim.Adam([w], lr=0.1, fused=fused)
        w.data = w.data.astype(np.float16)
        w.grad = tg.Tensor(np.ones(3), dtype=tg.float16)
        if fused:
            with pytest.raises(RuntimeError, match="float16"):
                opt.step()
        else:  # automatic: the reference updates that parameter
            opt.step()
            assert opt.state[w]["exp_avg"].dtype == np.float16
            np.testing.assert_allclose(w.detach().numpy().astype(np.float64), 0.9, rtol=1e-3)


@pytest.mark.parametrize("fused", [None, True, False], ids=["fused-None", "fused-True", "fused-False"])
def test_read_only_parameter_array_gets_a_clear_error_before_any_change(fused):
    a = tg.Tensor(np.ones(3), requires_grad=True)
    b = tg.Tensor(np.ones(2), requires_grad=True)
    opt = tg.optim.Adam([a, b], lr=0.1, fused=fused)
    b.data.flags.writeable = False
    a.grad, b.grad = tg.Tensor(np.ones(3)), tg.Tensor(np.ones(2))
    with pytest.raises(ValueError, match=r"parameter 1 of param_groups\[0\] \(shape \(2,\)\) has a read-only"):
        opt.step()
    np.testing.assert_array_equal(a.detach().numpy(), 1.0)
    assert opt.state == {}


def test_kernels_called_directly_name_a_read_only_array():
    p = np.ones(3, dtype=np.float32)
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\] \(shape \(3,\)\) is read-only"):
        kernels.sgd_update([p], [np.ones(3, dtype=np.float32)], lr=0.1)


# ----------------------------------------------------------------------------- what the kernels cannot do


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9)), ("Adagrad", dict(lr=0.3))])
def test_sparse_gradients_take_the_reference_with_fused_none(name, kw):
    def run(fused):
        tg.manual_seed(0)
        emb = tg.nn.Embedding(10, 4, sparse=True)
        head = tg.nn.Linear(4, 2)
        opt = getattr(tg.optim, name)(list(emb.parameters()) + list(head.parameters()), fused=fused, **kw)
        assert opt.fused is (fused is None)
        r = np.random.default_rng(0)
        for _ in range(20):
            opt.zero_grad()
            head(emb(tg.Tensor(r.integers(0, 7, (3, 2))))).sum().backward()
            assert isinstance(emb.weight.grad, SparseRowGrad)
            opt.step()
        return np.concatenate([p.detach().numpy().ravel() for p in list(emb.parameters()) + list(head.parameters())])

    fused, reference = run(None), run(False)
    assert relative_deviation(fused[None], reference[None]) < 1e-6
    np.testing.assert_array_equal(fused[-3 * 4 - 10:-10].reshape(-1), reference[-3 * 4 - 10:-10].reshape(-1))


def test_sparse_gradient_with_fused_true_raises_before_any_update():
    a = tg.Tensor(np.ones((4, 2)), requires_grad=True)
    b = tg.Tensor(np.ones((4, 2)), requires_grad=True)
    opt = tg.optim.SGD([a, b], lr=0.1, fused=True)
    a.grad = tg.Tensor(np.ones((4, 2)))
    b.grad = SparseRowGrad(np.array([1]), np.ones((1, 2), dtype=np.float32), (4, 2))
    with pytest.raises(RuntimeError,
                       match=r"parameter 1 of param_groups\[0\] \(shape \(4, 2\)\) has a sparse gradient"):
        opt.step()
    np.testing.assert_array_equal(a.detach().numpy(), 1.0)
    assert opt.state == {}


def test_unsupported_dtype_or_missing_numba(monkeypatch):
    half = tg.Tensor(np.ones(3), dtype=tg.float16, requires_grad=True)
    good = tg.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(ValueError, match=r"Adam\(fused=True\): params\[1\] has dtype float16"):
        tg.optim.Adam([good, half], fused=True)
    assert tg.optim.Adam([good, half]).fused is False
    opt = tg.optim.Adam([good])
    with pytest.raises(ValueError, match=r"params\[0\] of the new group has dtype float16"):
        tg.optim.Adam([good], fused=True).add_param_group({"params": [half]})
    opt.add_param_group({"params": [half]})  # automatic: that parameter takes the reference
    good.grad, half.grad = tg.Tensor(np.ones(3)), tg.Tensor(np.ones(3), dtype=tg.float16)
    opt.step()
    assert opt.fused and half.data.dtype == np.float16 and (half.detach().numpy() < 1).all()
    monkeypatch.setattr(optimizer_module, "_numba_ok", False)
    assert tg.optim.SGD([tg.Tensor(np.ones(2), requires_grad=True)]).fused is False
    with pytest.raises(ValueError, match="Numba"):
        tg.optim.SGD([tg.Tensor(np.ones(2), requires_grad=True)], fused=True)


def test_sparse_adam_has_no_fused_update():
    p = tg.Tensor(np.ones((3, 2)), requires_grad=True)
    assert tg.optim.SparseAdam([p]).fused is False
    with pytest.raises(ValueError, match="SparseAdam.*no fused update"):
        tg.optim.SparseAdam([p], fused=True)


def test_functional_fused_update_with_fused_true_rejects_non_contiguous_arrays():
    p = np.ones((4, 4), dtype=np.float32).T[:, :2]
    with pytest.raises(RuntimeError, match="non-contiguous"):
        tg.optim.adam.adam([p], [np.ones_like(p)], [np.zeros_like(p)], [np.zeros_like(p)], [None], [1], lr=0.1,
                           beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                           decoupled_weight_decay=False, fused=True)
    before = p.copy()  # fused=None: the reference updates it
    tg.optim.adam.adam([p], [np.ones_like(p)], [np.zeros_like(p)], [np.zeros_like(p)], [None], [1], lr=0.1,
                       beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, amsgrad=False, maximize=False,
                       decoupled_weight_decay=False, fused=None)
    np.testing.assert_allclose(p, before - 0.1, rtol=1e-6)


# ----------------------------------------------------------------------------- the fit loop


def _fit(fused, *, accumulation, clip, noise_scale=False, epochs=2):
    tg.manual_seed(0)
    r = np.random.default_rng(4)
    x = tg.Tensor(r.standard_normal((96, 6)).astype(np.float32))
    y = tg.Tensor(r.integers(0, 3, 96))
    model = mlp()
    opt = tg.optim.Adam(model.parameters(), lr=0.01, weight_decay=0.01, fused=fused)
    loader = tg.data.DataLoader(tg.data.TensorDataset(x, y), batch_size=8, shuffle=True, seed=1)
    history = tg.train.fit(model, tg.nn.CrossEntropyLoss(), opt, loader, epochs=epochs, accumulation_steps=accumulation,
                           clip_grad_norm=clip, progress=False, log=None, noise_scale=noise_scale)
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()]), history


@pytest.mark.parametrize("accumulation, clip", [(1, None), (4, None), (2, 0.05), (8, 0.05)])
def test_fit_accumulation_and_clipping_fused_equals_reference(accumulation, clip, monkeypatch):
    calls = count_calls(monkeypatch, "Adam")
    fused, fused_history = _fit(True, accumulation=accumulation, clip=clip)
    assert len(calls) == 2 * -(-12 // accumulation)  # every step (a short last group too) ran the kernel
    monkeypatch.undo()
    reference, reference_history = _fit(False, accumulation=accumulation, clip=clip)
    assert relative_deviation(fused[None], reference[None]) < TOLERANCE
    norms = fused_history.steps["grad_norm"]
    np.testing.assert_allclose(norms, reference_history.steps["grad_norm"], rtol=1e-4)
    if clip is not None:
        assert max(norms) > clip  # clipping acted


def test_fit_records_the_gradient_noise_scale_per_epoch():
    _, history = _fit(True, accumulation=4, clip=None, noise_scale=True, epochs=3)
    values = [row["noise_scale"] for row in history.epochs]
    assert len(values) == 3 and all(np.isfinite(v) and v > 0 for v in values)
    with pytest.raises(ValueError, match="noise_scale=True needs accumulation_steps >= 2"):
        _fit(True, accumulation=1, clip=None, noise_scale=True)


def test_gradient_noise_scale_recovers_a_known_noise_scale():
    """Micro-batch gradients g_j = G + noise of covariance Sigma/b: B_simple = tr(Sigma)/|G|^2."""
    r = np.random.default_rng(0)
    P, b, k, sigma = 50, 8, 8, 0.4
    G = r.standard_normal(P) * 0.2
    p = tg.Tensor(np.zeros(P), requires_grad=True)
    noise = tg.nn.utils.GradientNoiseScale()
    for _ in range(200):
        noise.begin()
        total = np.zeros(P)
        for _ in range(k):
            total = total + G + sigma / np.sqrt(b) * r.standard_normal(P)  # .grad holds the running sum
            p.grad = tg.Tensor(total)
            noise.add([p])
        noise.end(b)
    assert noise.epoch_value() == pytest.approx(P * sigma ** 2 / (G @ G), rel=0.1)
    assert np.isnan(noise.epoch_value())  # reset after reading
